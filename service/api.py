"""The operator service: the HTTP API of the running engine (FastAPI).

Served by ``proximity run --http HOST:PORT`` on the same port as the OsmAnd / Traccar Client
input, from the engine's process (one settings source). Its OpenAPI is at ``/openapi.json``
and ``/docs``. What it does, by role (:mod:`storage.users`; a bearer token per user):

- cases, zones and device descriptions (``case_manager``): validated exactly as ``proximity
  cases import`` validates a case file (the same code, the same messages), written to the
  registry with who made the change, and applied by the running engine before the request
  returns (:meth:`service.run.EngineService.apply_registry`);
- alarms (``operator``): the open queue (priority, then age), the history, one alarm with
  its message trail, acknowledging and closing (with a resolution code): the same action as
  a message on ``cic/acks/{account}``, decoded by the same function and queued to the same
  loop; the live stream of alarm messages (Server-Sent Events, each with its journal seq as
  its id: ``Last-Event-ID`` resumes after a reconnect without a gap); the live positions of
  the parties of a case in alarm;
- device status (``operator``, ``case_manager``): last fix age, battery, reporting cadence,
  open health alarms;
- pseudonymised alarm history (``researcher``): keyed hashes for case and device ids, no
  summary, reason or note, positions as grid cells;
- the audit log (``admin``, who may do everything): every read of a protected person's
  position through this API, with who, when, which case and which alarm;
- ``/health``, ``/ready`` and ``/metrics`` (Prometheus), without a token: they hold counts
  only.

Every error is a JSON object ``{"detail": ...}``; nothing the client sends gives a 5xx.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from fastapi import Body, Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ingest.codec import ACK_TOPIC, decode_ack
from ingest.model import RESOLUTIONS, OperatorAction, Rejection
from proximity.cases import case_document, parse_case_file
from proximity.clock import iso_utc
from proximity.errors import CaseFileError, RegistryError
from service.alarm_view import AlarmView
from storage.registry import Registry, redacted
from storage.users import ROLES, User, Users

log = logging.getLogger(__name__)

#: The operator console's files (HTML, CSS and plain JavaScript: nothing to build).
CONSOLE = Path(__file__).parent / "console"

#: The largest journal or audit seq a request may name (SQLite's integers are 64-bit).
MAX_SEQ = 2**62
#: How long an operator's action may take to show in the journal before the API answers 202.
ACTION_WAIT_S = 5.0
#: How often the live stream looks for new messages, and sends a comment to keep it open.
STREAM_POLL_S = 0.2
STREAM_KEEPALIVE_S = 15.0
#: How often a live stream checks that its token still works (a revoked one ends it).
STREAM_RECHECK_S = 2.0
#: The alarm message fields a researcher sees (everything else, such as the summary, the
#: reason, the operator's note, the zone's label, is left out); positions become grid cells.
RESEARCH_FIELDS = (
    "alarm_id",
    "category",
    "type",
    "level",
    "previous_level",
    "state",
    "distance_m",
    "order_distance_m",
    "warning_distance_m",
    "classification",
    "probability",
    "uncertainty_m",
    "closing_speed_mps",
    "time_to_breach_s",
    "zone_kind",
    "zone_inside_m",
    "resolution",
    "times",
)


@dataclass
class ApiContext:
    """What the API needs of the engine's process (:class:`service.run.EngineService`)."""

    db: Path
    users: Users
    view: AlarmView
    clock: Callable[[], float]
    #: Queue an operator's action for the decision loop (as one from cic/acks).
    act: Callable[[OperatorAction], None]
    #: Have the engine apply the registry now; returns when it has.
    apply_registry: Callable[[], None]
    #: The engine's counters (the retained status message's fields).
    status: Callable[[], dict[str, Any]]
    devices: Callable[[], list[dict[str, Any]]]
    positions: Callable[[str], dict[str, Any]]
    track: Callable[[str, float], list[dict[str, Any]]]
    ready: Callable[[], dict[str, bool]]
    metrics: Callable[[], bytes]
    pseudonym_key: bytes
    research_grid_m: float = 1000.0


