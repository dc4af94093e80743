// The operator console: the alarm queue, one alarm's case summary, map and messages, and the
// case manager's zones. Plain JavaScript against the operator service's HTTP API; no library,
// no tile server (a CIC network is closed): positions and zones are drawn on a canvas in a
// local metric projection.
"use strict";

const state = {
  token: null,
  me: null,
  alarms: [],
  selected: null,
  seq: null,
  alertsPlayed: 0,
  drawn: [],
  streamOpen: false,
  events: 0,
  caseSelected: null,
  zonePoints: [],
  zoneView: null,
};
window.consoleState = state; // for the browser test and for a curious operator

const $ = (id) => document.getElementById(id);
const HIGH_TYPES = new Set(["panic", "engine_fault"]);
const LEVELS = ["pre_alert", "alarm", "escalation"];
const PRIORITIES = ["high", "medium", "low"];

function priority(m) {
  if (m.level === "escalation" || HIGH_TYPES.has(m.type)) return "high";
  return m.level === "alarm" ? "medium" : "low";
}

async function api(method, path, body) {
  const r = await fetch(path, {
    method,
    headers: { Authorization: "Bearer " + state.token, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let data = text;
  try { data = JSON.parse(text); } catch (e) { /* not JSON */ }
  if (!r.ok) {
    const d = data && data.detail;
    const why = Array.isArray(d) ? d.map((x) => x.msg).join("; ") : d || String(r.status);
    const err = new Error(why);
    err.status = r.status;
    throw err;
  }
  return data;
}

function text(el, value) { el.textContent = value == null ? "" : String(value); }

function age(iso) {
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 120) return s + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  return Math.round(s / 3600) + " h";
}

// -- signing in ------------------------------------------------------------------------------

async function signIn(token) {
  state.token = token;
  try {
    state.me = await api("GET", "/api/me");
  } catch (e) {
    state.token = null;
    text($("login-error"), "not signed in: " + e.message);
    return;
  }
  sessionStorage.setItem("proximity-token", token);
  $("login").hidden = true;
  text($("who"), state.me.name + " (" + state.me.role + ")");
  const role = state.me.role;
  if (role === "operator" || role === "admin") startOperator();
  if (role === "case_manager" || role === "admin") startManager();
  if (role === "researcher") text($("who"), state.me.name + ": the console has nothing for the researcher role");
}

$("login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  unlockAudio();
  signIn($("token").value.trim());
});

// -- the sound of a new high-priority alarm --------------------------------------------------

let audio = null;
function unlockAudio() {
  try {
    if (!audio) audio = new (window.AudioContext || window.webkitAudioContext)();
    if (audio.state === "suspended") audio.resume();
  } catch (e) { audio = null; }
}

function alertSound() {
  state.alertsPlayed += 1;
  document.title = "(" + state.alertsPlayed + ") Stalking alarms";
  if (!audio) return;
  const t = audio.currentTime;
  for (const start of [0, 0.5]) {
    const osc = audio.createOscillator();
    const gain = audio.createGain();
    osc.frequency.value = 880;
    gain.gain.setValueAtTime(0.2, t + start);
    gain.gain.setValueAtTime(0, t + start + 0.35);
    osc.connect(gain).connect(audio.destination);
    osc.start(t + start);
    osc.stop(t + start + 0.4);
  }
}

// -- the queue and the live stream ------------------------------------------------------------

function startOperator() {
  $("operator").hidden = false;
  loadQueue().then(stream);
  setInterval(renderQueue, 1000);
  $("ack").addEventListener("click", () => act("acknowledge", { note: $("note").value }));
  $("close").addEventListener("click", () =>
    act("close", { resolution: $("resolution").value, note: $("note").value }));
  $("suspend").addEventListener("click", () => {
    const note = $("note").value.trim();
    if (!note) { text($("action-result"), "a suspension needs a reason: write it in the note"); return; }
    act("suspend", { minutes: Number($("suspend-for").value), note });
  });
}

// An incident's short name: the first block of its id (the full id is the row's title).
const shortId = (id) => (id || "").split("-")[0];

async function loadQueue() {
  const q = await api("GET", "/api/alarms");
  state.alarms = q.alarms;
  if (state.seq === null) state.seq = q.seq;
  text($("unacked"), q.awaiting_operator + " unacknowledged");
  text($("open"), q.open + " open");
  $("unacked").classList.toggle("alert", q.awaiting_operator > 0);
  renderQueue();
}

function renderQueue() {
  const body = $("queue").querySelector("tbody");
  body.replaceChildren();
  for (const a of state.alarms) {
    const tr = document.createElement("tr");
    tr.className = a.priority + (a.awaiting_operator ? " awaiting" : "");
    tr.dataset.alarmId = a.alarm_id;
    tr.dataset.caseId = a.case_id;
    tr.dataset.incidentId = a.incident_id;
    // The alarms of one incident stand together (the server's order); the first of each
    // incident names it, the others are indented under it.
    const prev = body.lastElementChild;
    const first = !prev || prev.dataset.incidentId !== a.incident_id;
    if (!first) tr.classList.add("same-incident");
    if (a.alarm_id === state.selected) tr.classList.add("selected");
    const incident = first ? shortId(a.incident_id) + " (" + a.incident_priority + ")" : "\u2514";
    for (const v of [a.priority, incident, age(a.opened), a.type, a.level, a.state, a.case_id]) {
      const td = document.createElement("td");
      text(td, v);
      tr.appendChild(td);
    }
    tr.children[1].title = "incident " + a.incident_id;
    tr.addEventListener("click", () => select(a.alarm_id));
    body.appendChild(tr);
  }
  $("queue-empty").hidden = state.alarms.length > 0;
}

let queueTimer = null;
function soon(fn) {
  clearTimeout(queueTimer);
  queueTimer = setTimeout(fn, 150);
}

function take(m) {
  state.events += 1;
  const before = state.alarms.find((a) => a.alarm_id === m.alarm_id);
  const rose = m.previous_level && LEVELS.indexOf(m.previous_level) < LEVELS.indexOf(m.level);
  const wasHigh = before && before.priority === "high";
  if ((m.state === "open" || (m.state === "update" && rose)) && priority(m) === "high" && !wasHigh) {
    alertSound();
  }
  soon(async () => {
    await loadQueue();
    if (state.selected === m.alarm_id) loadDetail(m.alarm_id);
  });
}

// Server-Sent Events through fetch (an EventSource cannot send the token): resumes after the
// last message seen, so a reconnect misses nothing.
async function stream() {
  for (;;) {
    try {
      const headers = { Authorization: "Bearer " + state.token };
      if (state.seq !== null) headers["Last-Event-ID"] = String(state.seq);
      const r = await fetch("/api/stream", { headers });
      if (!r.ok) throw new Error("stream answered " + r.status);
      state.streamOpen = true;
      text($("stream-state"), "live");
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let end;
        while ((end = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          let id = null, data = null;
          for (const line of block.split("\n")) {
            if (line.startsWith("id:")) id = parseInt(line.slice(3), 10);
            else if (line.startsWith("data:")) data = line.slice(5).trim();
          }
          if (data) {
            if (id !== null) state.seq = id;
            take(JSON.parse(data));
          }
        }
      }
    } catch (e) {
      text($("stream-state"), "reconnecting (" + e.message + ")");
    }
    state.streamOpen = false;
    await new Promise((res) => setTimeout(res, 1000));
  }
}

// -- one alarm -------------------------------------------------------------------------------

async function select(alarmId) {
  state.selected = alarmId;
  renderQueue();
  await loadDetail(alarmId);
}

async function loadDetail(alarmId) {
  const a = await api("GET", "/api/alarms/" + encodeURIComponent(alarmId));
  $("detail").hidden = false;
  const m = a.last;
  text($("detail-title"), `${m.type} ${m.level} (${m.state}), case ${m.case_id}`);
  const dl = document.createElement("dl");
  const facts = { ...m.summary, order: `${m.order_distance_m} m` };
  if (m.distance_m != null) facts.distance = `${Math.round(m.distance_m)} m ± ${Math.round(m.uncertainty_m || 0)}`;
  if (m.zone) facts.zone = `${m.zone} (${m.zone_kind})`;
  for (const [k, v] of Object.entries(facts)) {
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    text(dt, k.replaceAll("_", " "));
    text(dd, v);
    dl.append(dt, dd);
  }
  $("summary").replaceChildren(dl);
  const inc = a.incident || { incident_id: a.incident_id, alarms: [] };
  const others = inc.alarms.filter((x) => x.alarm_id !== a.alarm_id);
  text($("incident"), `incident ${shortId(inc.incident_id)} (${a.incident_priority}): ` +
    (others.length ? `with ${others.map((x) => `${x.type} ${x.level}` + (["ended", "closed"].includes(x.state) ? ` (${x.state})` : "")).join(", ")}` : "this alarm alone") +
    (m.suspended_until ? `; suspended until ${m.suspended_until}` : ""));
  text($("reason"), m.reason);
  const ol = $("trail");
  ol.replaceChildren();
  for (const { message: t } of a.trail) {
    const li = document.createElement("li");
    text(li, `${(t.times.decided || "").slice(11, 19)} ${t.state} ${t.level}: ${t.reason}`);
    ol.appendChild(li);
  }
  try {
    const where = await api("GET", "/api/cases/" + encodeURIComponent(m.case_id) + "/positions?minutes=10");
    drawMap($("map"), where.zones, where.offenders, where.protected, where.track);
  } catch (e) {
    drawMap($("map"), null, [], [], []);
    text($("map-legend"), "No map: " + e.message);
  }
}

async function act(action, body) {
  if (!state.selected) return;
  try {
    const got = await api("POST", `/api/alarms/${encodeURIComponent(state.selected)}/${action}`, body);
    const until = got.message && got.message.suspended_until ? " until " + got.message.suspended_until : "";
    text($("action-result"), got.message ? `${got.message.state} by ${got.message.operator}${until}` : got.detail);
    await loadQueue();
    await loadDetail(state.selected);
  } catch (e) {
    text($("action-result"), "refused: " + e.message);
  }
}

// -- the map: a local metric projection on a canvas -------------------------------------------

function projection(points, canvas, minSpanM) {
  let lat0 = 50.85, lon0 = 4.35;
  if (points.length) {
    lat0 = points.reduce((s, p) => s + p[0], 0) / points.length;
    lon0 = points.reduce((s, p) => s + p[1], 0) / points.length;
  }
  const kx = 111320 * Math.cos((lat0 * Math.PI) / 180), ky = 110540;
  let span = minSpanM;
  for (const [lat, lon, r] of points) {
    span = Math.max(span, 2 * (Math.abs((lon - lon0) * kx) + (r || 0)), 2 * (Math.abs((lat - lat0) * ky) + (r || 0)));
  }
  const scale = (Math.min(canvas.width, canvas.height) * 0.9) / span; // px per metre
  return {
    scale,
    xy: (lat, lon) => [canvas.width / 2 + (lon - lon0) * kx * scale, canvas.height / 2 - (lat - lat0) * ky * scale],
    ll: (x, y) => [lat0 - (y - canvas.height / 2) / scale / ky, lon0 + (x - canvas.width / 2) / scale / kx],
  };
}

function zonePoints(zones) {
  const out = [];
  for (const f of (zones && zones.features) || []) {
    const g = f.geometry || {};
    const r = (f.properties || {}).radius_m || 0;
    const walk = (c) => (typeof c[0] === "number" ? out.push([c[1], c[0], r]) : c.forEach(walk));
    if (g.coordinates) walk(g.coordinates);
  }
  return out;
}

function drawZones(ctx, p, zones) {
  for (const f of (zones && zones.features) || []) {
    const g = f.geometry || {}, props = f.properties || {};
    ctx.fillStyle = props.kind === "inclusion" ? "#27ae6033" : "#c0392b33";
    ctx.strokeStyle = props.kind === "inclusion" ? "#27ae60" : "#c0392b";
    ctx.beginPath();
    if (g.type === "Point") {
      const [x, y] = p.xy(g.coordinates[1], g.coordinates[0]);
      ctx.arc(x, y, (props.radius_m || 0) * p.scale, 0, 2 * Math.PI);
    } else {
      const polys = g.type === "Polygon" ? [g.coordinates] : g.type === "MultiPolygon" ? g.coordinates : [];
      for (const poly of polys) for (const ring of poly) ring.forEach(([lon, lat], i) => {
        const [x, y] = p.xy(lat, lon);
        if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      });
    }
    ctx.fill("evenodd");
    ctx.stroke();
    if (props.label) {
      const [lat, lon] = zonePoints({ features: [f] })[0] || [];
      if (lat !== undefined) {
        ctx.fillStyle = "#333";
        ctx.fillText(props.label, ...p.xy(lat, lon));
      }
    }
  }
}

function scaleBar(ctx, p, canvas) {
  const metres = [10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000].find((m) => m * p.scale > 60) || 100000;
  const w = metres * p.scale, y = canvas.height - 12;
  ctx.strokeStyle = "#333";
  ctx.beginPath(); ctx.moveTo(10, y); ctx.lineTo(10 + w, y); ctx.stroke();
  ctx.fillStyle = "#333";
  ctx.fillText(metres >= 1000 ? metres / 1000 + " km" : metres + " m", 14 + w, y + 4);
}

function drawMap(canvas, zones, offenders, protectedParties, track) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.font = "12px system-ui, sans-serif";
  const parties = [...offenders.map((d) => ({ ...d, who: "offender" })), ...protectedParties.map((d) => ({ ...d, who: "protected" }))]
    .filter((d) => d.lat != null && d.lon != null);
  const pts = [...parties.map((d) => [d.lat, d.lon, d.radius_m || d.acc_m || 0]), ...zonePoints(zones)];
  const p = projection(pts.length ? pts : [], canvas, 200);
  drawZones(ctx, p, zones);
  const colour = (dev) => (offenders.some((o) => o.device === dev) ? "#c0392b" : "#2471a3");
  const byDevice = {};
  for (const f of track || []) (byDevice[f.device] = byDevice[f.device] || []).push(f);
  for (const [dev, fixes] of Object.entries(byDevice)) {
    ctx.strokeStyle = colour(dev);
    ctx.globalAlpha = 0.6;
    ctx.beginPath();
    fixes.forEach((f, i) => { const [x, y] = p.xy(f.lat, f.lon); if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y); });
    ctx.stroke();
    ctx.globalAlpha = 1;
  }
  state.drawn = [];
  for (const d of parties) {
    const [x, y] = p.xy(d.lat, d.lon);
    const c = d.who === "offender" ? "#c0392b" : "#2471a3";
    ctx.strokeStyle = c;
    ctx.fillStyle = c + "22";
    ctx.beginPath();
    ctx.arc(x, y, Math.max(3, (d.radius_m || d.acc_m || 0) * p.scale), 0, 2 * Math.PI);
    ctx.fill();
    ctx.stroke();
    ctx.fillStyle = c;
    ctx.beginPath();
    ctx.arc(x, y, 4, 0, 2 * Math.PI);
    ctx.fill();
    ctx.fillText(`${d.device} (${d.who}, ${Math.round(d.age_s || 0)} s ago)`, x + 7, y - 7);
    state.drawn.push({ device: d.device, who: d.who, x, y });
  }
  scaleBar(ctx, p, canvas);
  return p;
}

