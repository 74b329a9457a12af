// GridLike dashboard: loads the state once, then follows /api/events.
// Plain JavaScript, no build step; every text goes in with textContent.
"use strict";

const STATUSES = ["pending", "running", "done", "failed"];
const PAGE = 50;            // rows of the job list
const GONE_AFTER = 60e3;    // ms a disconnected worker stays, greyed out
const BUCKET = 10e3;        // ms per bar of the throughput chart
const BARS = 60;            // 10 minutes of bars
const BATCHES = 5;          // the newest batches shown per type

const $ = (selector) => document.querySelector(selector);
let session = null;         // {auth, signed_in, user, csrf, last_event_id}
let source = null;          // the EventSource
const state = {
  workers: new Map(),       // id -> worker view
  types: {}, priorities: {}, jobs: {},   // counts, as /api/stats gives them
  typeStates: {},           // type name ("null": untyped) -> "active" | "paused" | "draining"
  typeNames: [],            // the configured types, in order, as /api/types lists them
  batches: new Map(),       // "type:batch" -> {type, batch, total, pending, ...}
  failures: new Map(),      // key -> failed job view, the newest first
  page: [],                 // the job list's rows, job views
  next: null,               // the URL of the next page, or null
  filter: {},
  done: [],                 // times (ms) of jobs done, for the chart
  since: Date.now(),
};

// Talking to the server

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers);
  if (session && session.csrf) headers["X-CSRF-Token"] = session.csrf;
  const response = await fetch(path, Object.assign({}, options, { headers, credentials: "same-origin" }));
  if (response.status === 401 && path !== "api/session") { signedOut(); throw new Error("signed out"); }
  if (!response.ok) {
    let problem = response.statusText;
    try { problem = (await response.json()).problem; } catch (e) { /* not JSON */ }
    throw new Error(problem);
  }
  return response;
}

async function start() {
  session = await (await api("api/session")).json();
  if (!session.signed_in) return showSignIn();
  $("#sign-in").hidden = true;
  $("#main").hidden = false;
  $("#who").textContent = session.user ? "signed in as " + session.user : "";
  $("#sign-out").hidden = session.auth === "none";
  await load();
  follow(session.last_event_id);
}

function showSignIn() {
  $("#main").hidden = true;
  $("#sign-out").hidden = true;
  $("#who").textContent = "";
  const form = $("#sign-in");
  for (const label of form.querySelectorAll("label")) label.hidden = label.dataset.mode !== session.auth;
  form.hidden = false;
  form.querySelector("label:not([hidden]) input").focus();
}

function signedOut() {
  if (source) source.close();
  source = null;
  session = Object.assign({}, session, { signed_in: false, csrf: null });
  setLive("signed out", "down");
  showSignIn();
}

$("#sign-in").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const body = session.auth === "password"
    ? { user: form.user.value, password: form.password.value }
    : { api_key: form.api_key.value };
  try {
    await api("api/session", { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } });
    form.reset();
    $("#sign-in-problem").textContent = "";
    await start();
  } catch (e) {
    $("#sign-in-problem").textContent = e.message;
  }
});

$("#sign-out").addEventListener("click", async () => {
  await api("api/session", { method: "DELETE" }).catch(() => {});
  signedOut();
});

async function load() {
  const [workers, stats, types] = await Promise.all([
    api("api/workers").then((r) => r.json()), api("api/stats").then((r) => r.json()),
    api("api/types").then((r) => r.json())]);
  state.workers = new Map(workers.map((w) => [w.id, w]));
  state.jobs = stats.jobs;
  state.types = stats.types;
  state.typeNames = Object.keys(types);
  state.typeStates = Object.fromEntries(Object.entries(types).map(([name, view]) => [name, view.state]));
  state.priorities = stats.priorities;
  const [batches, failed] = await Promise.all([
    api("api/batches?limit=" + BATCHES).then((r) => r.json()),
    api("api/jobs?status=failed&order=newest&limit=1000").then((r) => r.json())]);
  state.batches = new Map(batches.map((b) => [batchId(b.type, b.batch), b]));
  state.failures = new Map(failed.map((job) => [job.key, job]));
  await loadPage(jobsURL());
}

function jobsURL() {
  const query = new URLSearchParams({ limit: PAGE });
  for (const [name, value] of Object.entries(state.filter)) if (value) query.set(name, value);
  return "api/jobs?" + query;
}

async function loadPage(url) {
  const response = await api(url);
  state.page = await response.json();
  const link = /<([^>]*)>;\s*rel="next"/.exec(response.headers.get("Link") || "");
  // The Link names the path from the server's root: keep it relative to our base.
  state.next = link ? "api/jobs" + link[1].slice(link[1].indexOf("?")) : null;
  render();
}