class Problem(BaseModel):
    detail: str


class ActionBody(BaseModel):
    note: str = Field("", max_length=2000, description="what the operator did or saw")


class CloseBody(BaseModel):
    resolution: Literal[RESOLUTIONS] | None = Field(  # type: ignore[valid-type]
        None, description="how the alarm was resolved; 'other' needs a note"
    )
    note: str = Field("", max_length=2000, description="why (required without a resolution)")


class SuspendBody(BaseModel):
    until: str | None = Field(
        None,
        max_length=64,
        description="ISO 8601 with an offset: 15 minutes to 2 hours from now",
    )
    minutes: float | None = Field(
        None,
        ge=15,
        le=120,
        description="instead of 'until': for this long from now by the engine's clock"
        " (a desk whose own clock is wrong still suspends for what it means)",
    )
    note: str = Field(..., min_length=1, max_length=2000, description="why (required)")


AlarmTypeName = Literal[
    "proximity",
    "zone",
    "curfew",
    "approach",
    "probing",
    "signal_lost",
    "victim_silent",
    "panic",
    "tamper",
    "battery_low",
    "power_off",
    "separated",
    "engine_fault",
    "data_gap",
    "pursuit_ignored",
]

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "no token, or a token that is not valid"},
    403: {"model": Problem, "description": "the user's role may not do this"},
    404: {"model": Problem, "description": "no such case, device or alarm"},
    409: {"model": Problem, "description": "the request conflicts with the registry's state"},
}


def _json(obj: object, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type="application/json")


def _problems(problems: Iterable[str], kind: str = "case_file") -> HTTPException:
    """A 422 in FastAPI's own shape (a list of {loc, msg, type}), with the case file's (or
    the operator action's) messages."""
    return HTTPException(422, [{"loc": ["body"], "msg": p, "type": kind} for p in problems])


def _instant(text: str | None, name: str) -> str | None:
    """A query's ISO 8601 time as the messages write theirs (UTC, milliseconds, Z), so that
    the two compare as text; 422 for anything else."""
    if text is None:
        return None
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        t = None
    if t is None or t.tzinfo is None:
        raise HTTPException(
            422,
            [
                {
                    "loc": ["query", name],
                    "msg": f"{name} must be an ISO 8601 time with its offset or Z"
                    " (2026-11-23T10:00:00Z), got {text!r}",
                    "type": "value_error",
                }
            ],
        )
    return iso_utc(t.timestamp())


def _reads(messages: Iterable[dict[str, Any]]) -> list[tuple[str, str | None]]:
    """The (case, alarm) of each message that carries a protected person's position."""
    out = []
    for m in messages:
        v = m.get("victim") or {}
        if v.get("lat") is not None and m.get("case_id"):
            out.append((str(m["case_id"]), m.get("alarm_id")))
    return out