// -- the case manager's page -----------------------------------------------------------------

function startManager() {
  $("manager").hidden = false;
  loadCases();
  const canvas = $("zone-map");
  canvas.addEventListener("click", (ev) => {
    if (!state.zoneView) return;
    const r = canvas.getBoundingClientRect();
    state.zonePoints.push(state.zoneView.ll(ev.clientX - r.left, ev.clientY - r.top));
    drawCaseZones();
  });
  $("zone-clear").addEventListener("click", () => { state.zonePoints = []; drawCaseZones(); });
  $("zone-save").addEventListener("click", saveDrawnZone);
  $("zone-file").addEventListener("change", uploadZone);
}

async function loadCases() {
  const { cases } = await api("GET", "/api/cases");
  const body = $("cases").querySelector("tbody");
  body.replaceChildren();
  for (const c of cases) {
    const tr = document.createElement("tr");
    tr.dataset.caseId = c.id;
    for (const v of [c.id, c.offenders.join(", "), c.protected.join(", "), c.order.distance_m + " m", c.zones.features.length]) {
      const td = document.createElement("td");
      text(td, v);
      tr.appendChild(td);
    }
    tr.addEventListener("click", () => { state.caseSelected = c; state.zonePoints = []; drawCaseZones(); });
    body.appendChild(tr);
  }
  if (state.caseSelected) {
    state.caseSelected = cases.find((c) => c.id === state.caseSelected.id) || null;
    drawCaseZones();
  }
}