function follow(after) {
  if (source) source.close();
  const query = after ? "?last_event_id=" + after : "";
  source = new EventSource("api/events" + query);
  source.onopen = () => setLive("live", "live");
  source.onerror = () => {
    setLive("reconnecting", "down");
    if (source.readyState === EventSource.CLOSED) recheck();
  };
  source.addEventListener("job", (e) => { onJob(JSON.parse(e.data)); render(); });
  source.addEventListener("worker", (e) => { onWorker(JSON.parse(e.data)); render(); });
  source.addEventListener("type", (e) => { onTypeState(JSON.parse(e.data)); render(); });
  source.addEventListener("reset", () => load().catch(show));
}

async function recheck() {
  // The stream was refused: signed out, or the server is gone for now.
  try {
    const now = await (await api("api/session")).json();
    if (!now.signed_in) { session = now; return signedOut(); }
  } catch (e) { /* down: try again on the next error */ }
  setTimeout(() => { if (session.signed_in) follow(null); }, 3000);
}

function setLive(text, kind) {
  const badge = $("#live");
  badge.textContent = text;
  badge.className = "badge " + kind;
}

function show(error) { $("#problem").textContent = error.message; }

// Applying events

// Where each change takes a job from, and to: the counts follow from it.
const MOVES = {
  submitted: [null, "pending"], started: ["pending", "running"],
  attempt_failed: ["running", "pending"], done: ["running", "done"],
  failed: ["running", "failed"], retried: ["failed", "pending"],
};

const typeName = (type) => type === null ? "null" : type;
const batchId = (type, batch) => typeName(type) + ":" + batch;

// A job moved within its batch: follow it if the batch is one of those shown,
// or a newer one (which was empty when the page loaded).
function onBatch(job, move) {
  const id = batchId(job.type, job.batch);
  let row = state.batches.get(id);
  if (!row) {
    if (move[0] !== null) return;
    const same = [...state.batches.values()].filter((b) => b.type === job.type);
    if (same.some((b) => b.batch > job.batch)) return;
    row = { type: job.type, batch: job.batch, total: 0, pending: 0, running: 0, done: 0, failed: 0 };
    state.batches.set(id, row);
    same.sort((a, b) => b.batch - a.batch).slice(BATCHES - 1).forEach((b) => state.batches.delete(batchId(b.type, b.batch)));
  }
  if (move[0]) row[move[0]] = Math.max(0, row[move[0]] - 1); else row.total += 1;
  if (move[1]) row[move[1]] += 1; else row.total -= 1;
  if (row.total <= 0) state.batches.delete(id);
}

function count(table, name, status, delta) {
  const row = table[name] || (table[name] = {});
  row[status] = Math.max(0, (row[status] || 0) + delta);
}

function onJob({ change, job }) {
  const move = change === "deleted" ? [job.status, null] : MOVES[change];
  if (move) {
    onBatch(job, move);
    const type = typeName(job.type);
    for (const [status, delta] of [[move[0], -1], [move[1], 1]]) {
      if (!status) continue;
      state.jobs[status] = Math.max(0, (state.jobs[status] || 0) + delta);
      count(state.types, type, status, delta);
      count(state.priorities, job.priority, status, delta);
    }
  }
  if (change === "done") {
    state.done.push(Date.now());
  }
  if (state.failures.has(job.key)) state.failures.delete(job.key);
  if (change === "failed") state.failures = new Map([[job.key, job], ...[...state.failures].slice(0, 999)]);

  const index = state.page.findIndex((row) => row.key === job.key);
  if (change === "deleted") {
    if (index >= 0) state.page.splice(index, 1);
  } else if (index >= 0) {
    state.page[index] = job;
  } else if (change === "submitted" && !state.next && matches(job)) {
    if (state.page.length < PAGE) state.page.push(job);
    else state.next = jobsURL() + "&after=" + encodeURIComponent(state.page[state.page.length - 1].key);
  }
  for (const worker of state.workers.values()) {
    if (worker.state === "disconnected") continue;
    if (change === "started" && worker.uid === job.worker_id && !worker.job) {
      worker.job = job.key;
      worker.progress = null;
    } else if (worker.job === job.key) {
      if (change === "progress") worker.progress = job.progress;
      else if (change !== "started") {
        worker.job = null;
        worker.progress = null;
        if (change === "done") worker.jobs_done += 1;
        if (change === "failed" || change === "attempt_failed") worker.jobs_failed += 1;
      }
    }
  }
}

function matches(job) {
  const f = state.filter;
  return (!f.status || job.status === f.status)
    && (!f.priority || job.priority === f.priority)
    && (!f.type || (f.type === "null" ? job.type === null : job.type === f.type));
}

