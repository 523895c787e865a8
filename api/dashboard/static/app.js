// aetrain dashboard: a single page routed by the URL's fragment (#/jobs, #/jobs/12, ...).
// It is a plain client of the public /v1 API: every call carries the API key the user signed
// in with, as `Authorization: Bearer`, and sees only that key's tenant.
"use strict";

const KEY_STORE = "aetrain.apiKey";
const TERMINAL = ["succeeded", "failed", "cancelled"];
const MAX_POINTS = 2000; // per series on a chart: min and max of 1000 buckets
const REFRESH_MS = 3000;
const COLORS = ["#2458c6", "#d9480f", "#2b8a3e", "#862e9c", "#c92a2a", "#0b7285", "#e67700", "#5c940d"];

// ---------------------------------------------------------------- DOM helpers

/** An element with attributes (on* as listeners) and children (strings become text). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(name, value === true ? "" : value);
  }
  appendAll(el, children);
  return el;
}

/** Replace the element's children (arrays flattened; null, undefined and false skipped). */
function fill(el, ...children) {
  el.replaceChildren();
  appendAll(el, children);
}

/** Append children (nested arrays flattened; strings as text; null, undefined, false skipped). */
function appendAll(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child !== undefined && child !== null && child !== false) el.append(child instanceof Node ? child : String(child));
  }
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs || {})) el.setAttribute(name, value);
  appendAll(el, children);
  return el;
}

const fmt = (x, digits = 3) => (x === null || x === undefined || Number.isNaN(x) ? "—" : Number(x).toFixed(digits));
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "—");
const badge = (state) => h("span", { class: `badge state-${state}` }, state);

function progressBar(done, total) {
  const fraction = total ? Math.min(1, done / total) : 0;
  return h("span", { class: "row", style: "gap:6px" },
    h("span", { class: "bar" }, h("span", { style: `width:${(100 * fraction).toFixed(1)}%` })),
    h("span", { class: "muted" }, total ? `${done} / ${total}` : `${done}`));
}

// ---------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : describeDetail(detail));
    this.status = status;
    this.detail = detail;
  }
}

function describeDetail(detail) {
  if (!Array.isArray(detail)) return JSON.stringify(detail);
  return detail.map((e) => `${(e.loc || []).join(".")}: ${e.msg}`).join("\n");
}

const apiKey = () => sessionStorage.getItem(KEY_STORE);

/** Call the API; JSON back (or the Response for other types). A 4xx/5xx throws ApiError. */
async function api(method, path, body, signal) {
  const headers = { Authorization: `Bearer ${apiKey()}` };
  let payload = body;
  if (body !== undefined && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const answer = await fetch(path, { method, headers, body: payload, signal });
  if (answer.status === 401) {
    signOut("The API key was refused (missing, unknown or revoked). Sign in again.");
    throw new ApiError(401, "unauthorized");
  }
  if (!answer.ok) {
    let detail = `${answer.status} ${answer.statusText}`;
    let report;
    try {
      const json = await answer.json();
      detail = json.detail ?? detail;
      report = json.report;
    } catch { /* not JSON: keep the status line */ }
    const error = new ApiError(answer.status, detail);
    error.report = report;
    throw error;
  }
  if (answer.status === 204) return null;
  return (answer.headers.get("content-type") || "").includes("json") ? answer.json() : answer;
}

const get = (path, signal) => api("GET", path, undefined, signal);

/** Every row of a job's metrics for `keys`, page by page (the endpoint's own paging). */
async function allMetrics(jobId, keys, signal) {
  const rows = [];
  let since = -1;
  while (since !== null) {
    const q = new URLSearchParams({ since_step: since, limit: 10000 });
    if (keys) q.set("keys", keys.join(","));
    const page = await get(`/v1/jobs/${jobId}/metrics?${q}`, signal);
    rows.push(...page.data);
    since = page.next_since_step;
  }
  return rows;
}

/** Read the job's SSE stream with fetch (EventSource cannot send the Authorization header),
 * calling onEvent(name, data, id) per event; resumes with Last-Event-ID after a network drop.
 * Returns when the stream sends `end` or `signal` aborts. */
async function followEvents(jobId, onEvent, signal) {
  let lastId = 0;
  for (let attempt = 0; attempt < 20 && !signal.aborted; attempt++) {
    try {
      const answer = await fetch(`/v1/jobs/${jobId}/events`, {
        headers: { Authorization: `Bearer ${apiKey()}`, Accept: "text/event-stream", "Last-Event-ID": String(lastId) },
        signal,
      });
      if (!answer.ok) throw new ApiError(answer.status, answer.statusText);
      const reader = answer.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const event = parseEvent(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
          if (!event) continue;
          if (event.id) lastId = Number(event.id);
          onEvent(event.name, event.data);
          if (event.name === "end") return;
        }
      }
    } catch (error) {
      if (signal.aborted || (error instanceof ApiError && error.status < 500)) return;
    }
    await sleep(1000, signal);
  }
}

/** One SSE event block (`event:`, `data:`, `id:` lines) as {name, data, id}; null for comments. */
function parseEvent(block) {
  let name = "message", id = null;
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") name = value;
    else if (field === "data") data.push(value);
    else if (field === "id") id = value;
  }
  if (!data.length) return null;
  const text = data.join("\n");
  try { return { name, id, data: JSON.parse(text) }; } catch { return { name, id, data: text }; }
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
});

