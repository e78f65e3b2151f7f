// voxloc live dashboard: image over server-sent events, stats and controls over the REST API.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { dragging: false, edits: 0, statsUpdates: 0, modeSending: false };

function authHeaders() {
  const token = localStorage.getItem("voxloc-token") || "";
  return token ? { Authorization: "Bearer " + token } : {};
}

async function api(method, path, body) {
  const opts = { method, headers: { ...authHeaders() } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const resp = await fetch(path, opts);
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(data.detail || resp.status + " " + resp.statusText);
  return data;
}

function say(msg, bad) {
  const el = $("ctlmsg");
  el.textContent = msg;
  el.style.color = bad ? "#ff7b7b" : "";
}

// ---- image stream -------------------------------------------------------------------
function connectEvents() {
  const es = new EventSource("/dashboard/events");
  es.addEventListener("image", (ev) => {
    const d = JSON.parse(ev.data);
    $("sr").src = "data:image/png;base64," + d.png;
    $("sr").dataset.version = d.version;
    const model = d.model ? `${d.model} v${d.model_version}, threshold ${d.threshold}` : "";
    $("imginfo").textContent =
      `${d.frames} frame sets, ${d.localizations} localizations` +
      (d.frame !== undefined ? `, last frame ${d.frame}` : "") + (model ? ` — ${model}` : "") +
      (d.acquisition ? `, acquisition ${d.acquisition}` : "");
    $("missed").textContent = d.missed;
    if (d.photons) drawPhotons(d.photons);
    if (d.mode && !state.modeSending) $("render_mode").value = d.mode;
  });
  es.onopen = () => { $("conn").textContent = "live"; $("conn").className = "pill ok"; };
  es.onerror = () => { $("conn").textContent = "reconnecting…"; $("conn").className = "pill bad"; };
}

// photons per localization: log-spaced bins, one bar each (SVG, drawn from the event data)
const SVG = "http://www.w3.org/2000/svg";

function svgEl(name, attrs, text) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function drawPhotons(p) {
  const svg = $("photons");
  const W = Math.max(svg.clientWidth || 300, 100), H = 110, top = 4, bottom = 16;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);  // drawn at the card's width, unscaled
  const counts = p.counts || [];
  const peak = Math.max(1, ...counts);
  const bw = W / Math.max(1, counts.length);
  const parts = counts.map((c, i) => {
    const h = ((H - top - bottom) * c) / peak;
    return svgEl("rect", { x: (i * bw).toFixed(1), y: (H - bottom - h).toFixed(1),
      width: Math.max(bw - 1, 1).toFixed(1), height: h.toFixed(1), "data-count": c });
  });
  const [lo, hi] = p.log10_range || [1, 6];
  for (let e = Math.ceil(lo); e <= hi; e++) {  // decade labels under the bars
    const x = ((e - lo) / (hi - lo)) * W;
    parts.push(svgEl("text", { x: Math.min(Math.max(x - 8, 0), W - 24).toFixed(1), y: H - 4 },
      `1e${e}`));
  }
  svg.replaceChildren(...parts);
  svg.dataset.known = p.known;
  const unknown = p.unknown ? `, ${p.unknown} without photometry` : "";
  $("photon_summary").textContent = p.known
    ? `median ≈ ${Math.round(p.median)} photons over ${p.known} localizations${unknown}`
    : `no photometry yet${unknown}`;
}

async function loadInfo() {
  const info = await api("GET", "/dashboard/info");
  $("cbar").style.background = `linear-gradient(to top, ${info.colorbar.join(", ")})`;
  $("zmin").textContent = Math.round(info.z_min_nm);
  $("zmax").textContent = Math.round(info.z_max_nm);
  $("render_mode").value = info.mode;
}

// ---- stats ----------------------------------------------------------------------------
const fmt = (v, digits = 1) => (typeof v === "number" ? v.toFixed(digits) : "–");

function row(cells, header) {
  const tr = document.createElement("tr");
  cells.forEach((text, i) => {
    const td = document.createElement(header && i === 0 ? "th" : "td");
    td.textContent = text;
    tr.appendChild(td);
  });
  return tr;
}

function renderDrops(s) {
  const rows = [];
  const asm = (s.assembler && s.assembler.dropped) || {};
  for (const [k, v] of Object.entries(asm)) rows.push([`frame sets: ${k}`, v]);
  if (s.batcher) rows.push([`batcher (${s.batcher.policy})`, s.batcher.dropped]);
  for (const [k, v] of Object.entries(s.rejects || {})) rows.push([`rejected: ${k}`, v]);
  $("drops").replaceChildren(...rows.map((r) => row(r, true)));
}

function renderCameras(cams) {
  const body = $("cameras").querySelector("tbody");
  body.replaceChildren(...Object.entries(cams || {}).map(([name, c]) => {
    const rej = Object.entries(c.rejects || {}).map(([k, v]) => `${k}: ${v}`).join(", ") || "0";
    return row([name, c.plane, c.state, c.frames_in, c.last_frame ?? "–", rej], false);
  }));
}

