// DDoS Shield dashboard: plain JavaScript, no build step, no third-party code.
// It reads the REST API with the token kept in sessionStorage and follows the live
// stream (/api/v1/stream, server-sent events).  The stream is read with fetch()
// rather than EventSource because EventSource cannot send an Authorization header,
// and a cookie would need CSRF protection for the buttons.
"use strict";

const API = "/api/v1";
const KEY = "ddos-shield-token";
// the categories are the snapshot's own keys (records.CATEGORY_NAMES); colours for the known ones
let CATS = ["tcp_syn", "tcp", "udp", "icmp", "frag", "other"];
const COLORS = { tcp_syn: "#c62828", tcp: "#6a1b9a", udp: "#1f5fbf", icmp: "#2e7d32", frag: "#b26a00", other: "#546e7a" };
const HISTORY_POINTS = 300; // seconds of chart
const $ = (id) => document.getElementById(id);

let token = sessionStorage.getItem(KEY) || "";
let role = "viewer";
let series = []; // [{ts, pps: {cat: v}}]
let streamAbort = null;
let lastSnapshot = null;
let recentTimer = null;

// ---- formatting ------------------------------------------------------------------

function si(v, unit) {
  const steps = [[1e9, "G"], [1e6, "M"], [1e3, "k"]];
  for (const [d, p] of steps) if (v >= d) return (v / d).toFixed(1) + " " + p + unit;
  return (v > 0 && v < 10 ? v.toFixed(1) : Math.round(v)) + " " + unit;
}
function dur(s) {
  s = Math.max(0, Math.round(s));
  if (s < 120) return s + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}
function clock(ts) { return new Date(ts * 1000).toLocaleTimeString(); }
function describe(match) {
  return Object.entries(match).map(([k, v]) => {
    if (v && typeof v === "object" && "min" in v) return k + "=" + (v.min === v.max ? v.min : v.min + "-" + v.max);
    if (v && typeof v === "object" && "mask" in v) return k + "=0x" + v.value.toString(16) + "/0x" + v.mask.toString(16);
    return k + "=" + v;
  }).join(" ");
}
function el(tag, text, attrs) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}
function row(cells, attrs) {
  const tr = el("tr", null, attrs);
  for (const c of cells) {
    if (c instanceof Node) { const td = el("td"); td.appendChild(c); tr.appendChild(td); }
    else tr.appendChild(el("td", c));
  }
  return tr;
}
function fill(id, rows, empty, cols) {
  if (!rows.length) {
    const tr = el("tr");
    tr.appendChild(el("td", empty, { colspan: cols, class: "muted" }));
    rows = [tr];
  }
  $(id).replaceChildren(...rows);
}

// ---- the API -----------------------------------------------------------------------