// A type was paused, drained or resumed (here, elsewhere, or on another instance).
function onTypeState({ type, state: typeState }) {
  state.typeStates[typeName(type)] = typeState;
}

function onWorker({ change, worker }) {
  state.workers.set(worker.id, worker);
  if (change === "left") {
    setTimeout(() => {
      const now = state.workers.get(worker.id);
      if (now && now.state === "disconnected") { state.workers.delete(worker.id); render(); }
    }, GONE_AFTER);
  }
}

// Drawing

let drawing = false;
function render() {
  if (!drawing) { drawing = true; requestAnimationFrame(() => { drawing = false; draw(); }); }
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value;
    else if (name === "onclick") node.addEventListener("click", value);
    else node.setAttribute(name, value);
  }
  for (const child of children) if (child !== null) node.append(child);
  return node;
}

function fill(tbody, rows) { tbody.replaceChildren(...rows); }
const td = (text, attributes = {}) => el("td", Object.assign({ text: text === null || text === undefined ? "" : String(text) }, attributes));
const when = (stamp) => stamp ? new Date(stamp).toLocaleString() : "";

function bar(progress) {
  if (!progress) return null;
  const meter = el("progress", { max: "100" });
  if (progress.percent !== null) meter.value = progress.percent;
  const label = progress.percent !== null ? Math.round(progress.percent) + "%" : "";
  return el("span", {}, meter, " " + label);
}

function draw() {
  $("#counts").replaceChildren(...STATUSES.map((s) =>
    el("div", { class: "card status-" + s, "data-status": s }, el("b", { text: state.jobs[s] || 0 }), s)));
  // Every configured type, in order, with or without jobs; then any other that has jobs.
  const names = [...state.typeNames, ...Object.keys(state.types).filter((t) => !state.typeNames.includes(t))];
  fill($("#types tbody"), names.map((type) => {
    const c = state.types[type] || {};
    const total = STATUSES.reduce((sum, s) => sum + (c[s] || 0), 0);
    const meter = el("progress", { max: String(total || 1) });
    meter.value = (c.done || 0);
    const typeState = state.typeStates[type] || "active";
    // Each button is there always, disabled where the type already is in its state.
    const button = (action, text, target) => el("button", Object.assign(
      { class: "small " + action, text, onclick: () => setTypeState(type, action) },
      typeState === target ? { disabled: "" } : {}));
    return el("tr", { "data-type": type, class: "type-" + typeState }, td(type === "null" ? "(untyped)" : type),
      td(typeState, { class: "type-state" }), ...STATUSES.map((s) => td(c[s] || 0)),
      el("td", {}, meter, " " + (c.done || 0) + " / " + total),
      el("td", { class: "actions" }, button("pause", "Pause", "paused"), " ", button("drain", "Drain", "draining"), " ",
        button("resume", "Resume", "active")));
  }));
  const batches = [...state.batches.values()].sort((a, b) =>
    typeName(a.type).localeCompare(typeName(b.type)) || b.batch - a.batch);
  fill($("#batches tbody"), batches.map((b) => {
    const meter = el("progress", { max: String(b.total || 1) });
    meter.value = b.done;
    return el("tr", { "data-batch": batchId(b.type, b.batch) },
      td(b.type === null ? "(untyped)" : b.type), td(b.batch),
      el("td", { class: "progress" }, meter, " " + b.done + " / " + b.total),
      td(b.failed ? b.failed + " failed" : "", { class: b.failed ? "status-failed" : "" }));
  }));
  fill($("#priorities tbody"), Object.entries(state.priorities).map(([p, c]) =>
    el("tr", {}, td(p), ...STATUSES.map((s) => td(c[s] || 0)))));
  drawChart();
  drawWorkers();
  drawFailures();
  drawJobs();
}

function drawChart() {
  const now = Date.now();
  state.done = state.done.filter((t) => t > now - BARS * BUCKET);
  const bars = new Array(BARS).fill(0);
  for (const t of state.done) bars[Math.min(BARS - 1, BARS - 1 - Math.floor((now - t) / BUCKET))] += 1;
  const top = Math.max(1, ...bars);
  const svg = $("#chart");
  svg.replaceChildren(...bars.map((n, i) => {
    const rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    const height = 78 * n / top;
    rect.setAttribute("x", i * 5);
    rect.setAttribute("width", 4);
    rect.setAttribute("y", 80 - height);
    rect.setAttribute("height", height);
    return rect;
  }));
  // The rate over the last 5 minutes, or since the page loaded, but over a
  // minute at least, so that the first few jobs do not promise too much.
  const span = Math.max(60e3, Math.min(5 * 60e3, now - state.since));
  const recent = state.done.filter((t) => t > now - span).length;
  const perMinute = recent * 60e3 / span;
  const left = (state.jobs.pending || 0) + (state.jobs.running || 0);
  let drain = "queue empty";
  if (left) drain = perMinute ? "about " + duration(left / perMinute * 60) + " to drain" : "not draining yet";
  $("#drain").textContent = perMinute.toFixed(1) + " jobs/min; " + left + " to go, " + drain;
}