function drawCaseZones() {
  const c = state.caseSelected;
  if (!c) return;
  $("case-detail").hidden = false;
  text($("case-title"), `Case ${c.id}: ${c.zones.features.length} zone(s)`);
  const canvas = $("zone-map");
  if (!state.zoneView || !state.zonePoints.length) {
    const pts = zonePoints(c.zones);
    state.zoneView = projection(pts, canvas, 2000);
  }
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.font = "12px system-ui, sans-serif";
  drawZones(ctx, state.zoneView, c.zones);
  ctx.strokeStyle = "#8e44ad";
  ctx.beginPath();
  state.zonePoints.forEach(([lat, lon], i) => {
    const [x, y] = state.zoneView.xy(lat, lon);
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    ctx.fillRect(x - 3, y - 3, 6, 6);
  });
  ctx.stroke();
  scaleBar(ctx, state.zoneView, canvas);
}

async function addZone(feature) {
  const c = state.caseSelected;
  try {
    const got = await api("POST", `/api/cases/${encodeURIComponent(c.id)}/zones`, feature);
    state.zonePoints = [];
    await loadCases();
    text($("zone-result"), "saved" + (got.warnings.length ? ": " + got.warnings.join("; ") : ""));
  } catch (e) {
    text($("zone-result"), "refused: " + e.message);
  }
}

function saveDrawnZone() {
  if (state.zonePoints.length < 3) { text($("zone-result"), "place at least three corners"); return; }
  const ring = state.zonePoints.map(([lat, lon]) => [lon, lat]);
  ring.push(ring[0]);
  addZone({
    type: "Feature",
    geometry: { type: "Polygon", coordinates: [ring] },
    properties: { kind: $("zone-kind").value, label: $("zone-label").value },
  });
}

async function uploadZone(ev) {
  const file = ev.target.files[0];
  if (!file) return;
  let doc;
  try { doc = JSON.parse(await file.text()); } catch (e) { text($("zone-result"), "not JSON: " + e.message); return; }
  if (doc.type === "FeatureCollection") {
    for (const f of doc.features || []) await addZone(f);
  } else {
    await addZone(doc);
  }
}

const saved = sessionStorage.getItem("proximity-token");
if (saved) signIn(saved);