def _merge(target: object, patch: object) -> object:
    """RFC 7396 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(out.get(k), v)
    return out


def _user(*roles: str) -> Callable[..., User]:
    """The dependency that finds the request's user and checks its role (admin: every)."""
    allowed = set(roles) | {"admin"}

    def check(request: Request, authorization: Annotated[str | None, Header()] = None) -> User:
        ctx: ApiContext = request.app.state.ctx
        scheme, _, token = (authorization or "").partition(" ")
        found = ctx.users.check(token.strip()) if scheme.lower() == "bearer" else None
        if found is None:
            raise HTTPException(
                401,
                "a bearer token is needed ('Authorization: Bearer TOKEN', issued by"
                " 'proximity users add')"
                if not token.strip()
                else "the token is not valid here (mistyped, revoked, or issued for another"
                " registry)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        request.state.token = token.strip()
        if found.role not in allowed:
            names = ", ".join(sorted(allowed))
            raise HTTPException(403, f"role {found.role} may not do this (it is for {names})")
        return found

    return check


Operator = Annotated[User, Depends(_user("operator"))]
CaseManager = Annotated[User, Depends(_user("case_manager"))]
Watcher = Annotated[User, Depends(_user("operator", "case_manager"))]
Researcher = Annotated[User, Depends(_user("researcher"))]
Admin = Annotated[User, Depends(_user())]
Anyone = Annotated[User, Depends(_user(*ROLES))]


def make_api(ctx: ApiContext, extra: FastAPI | None = None) -> FastAPI:
    """The operator service; ``extra`` (the device input) answers every other path."""
    app = FastAPI(
        title="Proximity engine: operator service",
        description=__doc__,
        version="1",
        responses={**ERRORS},
    )
    app.state.ctx = ctx

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        headers = getattr(exc, "headers", None)
        return JSONResponse({"detail": exc.detail}, exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = [
            {
                "loc": list(e.get("loc", [])),
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type")),
            }
            for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, 422)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> Response:  # the wall
        log.exception("operator service: %s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": f"the request failed: {type(exc).__name__}"}, 503)

    # -- liveness, readiness, metrics -------------------------------------------------------

    @app.get("/health", tags=["service"], summary="Liveness: the process answers")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/ready",
        tags=["service"],
        summary="Readiness: intake flowing, journal writable, broker connected",
        responses={503: {"description": "not ready: the checks say which part is not"}},
    )
    def ready() -> Response:
        checks = ctx.ready()
        ok = all(checks.values())
        return _json({"ready": ok, "checks": checks}, 200 if ok else 503)

    @app.get(
        "/metrics",
        tags=["service"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}}},
    )
    def metrics() -> Response:
        return Response(ctx.metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/api/me", tags=["service"], summary="Who the token belongs to")
    def me(u: Anyone) -> dict[str, str]:
        return {"name": u.name, "role": u.role}

    @app.get("/api/status", tags=["service"], summary="The engine's counters")
    def status(u: Anyone) -> Response:
        return _json(ctx.status())

    # -- cases, zones, devices --------------------------------------------------------------

    def _registry() -> Registry:
        try:
            return Registry(ctx.db)
        except RegistryError as exc:
            raise HTTPException(409, str(exc)) from exc

    def _import(doc: object, who: User) -> dict[str, Any]:
        try:
            case_file = parse_case_file(doc, "request")
        except CaseFileError as exc:
            raise _problems(exc.problems) from exc
        with _registry() as reg:
            try:
                report = reg.import_file(case_file, actor=f"api:{who.name}")
            except RegistryError as exc:
                raise HTTPException(409, str(exc)) from exc
        ctx.apply_registry()
        return {
            "created": list(report.created),
            "updated": list(report.updated),
            "devices": report.devices,
            "warnings": list(case_file.warnings),
            "applied": True,
        }

    def _case_doc(case_id: str) -> dict[str, Any]:
        with _registry() as reg:
            case = reg.case(case_id)
        if case is None:
            raise HTTPException(404, f"no case {case_id!r} in the registry")
        return case_document(case)

    @app.get("/api/cases", tags=["cases"], summary="Every case, as the case file writes it")
    def list_cases(u: CaseManager) -> Response:
        with _registry() as reg:
            return _json({"cases": [case_document(c) for c in reg.cases()]})

    @app.post(
        "/api/cases",
        tags=["cases"],
        summary="Create or replace cases (and device descriptions): a case file",
        description="The body is a case file (the format of 'proximity cases import'); a case"
        " whose id is registered is replaced. Applied by the running engine before the answer.",
    )
    def import_cases(u: CaseManager, doc: Annotated[dict[str, Any], Body()]) -> Response:
        return _json(_import(doc, u))

    @app.get("/api/cases/{case_id}", tags=["cases"], summary="One case")
    def get_case(case_id: str, u: CaseManager) -> Response:
        return _json(_case_doc(case_id))

    @app.put("/api/cases/{case_id}", tags=["cases"], summary="Create or replace one case")
    def put_case(case_id: str, u: CaseManager, case: Annotated[dict[str, Any], Body()]) -> Response:
        if case.get("id", case_id) != case_id:
            raise _problems([f"the case's id {case.get('id')!r} is not {case_id!r} of the path"])
        return _json(_import({"cases": [{**case, "id": case_id}]}, u))

    @app.patch(
        "/api/cases/{case_id}",
        tags=["cases"],
        summary='Change a case (a JSON merge patch: {"order": {"distance_m": 300}})',
    )
    def patch_case(
        case_id: str, u: CaseManager, patch: Annotated[dict[str, Any], Body()]
    ) -> Response:
        doc = _merge(_case_doc(case_id), patch)
        assert isinstance(doc, dict)
        if doc.get("id") != case_id:
            raise _problems(["a case's id cannot be changed (end it and create another)"])
        return _json(_import({"cases": [doc]}, u))

    @app.delete("/api/cases/{case_id}", tags=["cases"], summary="End a case")
    def end_case(case_id: str, u: CaseManager) -> Response:
        with _registry() as reg:
            report = reg.remove_case(case_id, actor=f"api:{u.name}")
        if report is None:
            raise HTTPException(404, f"no case {case_id!r} in the registry")
        ctx.apply_registry()
        return _json(
            {
                "ended": case_id,
                "devices_removed": list(report.devices_removed),
                "devices_shared": list(report.devices_shared),
                "applied": True,
            }
        )

    @app.get(
        "/api/cases/{case_id}/zones",
        tags=["zones"],
        summary="The case's zones (a GeoJSON FeatureCollection)",
    )
    def get_zones(case_id: str, u: CaseManager) -> Response:
        return _json(_case_doc(case_id)["zones"])

    @app.put("/api/cases/{case_id}/zones", tags=["zones"], summary="Replace the case's zones")
    def put_zones(
        case_id: str, u: CaseManager, zones: Annotated[dict[str, Any], Body()]
    ) -> Response:
        doc = _case_doc(case_id) | {"zones": zones}
        return _json(_import({"cases": [doc]}, u))

    @app.post("/api/cases/{case_id}/zones", tags=["zones"], summary="Add a zone (a Feature)")
    def add_zone(
        case_id: str, u: CaseManager, feature: Annotated[dict[str, Any], Body()]
    ) -> Response:
        doc = _case_doc(case_id)
        zones = dict(doc["zones"])
        zones["features"] = [*zones.get("features", []), feature]
        return _json(_import({"cases": [doc | {"zones": zones}]}, u))

    @app.delete(
        "/api/cases/{case_id}/zones/{index}",
        tags=["zones"],
        summary="Remove the case's zone number INDEX (from 0)",
    )
    def remove_zone(case_id: str, index: int, u: CaseManager) -> Response:
        doc = _case_doc(case_id)
        features = list(doc["zones"].get("features", []))
        if not 0 <= index < len(features):
            raise HTTPException(404, f"case {case_id} has {len(features)} zone(s)")
        del features[index]
        return _json(
            _import({"cases": [doc | {"zones": doc["zones"] | {"features": features}}]}, u)
        )

    @app.get("/api/devices", tags=["devices"], summary="Device descriptions (secrets hidden)")
    def list_devices(u: CaseManager) -> Response:
        with _registry() as reg:
            return _json(
                {"devices": [{"id": d.id, **redacted(dict(d.info))} for d in reg.devices()]}  # type: ignore[dict-item]
            )

    @app.put("/api/devices/{device_id}", tags=["devices"], summary="Describe a device")
    def put_device(
        device_id: str, u: CaseManager, info: Annotated[dict[str, Any], Body()]
    ) -> Response:
        if info.get("id", device_id) != device_id:
            raise _problems([f"the device's id {info.get('id')!r} is not {device_id!r}"])
        return _json(_import({"cases": [], "devices": [{**info, "id": device_id}]}, u))

    @app.get(
        "/api/devices/status",
        tags=["devices"],
        summary="Each device: last fix age, battery, reporting cadence, open health alarms",
    )
    def device_status(u: Watcher) -> Response:
        return _json({"devices": ctx.devices()})

    # -- alarms ------------------------------------------------------------------------------

    @app.get(
        "/api/alarms",
        tags=["alarms"],
        summary="The open queue: by incident priority, incident age, then each alarm's",
    )
    def alarm_queue(u: Operator, include_ended: Annotated[bool, Query()] = False) -> Response:
        seq = ctx.view.last_seq()
        items = ctx.view.queue(include_ended)
        ctx.users.audit(u, "GET /api/alarms", _reads(s.message for s in items))
        open_, awaiting = ctx.view.counts()
        best = ctx.view.priorities(items)
        return _json(
            {
                "seq": seq,
                "open": open_,
                "awaiting_operator": awaiting,
                "alarms": [s.to_dict(best.get(s.incident)) for s in items],
            }
        )

    @app.get("/api/alarms/history", tags=["alarms"], summary="Alarm messages, newest first")
    def alarm_history(
        u: Operator,
        case_id: str | None = None,
        type: AlarmTypeName | None = None,
        level: Literal["pre_alert", "alarm", "escalation"] | None = None,
        state: Literal["open", "update", "ended", "acknowledged", "closed", "suspended"]
        | None = None,
        since: Annotated[
            str | None, Query(description="decision time, ISO 8601 with an offset or Z")
        ] = None,
        until: Annotated[
            str | None, Query(description="decision time, ISO 8601 with an offset or Z")
        ] = None,
        before: Annotated[
            int | None, Query(ge=0, le=MAX_SEQ, description="only messages before this seq")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> Response:
        found = ctx.view.history(
            case_id=case_id,
            type_=type,
            level=level,
            state=state,
            since=_instant(since, "since"),
            until=_instant(until, "until"),
            before_seq=before,
            limit=limit,
        )
        ctx.users.audit(u, "GET /api/alarms/history", _reads(m for _, m in found))
        return _json({"messages": [{"seq": q, "message": m} for q, m in found]})

    @app.get("/api/alarms/{alarm_id}", tags=["alarms"], summary="One alarm and its messages")
    def alarm(alarm_id: str, u: Operator) -> Response:
        s = ctx.view.get(alarm_id)
        if s is None:
            raise HTTPException(404, f"no alarm {alarm_id!r} in the journal")
        trail = ctx.view.trail(alarm_id)
        ctx.users.audit(u, f"GET /api/alarms/{alarm_id}", _reads(m for _, m in trail))
        incident = {
            "incident_id": s.incident,
            "alarms": ctx.view.incident_members(s.incident),
        }
        best = ctx.view.priorities([s]).get(s.incident)
        return _json(
            s.to_dict(best)
            | {"incident": incident, "trail": [{"seq": q, "message": m} for q, m in trail]}
        )

    def _act(alarm_id: str, who: User, payload: dict[str, Any]) -> Response:
        s = ctx.view.get(alarm_id)
        if s is None:
            raise HTTPException(404, f"no alarm {alarm_id!r} in the journal")
        if s.message.get("state") == "closed":
            raise HTTPException(409, f"alarm {alarm_id} is closed already")
        t = ctx.clock()
        got = decode_ack(
            f"{ACK_TOPIC}/{who.name}", orjson.dumps({"alarm_id": alarm_id, "ts": t, **payload}), t
        )
        if isinstance(got, Rejection):
            raise _problems([got.detail], "operator_action")
        before = s.last_seq
        ctx.act(got)
        want = {"close": "closed", "suspend": "suspended"}.get(got.action, "acknowledged")
        deadline = time.monotonic() + ACTION_WAIT_S
        while time.monotonic() < deadline:
            for q, m in ctx.view.trail(alarm_id):
                if q > before and m.get("state") == want and m.get("operator") == got.operator:
                    ctx.users.audit(who, f"POST /api/alarms/{alarm_id}/{got.action}", _reads([m]))
                    return _json({"seq": q, "message": m})
            time.sleep(0.02)
        return _json({"queued": True, "detail": "the engine has not answered yet"}, 202)

    @app.post(
        "/api/alarms/{alarm_id}/acknowledge",
        tags=["alarms"],
        summary="Acknowledge an alarm (as a message on cic/acks/{user} would)",
        responses={202: {"description": "queued; the engine has not answered yet"}},
    )
    def acknowledge(alarm_id: str, u: Operator, body: ActionBody | None = None) -> Response:
        note = body.note if body is not None else ""
        return _act(alarm_id, u, {"action": "acknowledge", "note": note})

    @app.post(
        "/api/alarms/{alarm_id}/close",
        tags=["alarms"],
        summary="Close an alarm with a resolution code",
        responses={202: {"description": "queued; the engine has not answered yet"}},
    )
    def close(alarm_id: str, u: Operator, body: CloseBody) -> Response:
        payload: dict[str, Any] = {"action": "close", "note": body.note}
        if body.resolution:
            payload["resolution"] = body.resolution
        return _act(alarm_id, u, payload)

    @app.post(
        "/api/alarms/{alarm_id}/suspend",
        tags=["alarms"],
        summary="Suspend an alarm's source for 15 min to 2 h, with a reason",
        description="Its messages are held back until 'until' (ends and escalations still"
        " come); a panic or an escalation is never suspended (409).",
        responses={202: {"description": "queued; the engine has not answered yet"}},
    )
    def suspend(alarm_id: str, u: Operator, body: SuspendBody) -> Response:
        s = ctx.view.get(alarm_id)
        if s is not None and (
            s.message.get("type") == "panic" or s.message.get("level") == "escalation"
        ):
            raise HTTPException(409, "a panic or an escalation is never suspended")
        if (body.until is None) == (body.minutes is None):
            raise _problems(["give either 'until' or 'minutes'"], "operator_action")
        until = body.until
        if body.minutes is not None:
            until = iso_utc(ctx.clock() + body.minutes * 60.0)
        return _act(alarm_id, u, {"action": "suspend", "until": until, "note": body.note})

    @app.get(
        "/api/stream",
        tags=["alarms"],
        summary="Live alarm messages (Server-Sent Events; id = journal seq)",
        description="Each event is 'event: alarm', 'id: SEQ', 'data: MESSAGE'. A client that"
        " reconnects with 'Last-Event-ID: SEQ' (or ?after=SEQ) gets every message after it."
        " Without either, the stream begins with the next message.",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def stream(
        request: Request,
        u: Operator,
        after: Annotated[int | None, Query(ge=0, le=MAX_SEQ)] = None,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> StreamingResponse:
        start = after
        given = (last_event_id or "").strip()
        if given.isascii() and given.isdigit() and len(given) <= 18:
            start = int(given)
        if start is None:
            start = await asyncio.to_thread(ctx.view.last_seq)

        token = request.state.token
        checked = time.monotonic()

        async def events() -> AsyncIterator[bytes]:
            nonlocal checked
            seq, quiet = start, 0.0
            yield b": stream of cic alarm messages\nretry: 1000\n\n"
            while not await request.is_disconnected():
                if time.monotonic() - checked >= STREAM_RECHECK_S:
                    checked = time.monotonic()
                    if await asyncio.to_thread(ctx.users.check, token) is None:
                        yield b"event: revoked\ndata: the token no longer works\n\n"
                        return
                found = await asyncio.to_thread(ctx.view.after, seq)
                if found:
                    await asyncio.to_thread(
                        ctx.users.audit, u, "GET /api/stream", _reads(m for _, m in found)
                    )
                for q, m in found:
                    seq = q
                    yield b"event: alarm\nid: %d\ndata: %s\n\n" % (q, orjson.dumps(m))
                if found:
                    quiet = 0.0
                    continue
                await asyncio.sleep(STREAM_POLL_S)
                quiet += STREAM_POLL_S
                if quiet >= STREAM_KEEPALIVE_S:
                    quiet = 0.0
                    yield b": keepalive\n\n"

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @app.get(
        "/api/cases/{case_id}/positions",
        tags=["alarms"],
        summary="Live positions and recent track of a case in alarm",
        description="Only for a case with an open alarm (the read is audited with that"
        " alarm's id as its reason).",
    )
    def positions(
        case_id: str,
        u: Operator,
        minutes: Annotated[float, Query(gt=0, le=120)] = 10.0,
    ) -> Response:
        with _registry() as reg:
            if reg.case(case_id) is None:
                raise HTTPException(404, f"no case {case_id!r} in the registry")
        open_ids = [s.alarm_id for s in ctx.view.queue() if s.message.get("case_id") == case_id]
        if not open_ids:
            raise HTTPException(
                403, f"case {case_id!r} has no open alarm: its positions are not shown"
            )
        now = ctx.clock()
        got = ctx.positions(case_id) | {
            "alarms": open_ids,
            "track": ctx.track(case_id, now - minutes * 60.0),
        }
        ctx.users.audit(u, f"GET /api/cases/{case_id}/positions", [(case_id, open_ids[0])])
        return _json(got)

    # -- research and audit ------------------------------------------------------------------

    def pseudonym(kind: str, value: object) -> str | None:
        if not isinstance(value, str):
            return None
        mac = hmac.new(ctx.pseudonym_key, f"{kind}:{value}".encode(), hashlib.sha256)
        return f"{kind}-{mac.hexdigest()[:16]}"

    def cell(lat: object, lon: object) -> dict[str, float] | None:
        if not isinstance(lat, int | float) or not isinstance(lon, int | float):
            return None
        g = ctx.research_grid_m
        dlat = g / 111_320.0
        row = math.floor(lat / dlat)
        clat = (row + 0.5) * dlat
        dlon = g / (111_320.0 * max(0.01, math.cos(math.radians(clat))))
        return {"lat": round(clat, 5), "lon": round((math.floor(lon / dlon) + 0.5) * dlon, 5)}

    def research(m: dict[str, Any]) -> dict[str, Any]:
        out = {k: m.get(k) for k in RESEARCH_FIELDS}
        # The alarm id is derived from the case, the devices and a time: a keyed hash too.
        out["alarm_id"] = pseudonym("alarm", m.get("alarm_id"))
        out["case"] = pseudonym("case", m.get("case_id"))
        for party in ("offender", "victim"):
            p = m.get(party) or {}
            out[party] = {
                "device": pseudonym("device", p.get("device")),
                "cell": cell(p.get("lat"), p.get("lon")),
                "acc_m": p.get("acc_m"),
                "age_s": p.get("age_s"),
            }
        out["grid_m"] = ctx.research_grid_m
        return out

    @app.get(
        "/api/research/alarms",
        tags=["research"],
        summary="Pseudonymised alarm history: no names, phones, ids or exact positions",
    )
    def research_alarms(
        u: Researcher,
        before: Annotated[int | None, Query(ge=0, le=MAX_SEQ)] = None,
        limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
    ) -> Response:
        found = ctx.view.history(before_seq=before, limit=limit)
        return _json({"messages": [{"seq": q, "message": research(m)} for q, m in found]})

    @app.get("/api/audit", tags=["audit"], summary="The audit log of position reads")
    def audit(
        u: Admin,
        after: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
        case_id: str | None = None,
        user: str | None = None,
    ) -> Response:
        rows = ctx.users.audit_log(after, case_id=case_id, user=user)
        return _json({"audit": [r.to_dict() for r in rows]})

    # -- the console -------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def console() -> FileResponse:
        return FileResponse(CONSOLE / "index.html", headers={"Cache-Control": "no-store"})

    app.mount("/console", StaticFiles(directory=CONSOLE), name="console")
    if extra is not None:
        app.mount("/", extra)
    return app