async function api(method, path, body) {
  const r = await fetch(API + path, {
    method,
    headers: { authorization: "Bearer " + token, ...(body ? { "content-type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  if (r.status === 401) { logout("Your token was refused (revoked?). Log in again."); throw new Error("401"); }
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail));
  return data;
}

// ---- log in and out ----------------------------------------------------------------

async function login(t) {
  token = t;
  const r = await fetch(API + "/status", { headers: { authorization: "Bearer " + t } });
  if (!r.ok) throw new Error(r.status === 401 ? "unknown or revoked token" : "the shield answered " + r.status);
  const st = await r.json();
  sessionStorage.setItem(KEY, t);
  role = st.you.role;
  $("who").textContent = st.you.name + " (" + role + ")";
  $("summary").textContent = "data plane " + st.dataplane + (st.dry_run ? " · dry run" : "") + " · " + (st.interfaces || []).join(", ");
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  document.body.dataset.role = role;
  loadRecent();
  loadEvents();
  stream();
  const m = location.pathname.match(/^\/attacks\/(\d+)$/);
  if (m) showAttack(Number(m[1]));
}

function logout(message) {
  sessionStorage.removeItem(KEY);
  token = "";
  if (streamAbort) streamAbort.abort();
  $("app").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("who").textContent = "";
  $("conn").textContent = "offline";
  $("conn").className = "pill";
  $("login-error").textContent = message || "";
}

// ---- the live stream ---------------------------------------------------------------

async function stream() {
  if (streamAbort) streamAbort.abort();
  const ctl = new AbortController();
  streamAbort = ctl;
  try {
    const r = await fetch(API + "/stream", { headers: { authorization: "Bearer " + token }, signal: ctl.signal });
    if (r.status === 401) { logout("Your token was refused (revoked?). Log in again."); return; }
    if (!r.ok || !r.body) throw new Error("stream " + r.status);
    $("conn").textContent = "live";
    $("conn").className = "pill live";
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value.replace(/\r\n/g, "\n");
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const frame = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        let name = "message", data = "";
        for (const line of frame.split("\n")) {
          if (line.startsWith("event:")) name = line.slice(6).trim();
          else if (line.startsWith("data:")) data += line.slice(5).trimStart();
        }
        if (data) dispatch(name, JSON.parse(data));
      }
    }
  } catch (e) {
    if (ctl.signal.aborted) return;
  }
  if (ctl.signal.aborted || !token) return;
  $("conn").textContent = "reconnecting";
  $("conn").className = "pill";
  setTimeout(() => { if (token && streamAbort === ctl) stream(); }, 2000);
}

function dispatch(name, data) {
  if (name === "snapshot") onSnapshot(data);
  else if (name === "event") onEvent(data);
}

function onSnapshot(s) {
  lastSnapshot = s;
  CATS = Object.keys(s.pps);
  series.push({ ts: s.ts, pps: s.pps });
  if (series.length > HISTORY_POINTS) series = series.slice(-HISTORY_POINTS);
  const total = CATS.reduce((a, c) => a + (s.pps[c] || 0), 0);
  $("rate-now").textContent = si(total, "pps") + " · " + si(CATS.reduce((a, c) => a + (s.bps[c] || 0), 0), "bps");
  $("conn").textContent = s.attacks.length ? s.attacks.length + " under attack" : "live";
  $("conn").className = "pill " + (s.attacks.length ? "attack" : "live");
  drawChart($("chart"), series.map((p) => [p.ts, p.pps]), CATS);
  renderAttacks(s);
  renderMitigations(s.mitigations, s.ts);
  fill("top-dst", s.top_destinations.map((d) =>
    row([d.dst, d.group, si(d.pps, "pps"), si(d.bps, "bps"), si(d.dropped_pps, "pps")])), "no traffic", 5);
  fill("top-src", s.top_sources.map((d) => row([d.src, si(d.pps, "pps"), si(d.bps, "bps")])), "no samples", 3);
}

function onEvent(e) {
  addEvent(e);
  if (e.event.startsWith("attack_start") || e.event.startsWith("attack_end")) {
    clearTimeout(recentTimer);
    recentTimer = setTimeout(loadRecent, 300);
  }
}

// ---- tables --------------------------------------------------------------------------

function attackLink(id) {
  const a = el("a", id, { href: "/attacks/" + id, "data-testid": "attack-" + id });
  a.addEventListener("click", (ev) => { ev.preventDefault(); showAttack(id); });
  return a;
}

function renderAttacks(s) {
  $("attacks-count").textContent = s.attacks.length;
  fill("attacks", s.attacks.map((a) => row([
    attackLink(a.attack_id), a.target, a.group, a.attack_types.join(", "),
    si(a.pps, "pps"), si(a.peak_pps, "pps"), dur(s.ts - a.started),
  ], { class: "active-attack" })), "none", 7);
}

async function loadRecent() {
  try {
    const { attacks } = await api("GET", "/attacks?state=ended&limit=10");
    fill("recent", attacks.map((a) => row([
      attackLink(a.attack_id), a.target, a.attack_types.join(", "), si(a.peak_pps, "pps"),
      clock(a.started), dur(a.ended - a.started),
    ])), "none since the shield started", 6);
  } catch (e) { /* shown by the connection state */ }
}

async function loadEvents() {
  try {
    const { events } = await api("GET", "/events?limit=50");
    $("events").replaceChildren();
    for (const e of events) addEvent(e);
  } catch (e) { /* idem */ }
}

function addEvent(e) {
  const who = e.actor ? " by " + e.actor : "";
  const what = e.target ? " " + e.target : e.rule ? " #" + e.rule.mitigation_id : "";
  const li = el("li", clock(e.ts) + " " + e.event + what + who + (e.reason ? ": " + e.reason : ""));
  const list = $("events");
  list.insertBefore(li, list.firstChild);
  while (list.children.length > 100) list.removeChild(list.lastChild);
}

function renderMitigations(items, now) {
  $("mitigations-count").textContent = items.length;
  const steer = role === "operator" || role === "admin";
  fill("mitigations", items.map((m) => {
    const buttons = el("span");
    if (steer) { // viewers get no buttons at all, not disabled ones
      if (m.state === "pending") buttons.appendChild(actionButton("Approve", "approve", m));
      buttons.appendChild(actionButton("Withdraw", "withdraw", m));
    }
    const tr = row([
      String(m.mitigation_id), m.state, m.action + (m.action === "rate_limit" ? " " + m.rate_pps + "/s" + (m.per_source ? " per source" : "") : ""),
      "", String(m.hits.packets), String(m.hits.dropped), dur(m.expires_at - now), m.actor, buttons,
    ], { class: m.state, "data-testid": "mitigation-" + m.mitigation_id });
    const cell = tr.children[3];
    cell.className = "match";
    cell.textContent = describe(m.match);
    cell.title = m.reason || "";
    return tr;
  }), "none", 9);
}

function actionButton(label, verb, m) {
  const b = el("button", label, { type: "button", "data-testid": verb + "-" + m.mitigation_id });
  if (verb === "withdraw") b.className = "danger";
  b.addEventListener("click", async () => {
    const what = verb + " mitigation " + m.mitigation_id + " (" + m.action + " " + describe(m.match) + ")?";
    if (!confirm(what.charAt(0).toUpperCase() + what.slice(1))) return;
    b.disabled = true;
    $("action-error").textContent = "";
    try {
      await api("POST", "/mitigations/" + m.mitigation_id + "/" + verb,
        verb === "withdraw" ? { reason: "withdrawn from the dashboard" } : undefined);
      const { mitigations, now } = await api("GET", "/mitigations");
      renderMitigations(mitigations, now);
    } catch (e) {
      $("action-error").textContent = verb + " " + m.mitigation_id + ": " + e.message;
      b.disabled = false;
    }
  });
  return b;
}

// ---- one attack ----------------------------------------------------------------------

async function showAttack(id) {
  let a;
  try { a = await api("GET", "/attacks/" + id); }
  catch (e) {
    try { a = await api("GET", "/history/attacks/" + id); } catch (e2) { $("action-error").textContent = e2.message; return; }
  }
  $("attack-title").textContent = "Attack " + id + " on " + a.target + " (" + (a.attack_types || []).join(", ") + ")";
  const points = (a.timeline || []).filter((p) => Array.isArray(p) || p.pps !== undefined)
    .map((p) => Array.isArray(p) ? [p[0], { pps: p[1] }] : [p.ts, { pps: p.pps }]);
  const body = $("attack-body");
  body.replaceChildren(
    el("p", "group " + a.group + " · started " + clock(a.started) + (a.ended ? " · ended " + clock(a.ended) : " · under way") +
      " · peak " + si(a.peak_pps, "pps") + " / " + si(a.peak_bps, "bps")),
  );
  const rules = a.rules || a.mitigations || [];
  if (rules.length) {
    body.appendChild(el("h3", "Rules (fingerprints)"));
    const ul = el("ul");
    for (const r of rules) ul.appendChild(el("li", "#" + r.mitigation_id + " " + r.action + " " + describe(r.match) +
      (r.attack_share !== undefined ? " · matches " + (100 * r.attack_share).toFixed(1) + "% of the attack" : "")));
    body.appendChild(ul);
  }
  const actions = a.actions || (a.timeline || []).filter((t) => t.event && t.event.startsWith("mitigation"));
  if (actions.length) {
    body.appendChild(el("h3", "Actions"));
    const ul = el("ul");
    for (const x of actions) ul.appendChild(el("li", clock(x.ts) + " " + x.event + (x.mitigation_id ? " #" + x.mitigation_id : "") +
      (x.actor ? " by " + x.actor : "") + (x.reason ? ": " + x.reason : "")));
    body.appendChild(ul);
  }
  const d = $("attack-dialog");
  if (!d.open) d.showModal();
  drawChart($("attack-chart"), points, ["pps"]); // once shown: a closed dialog has no width
}

// ---- the chart -------------------------------------------------------------------------

function drawChart(canvas, points, keys) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = w * dpr; canvas.height = h * dpr;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, h);
  const left = 64, bottom = 18, top = 6, plotW = w - left - 8, plotH = h - bottom - top;
  let max = 10; // pps: a quiet network draws a flat line, not noise blown up to full height
  for (const [, v] of points) for (const k of keys) max = Math.max(max, v[k] || 0);
  const t1 = points.length ? points[points.length - 1][0] : 0;
  const t0 = points.length ? Math.min(points[0][0], t1 - 60) : -60;
  const x = (t) => left + ((t - t0) / Math.max(1, t1 - t0)) * plotW;
  const y = (v) => top + plotH - (v / max) * plotH;
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#6b7280";
  g.strokeStyle = "#e3e5e9";
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    g.beginPath(); g.moveTo(left, y(v)); g.lineTo(left + plotW, y(v)); g.stroke();
    g.fillText(si(v, "pps"), 2, y(v) + 4);
  }
  if (points.length) {
    g.fillText(clock(t0), left, h - 4);
    const end = clock(t1);
    g.fillText(end, left + plotW - g.measureText(end).width, h - 4);
  }
  for (const k of keys) {
    g.strokeStyle = COLORS[k] || "#1f5fbf";
    g.lineWidth = 1.6;
    g.beginPath();
    points.forEach(([t, v], i) => (i ? g.lineTo(x(t), y(v[k] || 0)) : g.moveTo(x(t), y(v[k] || 0))));
    g.stroke();
  }
  if (canvas.id === "chart") {
    $("legend").replaceChildren(...keys.map((k) => {
      const s = el("span", k);
      const i = el("i", null, { style: "background:" + COLORS[k] });
      s.insertBefore(i, s.firstChild);
      return s;
    }));
  }
}

// ---- start ---------------------------------------------------------------------------------

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("login-error").textContent = "";
  try { await login($("token").value.trim()); $("token").value = ""; }
  catch (e) { logout(e.message); }
});
$("logout").addEventListener("click", () => logout(""));
window.addEventListener("resize", () => { if (lastSnapshot) drawChart($("chart"), series.map((p) => [p.ts, p.pps]), CATS); });

if (token) login(token).catch((e) => logout(e.message));
else logout("");