/** Download a file the API serves behind the key: fetch with the header, save the Blob. */
async function download(path, filename) {
  const answer = await api("GET", path);
  const url = URL.createObjectURL(await answer.blob());
  const link = h("a", { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// ---------------------------------------------------------------- metric series and charts

/** Metric rows by key, each as steps and values in step order. */
class MetricStore {
  constructor() { this.series = new Map(); }

  add(rows) {
    for (const row of rows) {
      let s = this.series.get(row.key);
      if (!s) this.series.set(row.key, (s = { steps: [], values: [] }));
      // A rolled-back job trains steps again: its rows replace the ones from that step on.
      while (s.steps.length && s.steps[s.steps.length - 1] >= row.step) { s.steps.pop(); s.values.pop(); }
      s.steps.push(row.step);
      s.values.push(row.value);
    }
  }

  count(key) { return this.series.get(key)?.steps.length ?? 0; }
}

/** At most `MAX_POINTS` points of a series: the min and max of each of equal step buckets,
 * so spikes (a diverging loss) stay visible however long the run. */
function downsample(steps, values, limit = MAX_POINTS) {
  if (steps.length <= limit) return [steps, values];
  const buckets = Math.floor(limit / 2);
  const xs = [], ys = [];
  const size = steps.length / buckets;
  for (let b = 0; b < buckets; b++) {
    const start = Math.floor(b * size), stop = Math.floor((b + 1) * size);
    let lo = -1, hi = -1;
    for (let i = start; i < stop; i++) {
      const v = values[i];
      if (v === null) continue;
      if (lo < 0 || v < values[lo]) lo = i;
      if (hi < 0 || v > values[hi]) hi = i;
    }
    if (lo < 0) continue;
    for (const i of lo <= hi ? [lo, hi] : [hi, lo]) {
      if (xs.length && xs[xs.length - 1] === steps[i]) continue;
      xs.push(steps[i]);
      ys.push(values[i]);
    }
  }
  return [xs, ys];
}

/** A tick's label: 3 significant digits, exponent form for very small or large values. */
function tickLabel(value) {
  if (value === null || value === undefined) return "";
  if (value === 0) return "0";
  const size = Math.abs(value);
  return size < 1e-3 || size >= 1e5 ? value.toExponential(1) : String(Number(value.toPrecision(3)));
}

/** A uPlot chart of several series (each its own steps), joined on the step axis. */
class Chart {
  constructor(title, series, { log = false, id } = {}) {
    this.series = series; // [{label, color, width?, dash?}]
    this.log = log;
    this.count = h("span", { class: "muted" }, "");
    this.body = h("div", {}, h("div", { class: "empty" }, "no points yet"));
    this.el = h("div", { class: "chart", dataset: { chart: id || title, points: "0" } }, h("h3", {}, title, this.count), this.body);
    this.plot = null;
  }

  /** tables: per series [steps, values] (any lengths); total: raw points behind them. */
  setData(tables, total) {
    this.el.dataset.points = String(total);
    this.count.textContent = total ? `${total.toLocaleString()} points` : "";
    const present = tables.some(([xs]) => xs.length);
    if (!present || typeof uPlot === "undefined") return;
    const data = uPlot.join(tables.map(([xs, ys]) => [xs, ys]));
    if (!this.plot) {
      fill(this.body);
      this.plot = new uPlot(this.options(), data, this.body);
    } else {
      this.plot.setData(data);
    }
  }

  options() {
    const width = Math.max(320, (this.el.clientWidth || 560) - 16);
    return {
      width, height: 220,
      scales: { x: { time: false }, y: this.log ? { distr: 3 } : {} },
      axes: [{ label: "iteration" }, { size: 60, values: (u, ticks) => ticks.map(tickLabel) }],
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
      series: [{ label: "iteration" }, ...this.series.map((s) => ({
        label: s.label, stroke: s.color, width: s.width ?? 1.5, dash: s.dash, spanGaps: true,
        points: { show: s.points ?? false },
      }))],
    };
  }
}

/** Charts of one job's curves, fed by a MetricStore and redrawn at most a few times a second. */
class JobCharts {
  constructor(store) {
    this.store = store;
    this.definitions = [
      { id: "loss", title: "Loss", keys: ["loss", "loss_box", "loss_obj", "loss_cls"], log: true },
      { id: "lr", title: "Learning rate", keys: ["lr"] },
      { id: "ae_alpha", title: "AE alpha", keys: ["ae_alpha"] },
      { id: "val", title: "Validation AP", keys: ["val/AP", "val/AP50"], points: true },
    ];
    this.charts = this.definitions.map((d) => new Chart(d.title, d.keys.map((key, i) => (
      { label: key, color: COLORS[i], width: i ? 1 : 2, points: d.points })), { log: d.log, id: d.id }));
    this.el = h("div", { class: "charts" }, this.charts.map((c) => c.el));
    this.pending = false;
  }

  redraw() {
    if (this.pending) return;
    this.pending = true;
    setTimeout(() => {
      this.pending = false;
      this.definitions.forEach((d, i) => {
        const tables = d.keys.map((key) => {
          const s = this.store.series.get(key);
          return s ? downsample(s.steps, s.values) : [[], []];
        });
        this.charts[i].setData(tables, d.keys.reduce((n, key) => n + this.store.count(key), 0));
      });
    }, 250);
  }
}

// ---------------------------------------------------------------- routing and pages

let page = new AbortController(); // aborted when the user leaves the page

const routes = [
  [/^#\/jobs\/(\d+)$/, jobPage],
  [/^#\/jobs$/, jobsPage],
  [/^#\/comparisons\/(\d+)$/, comparisonPage],
  [/^#\/comparisons$/, comparisonsPage],
  [/^#\/submit$/, submitPage],
  [/^#\/datasets\/(\d+)$/, datasetPage],
  [/^#\/datasets$/, datasetsPage],
  [/^#\/models\/(.+)$/, modelPage],
  [/^#\/models$/, modelsPage],
  [/^#\/signin$/, signInPage],
];

async function route() {
  page.abort();
  page = new AbortController();
  const [path, query] = (location.hash || "#/jobs").split("?");
  const signedIn = Boolean(apiKey());
  document.getElementById("nav").hidden = !signedIn;
  if (!signedIn && path !== "#/signin") { location.hash = "#/signin"; return; }
  const found = routes.find(([pattern]) => pattern.test(path));
  if (!found) { location.hash = "#/jobs"; return; }
  const [pattern, render] = found;
  const args = path.match(pattern).slice(1).map(decodeURIComponent);
  // Each visit renders into a fresh element: a page still finishing after the user left
  // writes into its own, detached one.
  const root = h("div");
  fill(document.getElementById("app"), root);
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", path.startsWith(link.getAttribute("href")));
  }
  const signal = page.signal; // this page's: a later route() replaces `page`
  try {
    await render(root, signal, new URLSearchParams(query || ""), ...args);
  } catch (error) {
    if (signal.aborted || error.status === 401) return;
    fill(root, h("h1", {}, "Something went wrong"), h("div", { class: "error" }, error.message));
  }
}

/** Run `fn` now and every `ms` until the page is left or `fn` returns false. */
async function every(ms, signal, fn) {
  while (!signal.aborted) {
    try {
      if ((await fn()) === false) return;
    } catch (error) {
      if (signal.aborted || error.status === 401) return;
      throw error;
    }
    await sleep(ms, signal);
  }
}

function signOut(message) {
  sessionStorage.removeItem(KEY_STORE);
  sessionStorage.setItem("aetrain.signInMessage", message || "");
  location.hash = "#/signin";
}

async function signInPage(root) {
  const message = sessionStorage.getItem("aetrain.signInMessage");
  sessionStorage.removeItem("aetrain.signInMessage");
  const input = h("input", { type: "password", name: "api_key", placeholder: "aet_…", autocomplete: "off", required: true });
  const error = h("div", { class: "form-error", hidden: !message }, message || "");
  const form = h("form", { class: "card signin", onsubmit: async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    const answer = await fetch("/v1/jobs?limit=1", { headers: { Authorization: `Bearer ${key}` } });
    if (answer.ok) {
      sessionStorage.setItem(KEY_STORE, key);
      location.hash = "#/jobs";
    } else {
      error.hidden = false;
      error.textContent = answer.status === 401 ? "This API key was refused: unknown or revoked." : `The API answered ${answer.status}.`;
    }
  } },
  h("h1", {}, "Sign in"),
  h("p", { class: "muted" }, "Paste an API key (`aetrain keys create TENANT` prints one; `aetrain serve` prints a sign-in link for the local key). It is kept in this browser tab only."),
  input, error, h("button", { type: "submit" }, "Sign in"));
  fill(root, form);
  input.focus();
}

// ---- jobs

function aeSummary(ae) {
  if (!ae) return "none";
  const layers = ae.layers;
  const where = typeof layers === "object" && !Array.isArray(layers) ? `stride ${layers.stride}` : `layer ${[layers].flat().join(",")}`;
  return `${where}, ${ae.schedule || "cosine"}${ae.mode && ae.mode !== "excite" ? `, ${ae.mode}` : ""}`;
}

/** The job's final AP (its result's, when it has one). */
function jobAP(job) {
  const r = job.result || {};
  const value = r.AP ?? r["val/AP"] ?? r.metrics?.AP;
  return typeof value === "number" ? value : null;
}

async function jobsPage(root, signal, query) {
  const state = query.get("state") || "";
  const filter = h("select", { name: "state", onchange: (e) => { location.hash = e.target.value ? `#/jobs?state=${e.target.value}` : "#/jobs"; } },
    ["", "queued", "running", "succeeded", "failed", "cancelled"].map((s) => h("option", { value: s, selected: s === state }, s || "all states")));
  const body = h("tbody");
  const count = h("span", { class: "muted" });
  fill(root, 
    h("div", { class: "row" }, h("h1", {}, "Jobs"), filter, count, h("a", { href: "#/submit" }, "Submit a job…")),
    h("table", { id: "jobs" }, h("thead", {}, h("tr", {}, ["Job", "State", "Model", "Dataset", "AE", "Progress", "AP", "Comparison", "Created"].map((t) => h("th", {}, t)))), body));
  await every(REFRESH_MS, signal, async () => {
    const q = new URLSearchParams({ limit: 200 });
    if (state) q.set("state", state);
    const jobs = await get(`/v1/jobs?${q}`, signal);
    count.textContent = `${jobs.count} job${jobs.count === 1 ? "" : "s"}`;
    fill(body, ...jobs.data.map((job) => h("tr", { dataset: { job: job.id } },
      h("td", {}, h("a", { href: `#/jobs/${job.id}` }, `#${job.id}`), job.spec.name ? ` ${job.spec.name}` : ""),
      h("td", {}, badge(job.state)),
      h("td", {}, String(job.spec.model)),
      h("td", {}, h("a", { href: `#/datasets/${job.spec.dataset_id}` }, `#${job.spec.dataset_id}`)),
      h("td", {}, aeSummary(job.spec.ae)),
      h("td", {}, progressBar(job.iteration, job.max_batches)),
      h("td", { class: "num" }, fmt(jobAP(job))),
      h("td", {}, job.comparison_id ? h("a", { href: `#/comparisons/${job.comparison_id}` }, `#${job.comparison_id} ${job.arm} s${job.seed}`) : ""),
      h("td", {}, when(job.created_at)))));
    if (!jobs.data.length) body.append(h("tr", {}, h("td", { colspan: 9, class: "muted" }, "No jobs yet: submit one.")));
  });
}

async function jobPage(root, signal, _query, id) {
  const store = new MetricStore();
  const charts = new JobCharts(store);
  const header = h("div", { class: "card", id: "job-header" });
  const log = h("tbody");
  const checkpoints = h("div", { id: "checkpoints" });
  const config = h("pre", { id: "resolved" });
  fill(root, h("h1", {}, `Job #${id}`), header, charts.el,
    h("h2", {}, "Checkpoints"), checkpoints,
    h("h2", {}, "Event log"), h("table", { id: "event-log" }, h("thead", {}, h("tr", {}, h("th", {}, "At"), h("th", {}, "State"), h("th", {}, "Message"))), log),
    h("h2", {}, "Resolved configuration"), config);

  let job = await get(`/v1/jobs/${id}`, signal);
  const refresh = async () => {
    const [events, cps] = await Promise.all([get(`/v1/jobs/${id}/log`, signal), get(`/v1/jobs/${id}/checkpoints`, signal)]);
    renderJobHeader(header, job, () => reload());
    fill(log, ...events.data.map((e) => h("tr", {}, h("td", {}, when(e.at)), h("td", {}, badge(e.state)), h("td", {}, e.message))));
    fill(checkpoints, renderCheckpoints(job.id, cps.data));
    config.textContent = JSON.stringify({ spec: job.spec, resolved: job.resolved }, null, 2);
  };
  const reload = async () => { job = await get(`/v1/jobs/${id}`, signal); await refresh(); };
  await refresh();

  // The history from the metric pages (10,000 rows a request), then for a live job the SSE
  // stream, which starts again from the first row: what the pages gave is skipped.
  const keys = new Set(charts.definitions.flatMap((d) => d.keys));
  store.add(await allMetrics(id, [...keys], signal));
  charts.redraw();
  if (TERMINAL.includes(job.state)) return;
  const loaded = new Map([...store.series].map(([key, s]) => [key, s.steps[s.steps.length - 1]]));
  let lastRefresh = 0;
  await followEvents(id, (name, rows) => {
    if (name === "metrics") {
      const data = rows.filter((row) => keys.has(row.key) && !(row.step <= loaded.get(row.key)));
      store.add(data);
      charts.redraw();
      // A training row's step is the iteration it ended.
      for (const row of data) if (row.key === "loss") job.iteration = Math.max(job.iteration, row.step);
      if (Date.now() - lastRefresh > 2000) { lastRefresh = Date.now(); renderJobHeader(header, job, reload); }
    } else if (name === "state" || name === "end") {
      reload().catch(() => {});
    }
  }, signal);
  if (!signal.aborted) await reload();
}

function renderJobHeader(header, job, reload) {
  const active = !TERMINAL.includes(job.state);
  const cancel = h("button", { class: "danger", id: "cancel", disabled: !active || job.cancel_requested, onclick: async () => {
    cancel.disabled = true;
    try { await api("POST", `/v1/jobs/${job.id}/cancel`); } catch (error) { alert(error.message); }
    await reload();
  } }, job.cancel_requested && active ? "Cancelling…" : "Cancel");
  const resolved = job.resolved || {};
  fill(header, 
    h("div", { class: "row" }, h("span", { id: "job-state" }, badge(job.state)), progressBar(job.iteration, job.max_batches),
      h("span", {}, `model ${job.spec.model}`), h("a", { href: `#/datasets/${job.spec.dataset_id}` }, `dataset #${job.spec.dataset_id}`),
      h("span", {}, `AE: ${aeSummary(job.spec.ae)}`), jobAP(job) !== null ? h("strong", {}, `AP ${fmt(jobAP(job))}`) : null,
      job.comparison_id ? h("a", { href: `#/comparisons/${job.comparison_id}` }, `comparison #${job.comparison_id} (${job.arm}, seed ${job.seed})`) : null,
      active ? cancel : null),
    job.failure_reason ? h("div", { class: "error" }, job.failure_reason) : null,
    (resolved.warnings || []).map((w) => h("div", { class: "notice" }, `warning: ${w}`)),
    (resolved.notes || []).map((n) => h("div", { class: "muted" }, `note: ${n}`)));
}

function renderCheckpoints(jobId, checkpoints) {
  if (!checkpoints.length) return h("p", { class: "muted" }, "No checkpoint written yet.");
  return h("table", {}, h("thead", {}, h("tr", {}, ["Checkpoint", "Iteration", "Metrics", "Download"].map((t) => h("th", {}, t)))),
    h("tbody", {}, checkpoints.map((cp) => h("tr", {},
      h("td", {}, cp.name), h("td", { class: "num" }, cp.iteration),
      h("td", {}, Object.entries(cp.metrics || {}).slice(0, 4).map(([k, v]) => `${k} ${typeof v === "number" ? fmt(v) : v}`).join(", ")),
      h("td", {}, Object.entries(cp.formats).map(([format, file]) => h("button", {
        class: "secondary", dataset: { download: `${cp.name}.${format}` },
        onclick: () => download(`/v1/jobs/${jobId}/checkpoints/${cp.name}?format=${format}`, `job${jobId}-${cp.name}.${format}`).catch((e) => alert(e.message)),
      }, `.${format} (${(file.size / 2 ** 20).toFixed(1)} MiB)`)))))));
}

// ---- comparisons

async function comparisonsPage(root, signal) {
  const body = h("tbody");
  fill(root, h("div", { class: "row" }, h("h1", {}, "Comparisons"), h("a", { href: "#/submit?kind=comparison" }, "Start a comparison…")),
    h("table", { id: "comparisons" }, h("thead", {}, h("tr", {}, ["Comparison", "Arms", "Seeds", "Progress", "Verdict", "Created"].map((t) => h("th", {}, t)))), body));
  await every(REFRESH_MS, signal, async () => {
    const list = await get("/v1/comparisons?limit=100", signal);
    fill(body, ...list.data.map((c) => h("tr", {},
      h("td", {}, h("a", { href: `#/comparisons/${c.id}` }, `#${c.id}`), c.name ? ` ${c.name}` : ""),
      h("td", {}, c.spec.arms.map((a) => a.name).join(" vs ")),
      h("td", {}, describeSeeds(c.spec.seeds)),
      h("td", {}, progressBar(finished(c.progress), c.progress.total)),
      h("td", {}, Object.values(c.summary?.verdicts || {}).join(" ") || h("span", { class: "muted" }, "when its jobs finish")),
      h("td", {}, when(c.created_at)))));
    if (!list.data.length) body.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No comparisons yet.")));
  });
}

const finished = (progress) => TERMINAL.reduce((n, s) => n + (progress[s] || 0), 0);

/** A comparison's seeds as asked: a list, or seeds added in rounds until decided. */
function describeSeeds(seeds) {
  return Array.isArray(seeds) ? seeds.join(", ") : `${seeds.min} to ${seeds.max}, until decided`;
}

/** The seeds a comparison's jobs have so far, in order. */
const seedsOf = (c) => [...new Set(c.jobs.map((j) => j.seed))].sort((a, b) => a - b);

/** Whether the comparison may still change: jobs run, or (seeds until decided) a round may
 * be added. */
const comparisonActive = (c) => (c.status ? c.status === "running" : finished(c.progress) < c.progress.total);

async function comparisonPage(root, signal, _query, id) {
  const head = h("div", { class: "card", id: "comparison-progress" });
  const verdicts = h("div", { id: "verdicts" });
  const table = h("div", { id: "arms-by-seeds" });
  const forest = h("div", { id: "forest" });
  const curves = h("div", { id: "curves" });
  const text = h("pre", { id: "comparison-table" });
  fill(root, h("h1", {}, `Comparison #${id}`), head, h("h2", {}, "Verdict"), verdicts,
    h("h2", {}, "Arms × seeds"), table, h("h2", {}, "Paired differences (95% CI, AP points)"), forest,
    h("h2", {}, "Learning curves"), curves, h("h2", {}, "Table"), text);
  let drawnFinished = -1;
  await every(REFRESH_MS, signal, async () => {
    const c = await get(`/v1/comparisons/${id}`, signal);
    const done = finished(c.progress);
    fill(head, h("div", { class: "row" }, c.name ? h("strong", {}, c.name) : null, progressBar(done, c.progress.total),
      h("span", { class: "muted" }, Object.entries(c.progress).filter(([k, n]) => k !== "total" && n).map(([k, n]) => `${n} ${k}`).join(", ")),
      h("span", {}, `reference arm: ${c.reference}`), c.status ? badge(c.status) : null,
      h("span", { class: "muted" }, `seeds: ${describeSeeds(c.spec.seeds)}`)),
      c.warnings.map((w) => h("div", { class: "notice" }, w)), c.notes.map((n) => h("div", { class: "muted" }, n)));
    const summary = c.summary;
    fill(verdicts, ...(summary ? Object.entries(summary.verdicts).map(([, v]) => h("p", { class: "verdict" }, v))
      : [h("p", { class: "muted" }, `The verdict comes when every job has finished (${done} of ${c.progress.total} so far).`)]));
    fill(table, armsBySeeds(c));
    fill(forest, summary ? forestPlot(summary) : h("p", { class: "muted" }, "—"));
    text.textContent = c.table || "";
    if (done !== drawnFinished) { // the curves change as jobs finish; redrawn then, not every poll
      drawnFinished = done;
      fill(curves, await learningCurves(c, signal));
    }
    return comparisonActive(c);
  });
}

function armsBySeeds(c) {
  const seeds = seedsOf(c);
  const headline = c.summary?.headline || "AP";
  const stats = c.summary?.metrics?.[headline]?.arms || {};
  const byCell = new Map(c.jobs.map((j) => [`${j.arm}/${j.seed}`, j]));
  const points = (x) => fmt(typeof x === "number" ? 100 * x : null, 2);
  return h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Arm"), seeds.map((s) => h("th", {}, `seed ${s}`)), h("th", { class: "num" }, `${headline} (points) mean ± std`))),
    h("tbody", {}, c.spec.arms.map((arm) => h("tr", {}, h("td", {}, arm.name, arm.name === c.reference ? h("span", { class: "muted" }, " (reference)") : ""),
      seeds.map((seed) => {
        const job = byCell.get(`${arm.name}/${seed}`);
        const value = stats[arm.name]?.per_seed?.[String(seed)];
        return h("td", {}, job ? h("a", { href: `#/jobs/${job.id}` }, badge(job.state)) : "—", " ",
          typeof value === "number" ? points(value) : job && !TERMINAL.includes(job.state) ? progressBar(job.iteration, job.max_batches) : "");
      }),
      h("td", { class: "num" }, stats[arm.name] ? `${points(stats[arm.name].mean)} ± ${points(stats[arm.name].std)}` : "—")))));
}

/** Each metric's paired difference (arm − reference) with its CI, in AP points (×100). */
function forestPlot(summary) {
  const rows = [];
  for (const [metric, m] of Object.entries(summary.metrics)) {
    for (const [arm, d] of Object.entries(m.differences)) {
      if (d.mean === null) continue;
      rows.push({ label: `${metric}: ${arm} − ${d.reference}`, mean: 100 * d.mean, ci: d.ci ? d.ci.map((x) => (x === null ? null : 100 * x)) : null, p: d.p_value });
    }
  }
  if (!rows.length) return h("p", { class: "muted" }, "No paired seeds to compare yet.");
  const ends = rows.flatMap((r) => [r.mean, ...(r.ci || [])]).filter((x) => x !== null);
  const span = Math.max(0.5, ...ends.map(Math.abs)) * 1.1;
  const [width, left, right, rowH] = [860, 220, 250, 24];
  const x = (v) => left + ((v + span) / (2 * span)) * (width - left - right);
  const height = rowH * rows.length + 30;
  const sign = (v) => (v >= 0 ? "+" : "") + v.toFixed(2);
  return svg("svg", { class: "forest", width, height, viewBox: `0 0 ${width} ${height}` },
    svg("line", { class: "zero", x1: x(0), x2: x(0), y1: 4, y2: height - 24 }),
    svg("line", { class: "axis", x1: left, x2: width - right, y1: height - 22, y2: height - 22 }),
    [-span, 0, span].map((v) => svg("text", { x: x(v), y: height - 6, "text-anchor": "middle" }, sign(v))),
    rows.map((r, i) => {
      const y = 16 + i * rowH;
      const kind = r.ci && r.ci[0] > 0 ? "gain" : r.ci && r.ci[1] < 0 ? "loss" : "";
      return svg("g", { class: kind },
        svg("text", { x: 4, y: y + 4 }, r.label),
        r.ci && r.ci[0] !== null ? svg("line", { class: "ci", x1: x(r.ci[0]), x2: x(r.ci[1]), y1: y, y2: y }) : null,
        svg("circle", { cx: x(r.mean), cy: y, r: 4 }),
        svg("text", { x: width - right + 8, y: y + 4 }, `${sign(r.mean)}${r.ci && r.ci[0] !== null ? ` [${sign(r.ci[0])}, ${sign(r.ci[1])}]` : ""}${r.p !== null ? ` p=${r.p.toFixed(2)}` : ""}`));
    }));
}

/** Training loss and validation AP of every arm: each seed thin, the arm's mean thick. */
async function learningCurves(c, signal) {
  const jobs = c.jobs.filter((j) => j.iteration > 0 || TERMINAL.includes(j.state));
  const rows = await Promise.all(jobs.map((j) => allMetrics(j.id, ["loss", "val/AP"], signal)));
  const arms = c.spec.arms.map((a) => a.name);
  const wrap = h("div", { class: "charts" });
  for (const [key, title, log] of [["loss", "Training loss", true], ["val/AP", "Validation AP", false]]) {
    const series = [], tables = [];
    let total = 0;
    arms.forEach((arm, a) => {
      const runs = [];
      jobs.forEach((j, i) => {
        if (j.arm !== arm) return;
        const store = new MetricStore();
        store.add(rows[i]);
        const s = store.series.get(key);
        if (!s) return;
        total += s.steps.length;
        runs.push(s);
        series.push({ label: `${arm} s${j.seed}`, color: COLORS[a % COLORS.length] + "66", width: 1, points: key !== "loss" });
        tables.push(downsample(s.steps, s.values));
      });
      if (runs.length > 1) {
        series.push({ label: `${arm} mean`, color: COLORS[a % COLORS.length], width: 2.5, points: key !== "loss" });
        tables.push(downsample(...meanOfRuns(runs)));
      }
    });
    const chart = new Chart(title, series, { log, id: `curves-${key}` });
    wrap.append(chart.el);
    if (tables.length) requestAnimationFrame(() => chart.setData(tables, total));
  }
  return wrap;
}

/** The mean over runs at the steps every run has. */
function meanOfRuns(runs) {
  const sums = new Map();
  for (const run of runs) {
    run.steps.forEach((step, i) => {
      if (run.values[i] === null) return;
      const [sum, n] = sums.get(step) || [0, 0];
      sums.set(step, [sum + run.values[i], n + 1]);
    });
  }
  const steps = [...sums.keys()].filter((s) => sums.get(s)[1] === runs.length).sort((a, b) => a - b);
  return [steps, steps.map((s) => sums.get(s)[0] / runs.length)];
}

// ---- the submit form

/** A field's allowed values as the API's own OpenAPI schema lists them. */
async function enumValues(schema, property) {
  enumValues.document ??= fetch("/openapi.json").then((r) => r.json());
  return (await enumValues.document).components.schemas[schema]?.properties?.[property]?.enum || [];
}

/** A form row: label, control, and the place where the API's message for `loc` appears. */
function field(label, control, hint) {
  const loc = control.getAttribute("name");
  return h("div", { class: "field" }, h("label", { for: control.id || undefined }, label),
    h("div", {}, control, hint ? h("div", { class: "hint" }, hint) : null),
    h("div", { class: "field-error", dataset: { errorFor: loc }, hidden: true }));
}

let controls = 0; // ids tie labels to controls; names may repeat across a page's forms

function input(name, attrs = {}) {
  return h("input", { name, id: `control-${++controls}`, ...attrs });
}

function selectOf(name, values, selected) {
  return h("select", { name, id: `control-${++controls}` }, values.map((v) => {
    const [value, label] = Array.isArray(v) ? v : [v, v];
    return h("option", { value, selected: String(value) === String(selected) }, label);
  }));
}

/** Show the API's 422 beside the fields: `detail[].loc` (after `body` and `prefix`) names a
 * field's `name`, or the nearest enclosing one; what names no field goes to the top. */
function showErrors(form, error, prefixes = []) {
  clearErrors(form);
  const top = form.querySelector(".form-error");
  const unplaced = [];
  const details = Array.isArray(error.detail) ? error.detail : [{ loc: [], msg: error.message }];
  for (const e of details) {
    let loc = (e.loc || []).filter((part) => part !== "body");
    for (const prefix of prefixes) if (loc[0] === prefix) loc = loc.slice(1);
    if (loc[0] === "arms" && Number.isInteger(loc[1])) loc = loc.slice(2); // the AE arm's fields
    let slot = null;
    for (let n = loc.length; n > 0 && !slot; n--) slot = form.querySelector(`[data-error-for="${CSS.escape(loc.slice(0, n).join("."))}"]`);
    if (!slot) { unplaced.push(loc.length ? `${loc.join(".")}: ${e.msg}` : e.msg); continue; }
    slot.hidden = false;
    slot.textContent = slot.textContent ? `${slot.textContent}; ${e.msg}` : e.msg;
    form.querySelector(`[name="${CSS.escape(slot.dataset.errorFor)}"]`)?.setAttribute("aria-invalid", "true");
  }
  if (error.report) unplaced.push(...reportLines(error.report));
  if (unplaced.length) { top.hidden = false; top.textContent = unplaced.join("\n"); }
}

function clearErrors(form) {
  for (const slot of form.querySelectorAll(".field-error")) { slot.hidden = true; slot.textContent = ""; }
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  const top = form.querySelector(".form-error");
  top.hidden = true;
  top.textContent = "";
}

/** A number field's value: omitted when empty, the text itself when not a number (so the
 * API names what is wrong with it). */
function numberOf(form, name) {
  const raw = form.elements[name]?.value.trim();
  if (!raw) return undefined;
  const value = Number(raw);
  return Number.isFinite(value) ? value : raw;
}

function compact(object) {
  return Object.fromEntries(Object.entries(object).filter(([, v]) => v !== undefined && v !== ""));
}

async function submitPage(root, signal, query) {
  const [models, datasets, schedules, modes, anchors] = await Promise.all([
    get("/v1/models?limit=500", signal), get("/v1/datasets?limit=500", signal), enumValues("AESpec", "schedule"), enumValues("AESpec", "mode"),
    enumValues("TrainSpec", "anchors"),
  ]);
  const ready = datasets.data.filter((d) => d.status === "ready");
  const kind = query.get("kind") === "comparison" ? "comparison" : "job";
  const layersBox = h("div", { id: "layer-table", class: "layers-wrap" });
  const placement = selectOf("ae.layers", [["", "none (no AE)"]], "");
  const form = h("form", { class: "grid", id: "submit-form", novalidate: true },
    h("div", { class: "form-error", hidden: true }),
    field("What", h("div", { class: "tabs", name: "kind" },
      ["job", "comparison"].map((k) => h("label", {}, h("input", { type: "radio", name: "kind", value: k, checked: k === kind, onchange: () => { location.hash = `#/submit?kind=${k}`; } }), k === "job" ? "One job" : "Comparison (baseline vs AE)")))),
    field("Name", input("name", { placeholder: "optional" })),
    field("Model", selectOf("model", models.data.map((m) => [m.ref, `${m.name} (${m.source}, ${m.width}×${m.height}, ${m.bflops.toFixed(2)} BFLOPs)`]), query.get("model") || "yolov3-tiny-small")),
    field("Dataset", selectOf("dataset_id", ready.length ? ready.map((d) => [d.id, `#${d.id} ${d.name} (${d.class_names.length} classes, ${d.num_train}/${d.num_val} images)`]) : [["", "no ready dataset: generate or upload one"]], query.get("dataset"))),
    field("Iterations", input("train.max_batches", { type: "number", value: "200" }), "train.max_batches"),
    field("Batch", input("train.batch", { type: "number", value: "8" }), "images per iteration"),
    field("Input size", input("train.width", { type: "number", value: "128" }), "width = height, a multiple of 32"),
    field("Evaluate every", input("train.eval_interval", { type: "number", value: "50" }), "iterations (0: at the end only)"),
    field("Anchors", selectOf("train.anchors", anchors, "cfg"), "cfg: as the cfg says; fit: fitted to the dataset's boxes when the job starts"),
    kind === "job" ? field("Seed", input("seed", { type: "number", value: "0" })) : field("Seeds", input("seeds", { value: "0,1,2" }), "comma-separated; one job per arm and seed"),
    field("AE placement", placement, kind === "comparison" ? "the AE arm's layer; the baseline arm has none" : "a stride (the documented rule) or a layer picked in the table below"),
    field("AE schedule", selectOf("ae.schedule", schedules, "cosine")),
    field("AE mode", selectOf("ae.mode", modes, "excite")),
    field("AE alpha max", input("ae.alpha_max", { type: "number", value: "1", step: "0.1" })),
    h("div", { class: "field" }, h("span"), h("div", {}, h("button", { type: "submit" }, kind === "job" ? "Submit job" : "Start comparison"))));
  fill(root, h("h1", {}, kind === "job" ? "Submit a job" : "Start a comparison"), h("div", { class: "card" }, form),
    h("h2", {}, "Layer table"), h("p", { class: "muted" }, "Each layer's output (width × height × channels) and stride at the input size; green: AE can go there (not a detection head). Click a row to put AE on that layer."), layersBox);

  const loadLayers = async () => {
    const size = numberOf(form, "train.width");
    const q = Number.isInteger(size) ? `?size=${size}` : "";
    const chosen = placement.value;
    try {
      const table = await get(`/v1/models/${encodeURIComponent(form.elements.model.value)}/layers${q}`, signal);
      const strides = [...new Set(table.layers.filter(eligible).map((l) => l.out_stride))].filter(Number.isInteger).sort((a, b) => a - b);
      fill(placement, h("option", { value: "" }, "none (no AE)"),
        strides.map((s) => h("option", { value: `stride:${s}` }, `stride ${s} (documented rule)`)),
        table.layers.filter(eligible).map((l) => h("option", { value: `layer:${l.index}` }, `layer ${l.index} (${l.type}, stride ${l.out_stride})`)));
      const fallback = placement.dataset.touched ? "" : strides.includes(16) ? "stride:16" : "";
      placement.value = [...placement.options].some((o) => o.value === chosen && (chosen || placement.dataset.touched)) ? chosen : fallback;
      fill(layersBox, layerTable(table, (layer) => { placement.value = `layer:${layer.index}`; placement.dataset.touched = "yes"; highlight(); }));
      highlight();
    } catch (error) {
      fill(layersBox, h("div", { class: "error" }, error.message));
    }
  };
  const highlight = () => {
    for (const row of layersBox.querySelectorAll("tr[data-layer]")) row.classList.toggle("chosen", placement.value === `layer:${row.dataset.layer}`);
  };
  form.elements.model.addEventListener("change", loadLayers);
  form.elements["train.width"].addEventListener("change", loadLayers);
  placement.addEventListener("change", () => { placement.dataset.touched = "yes"; highlight(); });
  await loadLayers();

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      if (kind === "job") {
        const job = await api("POST", "/v1/jobs", jobBody(form));
        location.hash = `#/jobs/${job.id}`;
      } else {
        const created = await api("POST", "/v1/comparisons", comparisonBody(form));
        location.hash = `#/comparisons/${created.id}`;
      }
    } catch (error) {
      if (error.status !== 401) showErrors(form, error, kind === "job" ? [] : ["base"]);
    } finally {
      button.disabled = false;
    }
  });
}

const eligible = (layer) => !["yolo", "region"].includes(layer.type);

function aeBody(form) {
  const chosen = form.elements["ae.layers"].value;
  if (!chosen) return null;
  const [how, value] = chosen.split(":");
  return compact({
    layers: how === "stride" ? { stride: Number(value) } : Number(value),
    schedule: form.elements["ae.schedule"].value,
    mode: form.elements["ae.mode"].value,
    alpha_max: numberOf(form, "ae.alpha_max"),
  });
}

function jobBody(form) {
  const size = numberOf(form, "train.width");
  const model = form.elements.model.value;
  return compact({
    name: form.elements.name.value.trim() || undefined,
    model: /^\d+$/.test(model) ? Number(model) : model,
    dataset_id: numberOf(form, "dataset_id"),
    seed: numberOf(form, "seed"),
    train: compact({
      max_batches: numberOf(form, "train.max_batches"), batch: numberOf(form, "train.batch"),
      width: size, height: size, multiscale: false, eval_interval: numberOf(form, "train.eval_interval"),
      anchors: form.elements["train.anchors"].value || undefined,
    }),
    ae: aeBody(form) ?? undefined,
  });
}

function comparisonBody(form) {
  const { name, ae, ...base } = jobBody(form);
  const seeds = form.elements.seeds.value.split(",").map((s) => s.trim()).filter(Boolean).map((s) => (/^\d+$/.test(s) ? Number(s) : s));
  const aeArm = ae ? `ae-${"stride" in (typeof ae.layers === "object" ? ae.layers : {}) ? `stride${ae.layers.stride}` : `layer${ae.layers}`}` : "ae";
  return compact({ name, base, seeds, arms: [{ name: "baseline", ae: null }, { name: aeArm, ae: ae ?? null }] });
}

function layerTable(table, onPick) {
  return h("table", { class: "layers" },
    h("thead", {}, h("tr", {}, ["#", "Type", "Filters", "Size/stride", "Input", "Output (w×h×c)", "Stride", "BFLOPs", "AE"].map((t) => h("th", {}, t)))),
    h("tbody", {}, table.layers.map((l) => h("tr", {
      class: eligible(l) ? `eligible${onPick ? " pickable" : ""}` : "head-layer", dataset: { layer: l.index },
      onclick: onPick && eligible(l) ? () => onPick(l) : undefined,
    },
    h("td", { class: "num" }, l.index), h("td", {}, l.type), h("td", { class: "num" }, l.filters || ""),
    h("td", {}, l.size ? `${l.size}/${l.stride}` : ""), h("td", {}, l.input.join("×")), h("td", {}, l.output.join("×")),
    h("td", { class: "num" }, l.out_stride), h("td", { class: "num" }, l.bflops.toFixed(3)), h("td", {}, eligible(l) ? "✓" : "head")))));
}

// ---- datasets

async function datasetsPage(root, signal) {
  const list = await get("/v1/datasets?limit=500", signal);
  const generate = h("form", { class: "grid", id: "generate-form", novalidate: true },
    h("div", { class: "form-error", hidden: true }),
    field("Kind", selectOf("kind", ["shapes", "digits"], "shapes")),
    field("Train images", input("train", { type: "number", value: "64" })),
    field("Val images", input("val", { type: "number", value: "16" })),
    field("Image size", input("size", { type: "number", value: "128" }), "pixels"),
    field("Seed", input("seed", { type: "number", value: "0" })),
    field("Name", input("name", { placeholder: "optional" })),
    h("div", { class: "field" }, h("span"), h("div", {}, h("button", { type: "submit" }, "Generate"))));
  generate.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(generate);
    const button = generate.querySelector("button");
    button.disabled = true;
    button.textContent = "Generating…";
    try {
      const body = compact({
        kind: generate.elements.kind.value, train: numberOf(generate, "train"), val: numberOf(generate, "val"),
        size: numberOf(generate, "size"), seed: numberOf(generate, "seed"), name: generate.elements.name.value.trim() || undefined,
      });
      const dataset = await api("POST", "/v1/datasets/generate", body);
      location.hash = `#/datasets/${dataset.id}`;
    } catch (error) {
      if (error.status !== 401) showErrors(generate, error);
    } finally {
      button.disabled = false;
      button.textContent = "Generate";
    }
  });
  const upload = h("form", { class: "grid", id: "upload-form", novalidate: true },
    h("div", { class: "form-error", hidden: true }),
    field("Zip file", input("file", { type: "file", accept: ".zip" }), "COCO or YOLO layout (docs/data.md)"),
    field("Name", input("name", { placeholder: "default: the file's name" })),
    h("div", { class: "field" }, h("span"), h("div", {}, h("button", { type: "submit" }, "Upload"))));
  upload.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(upload);
    const data = new FormData();
    const file = upload.elements.file.files[0];
    if (file) data.append("file", file);
    if (upload.elements.name.value.trim()) data.append("name", upload.elements.name.value.trim());
    try {
      const dataset = await api("POST", "/v1/datasets", data);
      location.hash = `#/datasets/${dataset.id}`;
    } catch (error) {
      if (error.status !== 401) showErrors(upload, error);
    }
  });
  fill(root, h("h1", {}, "Datasets"),
    h("table", { id: "datasets" }, h("thead", {}, h("tr", {}, ["Dataset", "Status", "Classes", "Train", "Val", "Warnings", "Created", ""].map((t) => h("th", {}, t)))),
      h("tbody", {}, list.data.length ? list.data.map((d) => h("tr", {},
        h("td", {}, h("a", { href: `#/datasets/${d.id}` }, `#${d.id} ${d.name}`)), h("td", {}, badge(d.status)),
        h("td", {}, d.class_names.length), h("td", { class: "num" }, d.num_train), h("td", { class: "num" }, d.num_val),
        h("td", { class: "num" }, d.report.warnings.length + d.report.omitted_warnings), h("td", {}, when(d.created_at)),
        h("td", {}, h("a", { href: `#/submit?dataset=${d.id}` }, "train on it…"))))
        : h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No datasets yet: generate one below.")))),
    h("h2", {}, "Generate"), h("div", { class: "card" }, generate),
    h("h2", {}, "Upload"), h("div", { class: "card" }, upload));
}

function reportLines(report) {
  const line = (p) => `${p.file}${p.line ? `:${p.line}` : ""}${p.image_id ? ` image ${p.image_id}` : ""}${p.annotation_id ? ` annotation ${p.annotation_id}` : ""}: ${p.message}`;
  return [...report.errors.map((p) => `error: ${line(p)}`), ...(report.omitted_errors ? [`… and ${report.omitted_errors} more errors`] : [])];
}

async function datasetPage(root, signal, _query, id) {
  const d = await get(`/v1/datasets/${id}`, signal);
  const report = d.report;
  const problems = (kind, list, omitted) => (list.length ? [h("h2", {}, `${kind} (${list.length + omitted})`),
    h("table", {}, h("thead", {}, h("tr", {}, ["File", "Where", "Message"].map((t) => h("th", {}, t)))),
      h("tbody", {}, list.map((p) => h("tr", {}, h("td", {}, p.file),
        h("td", {}, [p.line && `line ${p.line}`, p.image_id && `image ${p.image_id}`, p.annotation_id && `annotation ${p.annotation_id}`].filter(Boolean).join(", ")),
        h("td", {}, p.message)))))] : []);
  fill(root, h("h1", {}, `Dataset #${d.id} ${d.name}`),
    h("div", { class: "card row" }, badge(d.status), `${d.num_train} train / ${d.num_val} val images`, `created ${when(d.created_at)}`, h("a", { href: `#/submit?dataset=${d.id}` }, "Train on it…")),
    h("h2", {}, "Validation report"),
    h("table", { id: "report-counts" }, h("thead", {}, h("tr", {}, ["Split", "Layout", "Images", "Objects"].map((t) => h("th", {}, t)))),
      h("tbody", {}, Object.entries(report.counts).map(([split, c]) => h("tr", {}, h("td", {}, split), h("td", {}, c.layout), h("td", { class: "num" }, c.images), h("td", { class: "num" }, c.objects))))),
    report.errors.length || report.warnings.length ? null : h("p", { class: "muted", id: "report-clean" }, "No errors and no warnings."),
    problems("Errors", report.errors, report.omitted_errors), problems("Warnings", report.warnings, report.omitted_warnings),
    h("h2", {}, `Classes (${d.class_names.length})`), h("p", {}, d.class_names.map((c, i) => `${i}: ${c}`).join(", ")),
    report.generator ? [h("h2", {}, "Generated with"), h("pre", {}, JSON.stringify(report.generator, null, 2))] : null);
}

// ---- models

async function modelsPage(root, signal) {
  const list = await get("/v1/models?limit=500", signal);
  const upload = h("form", { class: "grid", id: "model-form", novalidate: true },
    h("div", { class: "form-error", hidden: true }),
    field("Name", input("name")),
    field("cfg file", input("cfg-file", { type: "file", accept: ".cfg,text/plain", onchange: async (e) => {
      const file = e.target.files[0];
      if (file) upload.elements.cfg.value = await file.text();
    } }), "or paste the text below"),
    field("cfg text", h("textarea", { name: "cfg", id: `control-${++controls}`, placeholder: "[net]\nwidth=416\n…" })),
    h("div", { class: "field" }, h("span"), h("div", {}, h("button", { type: "submit" }, "Upload cfg"))));
  upload.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(upload);
    try {
      const model = await api("POST", "/v1/models", { name: upload.elements.name.value, cfg: upload.elements.cfg.value });
      location.hash = `#/models/${encodeURIComponent(model.ref)}`;
    } catch (error) {
      if (error.status !== 401) showErrors(upload, error);
    }
  });
  fill(root, h("h1", {}, "Models"),
    h("table", { id: "models" }, h("thead", {}, h("tr", {}, ["Model", "Source", "Classes", "Input", "Layers", "BFLOPs", "Start weights"].map((t) => h("th", {}, t)))),
      h("tbody", {}, list.data.map((m) => h("tr", {},
        h("td", {}, h("a", { href: `#/models/${encodeURIComponent(m.ref)}` }, m.name), m.id ? h("span", { class: "muted" }, ` #${m.id}`) : ""),
        h("td", {}, m.source), h("td", { class: "num" }, m.classes ?? "—"), h("td", {}, `${m.width}×${m.height}×${m.channels}`),
        h("td", { class: "num" }, m.layers), h("td", { class: "num" }, m.bflops.toFixed(3)), h("td", {}, m.weights ? `${m.weights.layers} layers` : "—"))))),
    h("h2", {}, "Upload a darknet cfg"), h("div", { class: "card" }, upload));
}

async function modelPage(root, signal, query, ref) {
  const model = await get(`/v1/models/${encodeURIComponent(ref)}`, signal);
  const size = query.get("size") || "";
  const sizeInput = h("input", { name: "size", value: size, placeholder: `${model.width}x${model.height}` });
  const tableBox = h("div", { id: "layer-table" });
  fill(root, h("h1", {}, `Model ${model.name}`),
    h("div", { class: "card row" }, `${model.source}`, `${model.classes ?? "no"} classes`, `input ${model.width}×${model.height}×${model.channels}`,
      `${model.layers} layers`, `${model.bflops.toFixed(3)} BFLOPs`, h("a", { href: `#/submit?model=${encodeURIComponent(model.ref)}` }, "Train it…")),
    model.warnings.map((w) => h("div", { class: "notice" }, w)),
    h("form", { class: "row", onsubmit: (e) => { e.preventDefault(); location.hash = `#/models/${encodeURIComponent(ref)}?size=${encodeURIComponent(sizeInput.value.trim())}`; } },
      h("label", {}, "Input size (W or WxH): "), sizeInput, h("button", { type: "submit", class: "secondary" }, "Show")),
    h("h2", {}, "Layer table"), h("p", { class: "muted" }, "Green: a layer AE can go on (not a detection head)."), tableBox);
  try {
    const table = await get(`/v1/models/${encodeURIComponent(ref)}/layers${size ? `?size=${encodeURIComponent(size)}` : ""}`, signal);
    fill(tableBox, h("p", {}, `At ${table.width}×${table.height}: ${table.total_bflops.toFixed(3)} BFLOPs`), layerTable(table, null));
  } catch (error) {
    if (error.status !== 401) fill(tableBox, h("div", { class: "error" }, error.message));
  }
}

// ---------------------------------------------------------------- start

/** A sign-in link (`/#key=...`, as `aetrain serve` prints) stores the key for this tab and
 * leaves the address bar; the fragment never reaches the server. */
function takeKeyFromFragment() {
  const match = location.hash.match(/^#key=([^&]+)/);
  if (!match) return;
  sessionStorage.setItem(KEY_STORE, decodeURIComponent(match[1]));
  history.replaceState(null, "", `${location.pathname}${location.search}#/jobs`);
}

document.getElementById("sign-out").addEventListener("click", () => signOut(""));
window.addEventListener("hashchange", route);
takeKeyFromFragment();
route();