function duration(seconds) {
  if (seconds < 90) return Math.round(seconds) + " s";
  if (seconds < 5400) return Math.round(seconds / 60) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}

function drawWorkers() {
  const rows = [...state.workers.values()].map((w) => el("tr", { class: w.state === "disconnected" ? "gone" : "", "data-worker": w.uid || "" },
    td(w.name), td(w.uid), td(w.address), td(w.type === null ? "" : w.type),
    td(w.state, { class: "state" }),
    el("td", { class: "info" }, w.job ? w.job + " " : "", bar(w.progress), w.progress && w.progress.info ? " " + w.progress.info : ""),
    td(w.jobs_done), td(w.jobs_failed), td(when(w.connected_at))));
  fill($("#workers tbody"), rows);
}

function drawFailures() {
  const groups = new Map();
  for (const job of state.failures.values()) {
    const info = (job.error && job.error.info) || "";
    if (!groups.has(info)) groups.set(info, []);
    groups.get(info).push(job);
  }
  const latest = (jobs) => jobs.reduce((a, b) => (a.ended || "") > (b.ended || "") ? a : b);
  const sorted = [...groups.entries()].sort((a, b) => (latest(b[1]).ended || "").localeCompare(latest(a[1]).ended || ""));
  $("#failures").replaceChildren(...sorted.slice(0, 20).map(([info, jobs]) => {
    const last = latest(jobs);
    return el("div", { class: "group" },
      el("strong", { text: info || "(no info)" }), " — " + jobs.length + " job" + (jobs.length === 1 ? "" : "s") + " ",
      el("button", { class: "small retry-group", text: "Retry all", onclick: () => retryGroup(info) }),
      el("div", { class: "keys", text: jobs.slice(0, 10).map((j) => j.key).join(", ") + (jobs.length > 10 ? ", …" : "") }),
      el("pre", { class: "logs", text: (last.error && last.error.logs) || "(no logs)" }));
  }));
}

function drawJobs() {
  fill($("#jobs tbody"), state.page.map((job) => {
    const key = encodeURIComponent(job.key);
    const actions = el("td", {},
      el("a", { href: "api/jobs/" + key, text: "view" }), " ",
      el("a", { href: "api/jobs/" + key + "/payload", text: "payload" }), " ",
      job.status === "done" ? el("a", { href: "api/jobs/" + key + "/result", text: "result" }) : null, " ",
      job.status === "failed" ? el("button", { class: "small retry", text: "Retry", onclick: () => act("api/jobs/" + key + "/retry", "POST") }) : null, " ",
      el("button", { class: "small delete", text: "Delete", onclick: () => act("api/jobs/" + key, "DELETE") }));
    return el("tr", { "data-key": job.key },
      td(job.key), td(job.type === null ? "" : job.type), td(job.priority),
      td(job.status, { class: "status status-" + job.status }),
      el("td", { class: "info" }, bar(job.progress), job.progress && job.progress.info ? " " + job.progress.info : ""),
      td(job.worker_name || ""), td(when(job.submitted)), td(job.failure_count), actions);
  }));
  $("#next-page").disabled = !state.next;
}

// Acting

async function act(path, method) {
  try { await api(path, { method }); $("#problem").textContent = ""; } catch (e) { show(e); }
}

// Pause, drain or resume a type; its new state shows from the answer (and from its type event).
async function setTypeState(type, action) {
  try {
    const response = await api("api/" + action + (type === "null" ? "" : "/" + encodeURIComponent(type)), { method: "POST" });
    onTypeState(await response.json());
    $("#problem").textContent = "";
    render();
  } catch (e) { show(e); }
}

// Every failed job with this error info, the ones not loaded here too, in one request.
function retryGroup(info) {
  return act("api/jobs/retry?" + new URLSearchParams({ status: "failed", info }), "POST");
}

$("#retry-failed").addEventListener("click", () => act("api/jobs/retry?status=failed", "POST"));
$("#filter").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = event.target;
  state.filter = { status: form.status.value, type: form.type.value.trim(), priority: form.priority.value };
  loadPage(jobsURL()).catch(show);
});
$("#next-page").addEventListener("click", () => state.next && loadPage(state.next).catch(show));
$("#first-page").addEventListener("click", () => loadPage(jobsURL()).catch(show));

start().catch((e) => { setLive("down", "down"); show(e); $("#main").hidden = false; });