function renderStream(s) {
  const st = s.stream || {};
  const why = Object.entries(st.cameras || {}).map(([cam, r]) => `${cam}: ${r.join(", ")}`);
  $("stream").textContent = (st.state || "–") + (why.length ? ` (${why.join("; ")})` : "");
  $("stream").className = st.healthy === false ? "bad" : "";
  const acq = s.assembler ? s.assembler.acquisition : undefined;
  $("acquisition").textContent = acq === undefined ? "–" : acq || "(none)";
}

async function pollStats() {
  try {
    const s = await api("GET", "/stats");
    renderStream(s);
    $("fps_in").textContent = fmt(s.fps_in);
    $("fps_out").textContent = fmt(s.fps_out);
    const lat = s.latency_ms || {};
    $("latency").textContent = `${fmt(lat.p50)} / ${fmt(lat.p99)} ms`;
    $("batch").textContent = fmt(s.inference && s.inference.mean_batch_size, 2);
    $("depth").textContent = s.batcher ? s.batcher.depth : "–";
    $("published").textContent = s.publisher ? s.publisher.published : "–";
    renderDrops(s);
    renderCameras(s.cameras);
    state.statsUpdates += 1;
    document.body.dataset.statsUpdates = state.statsUpdates;
  } catch (err) {
    $("conn").textContent = "service unreachable";
    $("conn").className = "pill bad";
  }
}

// ---- controls -------------------------------------------------------------------------
async function pollConfig() {
  if (state.dragging) return;
  const edits = state.edits;
  try {
    const c = await api("GET", "/config");
    if (state.dragging || edits !== state.edits) return;  // moved while we asked: stale
    $("threshold").value = c.threshold;
    $("thrval").textContent = Number(c.threshold).toFixed(2);
    $("refine").checked = Boolean(c.refine);
  } catch (err) { /* shown by pollStats */ }
}

async function loadModels() {
  try {
    const m = await api("GET", "/models");
    const active = m.active ? m.active.name : "";
    $("model").replaceChildren(...(m.available || []).map((a) => {
      const opt = document.createElement("option");
      opt.value = a.name;
      opt.selected = a.name === active;
      opt.disabled = Boolean(a.error);
      opt.textContent = a.error ? `${a.name} (unusable: ${a.error})`
        : `${a.name} (v${a.version}, ${a.planes} planes)`;
      return opt;
    }));
  } catch (err) { say("cannot list models: " + err.message, true); }
}

// one PUT at a time, the latest value wins (key presses fire a change each)
const thrSend = { inFlight: false, pending: null };

async function sendThreshold(value) {
  state.edits += 1;
  thrSend.pending = value;
  state.dragging = true;
  if (thrSend.inFlight) return;
  thrSend.inFlight = true;
  while (thrSend.pending !== null) {
    const v = thrSend.pending;
    thrSend.pending = null;
    try {
      const c = await api("PUT", "/config", { threshold: v });
      say(`threshold ${Number(c.threshold).toFixed(2)} from the next batch`);
    } catch (err) { say("threshold: " + err.message, true); }
  }
  thrSend.inFlight = false;
  state.dragging = false;
}

async function sendRefine(on) {
  state.edits += 1;
  try {
    const c = await api("PUT", "/config", { refine: on });
    say(c.refine ? "refined positions from the next batch" : "network positions from the next batch");
  } catch (err) {
    $("refine").checked = !on;
    say("refine: " + err.message, true);
  }
}

function wireControls() {
  const ref = $("refine");
  ref.addEventListener("change", () => sendRefine(ref.checked));
  const thr = $("threshold");
  thr.addEventListener("input", () => {
    state.dragging = true;
    state.edits += 1;
    $("thrval").textContent = Number(thr.value).toFixed(2);
  });
  thr.addEventListener("change", () => sendThreshold(Number(thr.value)));
  $("model").addEventListener("change", async (ev) => {
    const name = ev.target.value;
    say(`loading ${name}…`);
    try {
      const r = await api("POST", `/models/${encodeURIComponent(name)}/load`);
      say(`serving ${r.active.name} v${r.active.version}`);
    } catch (err) { say("model: " + err.message, true); }
    loadModels();
  });
  $("render_mode").addEventListener("change", async (ev) => {
    state.modeSending = true;
    try {
      const r = await api("PUT", "/dashboard/render", { mode: ev.target.value });
      say(`rendering: ${r.mode}`);
    } catch (err) { say("rendering: " + err.message, true); }
    state.modeSending = false;
  });
  $("reset").addEventListener("click", async () => {
    try { await api("POST", "/dashboard/reset"); say("image cleared"); }
    catch (err) { say("reset: " + err.message, true); }
  });
  const tok = $("token");
  tok.value = localStorage.getItem("voxloc-token") || "";
  tok.addEventListener("change", () => localStorage.setItem("voxloc-token", tok.value));
}

wireControls();
loadInfo();
loadModels();
connectEvents();
pollStats();
pollConfig();
setInterval(pollStats, 1000);
setInterval(pollConfig, 3000);
