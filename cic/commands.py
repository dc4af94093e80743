"""Device commands as the devices receive them (the pursuit's: :mod:`proximity.pursuit`).

A native device gets its commands on ``devices/{id}/cmd`` (:data:`COMMAND_TOPIC`, QoS 1)::

    {"command_id": "6f0c...", "command": "report_interval", "interval_s": 10,
     "until": "2026-05-04T18:20:00Z", "issued": "2026-05-04T18:10:00Z",
     "expires": "2026-05-04T18:20:00Z", "reason": "pursuit: report every 10 s (...)",
     "send": 1}

``command`` is ``report_interval`` (report every ``interval_s`` seconds until ``until``, then
at its own interval again; ``until`` null: from now on, its own interval restored) or
``report_now`` (send a fix now). A device drops a command after ``expires``; ``send`` counts
the sends of one command (a device that already took its id ignores a repeat). It
acknowledges on ``devices/{id}/cmd/ack`` with ``{"command_id": ..., "status": "ok"}``
(``"rejected"`` with a ``detail`` when it cannot obey).

An OwnTracks app gets the app's own remote commands on its command topic
(``owntracks/{user}/{device}/cmd``), as the OwnTracks JSON documentation describes them:
``{"_type": "cmd", "action": "setConfiguration", "configuration": {"_type":
"configuration", "monitoring": 2, "locatorInterval": 10}}`` (move mode, a fix at least
every 10 s) and ``{"_type": "cmd", "action": "reportLocation"}``; restoring sets
``monitoring`` 1 (significant changes, the app's usual mode) and the device's own interval.
The app sends no acknowledgement: its next fixes show whether it obeyed. (The app must
have remote commands, and on Android remote configuration, enabled; an app that encrypts
its messages gets its commands unencrypted.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from proximity.clock import iso_utc
from proximity.pursuit import MQTT, OWNTRACKS, Command

COMMAND_TOPIC = "devices/{device}/cmd"
COMMAND_ACK_TOPIC = "devices/{device}/cmd/ack"
#: OwnTracks' location reporting modes (its configuration's ``monitoring``).
OWNTRACKS_SIGNIFICANT, OWNTRACKS_MOVE = 1, 2


def command_message(cmd: Command) -> dict[str, Any]:
    """The native command message (see the module docstring)."""
    out: dict[str, Any] = {"command_id": cmd.command_id, "command": cmd.kind}
    if cmd.kind == "report_interval":
        out["interval_s"] = cmd.interval_s
        out["until"] = iso_utc(cmd.until) if cmd.until is not None else None
    out |= {
        "issued": iso_utc(cmd.issued),
        "expires": iso_utc(cmd.expires),
        "reason": cmd.reason,
        "send": cmd.send,
    }
    return out


def owntracks_payloads(cmd: Command) -> list[dict[str, Any]]:
    """The OwnTracks remote commands that carry ``cmd`` (in the order to send them)."""
    if cmd.kind == "report_now":
        return [{"_type": "cmd", "action": "reportLocation"}]
    pursuing = cmd.until is not None
    interval = max(1, round(cmd.interval_s or 0))
    config = {
        "_type": "configuration",
        "monitoring": OWNTRACKS_MOVE if pursuing else OWNTRACKS_SIGNIFICANT,
        "locatorInterval": interval,
    }
    out: list[dict[str, Any]] = [
        {"_type": "cmd", "action": "setConfiguration", "configuration": config}
    ]
    if pursuing:
        out.append({"_type": "cmd", "action": "reportLocation"})
    return out


def command_publications(
    cmd: Command, owntracks: Mapping[str, tuple[str, str]]
) -> list[tuple[str, bytes]]:
    """``(topic, payload)`` of each message that carries ``cmd`` to its device:
    ``owntracks`` maps a device id to its app's (user, device)."""
    if cmd.mode == MQTT:
        return [(COMMAND_TOPIC.format(device=cmd.device), orjson.dumps(command_message(cmd)))]
    if cmd.mode == OWNTRACKS and cmd.device in owntracks:
        user, dev = owntracks[cmd.device]
        topic = f"owntracks/{user}/{dev}/cmd"
        return [(topic, orjson.dumps(p)) for p in owntracks_payloads(cmd)]
    return []


def command_record(cmd: Command) -> dict[str, Any]:
    """What the evidence record and the journal keep of a command: the native message,
    with the device and how it was reached."""
    return command_message(cmd) | {"device": cmd.device, "mode": cmd.mode}
