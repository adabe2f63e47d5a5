// llm-attr web page: build an attribute request, run it as a job, draw the results as SVG.
// Plain JS, no dependencies, no external requests. Sections: helpers, API, template and
// placeholders, request and URL state, job, results, charts, compare, export, start.
"use strict";

/* ---------- helpers ---------- */

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
const SVG_NS = "http://www.w3.org/2000/svg";
const FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Noto Sans', 'DejaVu Sans', sans-serif";
const MINUS = "\u2212";

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  node.append(...children.filter((c) => c != null));
  return node;
}

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  node.append(...children.filter((c) => c != null));
  return node;
}

function setAttrs(node, attrs) {
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
}

/** A number for people: sign, fixed decimals, real minus sign. */
function fmt(x, digits = 2) {
  if (!Number.isFinite(x)) return String(x);
  const a = Math.abs(x);
  let s = a >= 1000 ? a.toExponential(1) : a.toFixed(a >= 100 ? 0 : digits);
  if (Number(s) === 0) return (0).toFixed(digits);
  return (x < 0 ? MINUS : "+") + s;
}

/** A number with all the precision a person can use (hover, tables). */
function exact(x) {
  if (!Number.isFinite(x)) return String(x);
  const s = Math.abs(x) < 1e-4 && x !== 0 ? x.toExponential(4) : x.toFixed(6);
  return s.replace("-", MINUS);
}

/** A probability: percent when readable, else a power of ten. */
function fmtProb(p) {
  if (!Number.isFinite(p)) return String(p);
  if (p >= 0.995) return (p * 100).toFixed(1) + "%";
  if (p >= 0.001) return (p * 100).toPrecision(2) + "%";
  if (p === 0) return "0";
  const e = Math.floor(Math.log10(p));
  const m = p / 10 ** e;
  return `${m.toFixed(1)} × 10${superscript(e)}`;
}

function superscript(n) {
  return String(n).replace(/./g, (c) => "⁻⁰¹²³⁴⁵⁶⁷⁸⁹"["-0123456789".indexOf(c)]);
}

/** A common factor for numbers up to `max` that would read badly with two decimals. */
function numberScale(max) {
  if (!(max > 0) || (max >= 0.1 && max < 1000)) return { div: 1, note: "" };
  const e = Math.floor(Math.log10(max));
  return { div: 10 ** e, note: `values × 10${superscript(e)}` };
}

let measureCtx = null;
function textWidth(text, size = 12, weight = 400) {
  measureCtx ||= document.createElement("canvas").getContext("2d");
  measureCtx.font = `${weight} ${size}px ${FONT}`;
  return measureCtx.measureText(text).width;
}

/** Cuts `text` to fit `width` pixels, with an ellipsis. */
function fit(text, width, size = 12, weight = 400) {
  if (textWidth(text, size, weight) <= width) return text;
  let lo = 0;
  let hi = text.length;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (textWidth(text.slice(0, mid) + "…", size, weight) <= width) lo = mid;
    else hi = mid - 1;
  }
  return text.slice(0, lo) + "…";
}

/** Makes whitespace in a token visible. */
function showToken(t) {
  if (t === "") return "∅";
  return t.replace(/\n/g, "⏎").replace(/\t/g, "⇥").replace(/^ +| +$/g, (m) => "·".repeat(m.length));
}

function debounce(fn, ms) {
  let timer = 0;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

function lines(text) {
  return text.split("\n").map((s) => s.trim()).filter((s) => s !== "");
}

/* ---------- API ---------- */

class ApiError extends Error {
  constructor(status, code, message, field, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field || "";
    this.retryAfter = retryAfter;
  }
}

function authHeaders() {
  const key = sessionStorage.getItem("llm-attr-key");
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function api(method, path, body, signal) {
  let res;
  try {
    res = await fetch(path, {
      method,
      signal,
      headers: { ...authHeaders(), ...(body === undefined ? {} : { "Content-Type": "application/json" }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "network", "Cannot reach the server. Is llm-attr still running?");
  }
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!res.ok) {
    const e = data && data.error ? data.error : {};
    let message = e.message || `${res.status} ${res.statusText}`;
    if (res.status === 401) message = "The server needs an API key: enter it under Connection.";
    throw new ApiError(res.status, e.code || String(res.status), message, e.field, res.headers.get("Retry-After"));
  }
  return data;
}

/** Reads a text/event-stream; calls onEvent(name, data) per event. Resolves when it ends. */
async function readEvents(path, signal, onEvent) {
  const res = await fetch(path, { headers: { Accept: "text/event-stream", ...authHeaders() }, signal });
  if (!res.ok || !res.body) throw new ApiError(res.status, "events", `events: ${res.status}`);
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") name = val;
        else if (field === "data") data.push(val);
      }
      if (data.length === 0) continue;
      let parsed;
      try {
        parsed = JSON.parse(data.join("\n"));
      } catch {
        continue;
      }
      if (onEvent(name, parsed) === false) return;
    }
  }
}

/* ---------- template and placeholders ---------- */

/** Placeholder names in order of first use, or an error. `{{` and `}}` are literal braces. */
function parseTemplate(t) {
  const names = [];
  let i = 0;
  while (i < t.length) {
    const c = t[i];
    if ((c === "{" && t[i + 1] === "{") || (c === "}" && t[i + 1] === "}")) {
      i += 2;
    } else if (c === "{") {
      const end = t.indexOf("}", i + 1);
      const next = t.indexOf("{", i + 1);
      if (end < 0 || (next >= 0 && next < end)) {
        return { names, error: `“{” at character ${i + 1} is never closed (write {{ for a literal brace).` };
      }
      const name = t.slice(i + 1, end);
      if (name === "") return { names, error: `Empty placeholder {} at character ${i + 1}: give it a name, e.g. {name}.` };
      if (!/^[\p{L}\p{N}_-]+$/u.test(name)) {
        return { names, error: `Placeholder {${name}}: names use letters, digits, _ and - only.` };
      }
      if (!names.includes(name)) names.push(name);
      i = end + 1;
    } else if (c === "}") {
      return { names, error: `“}” at character ${i + 1} has no opening brace (write }} for a literal brace).` };
    } else {
      i += 1;
    }
  }
  return { names, error: null };
}

/** Fills placeholders; `keep` names stay placeholders (their braces are kept). */
function renderTemplate(t, values, keep = null) {
  const escape = keep ? (s) => s.replace(/[{}]/g, (b) => b + b) : (s) => s;
  return t.replace(/\{\{|\}\}|\{([^{}]*)\}/g, (m, name) => {
    if (name === undefined) return keep ? m : m[0];
    if (keep && name === keep) return m;
    return escape(values[name] ?? "");
  });
}

/** Template split into text and placeholder parts (for the highlighted prompt). */
function templateParts(t) {
  const parts = [];
  let text = "";
  t.replace(/\{\{|\}\}|\{([^{}]*)\}|[^{}]+|[{}]/g, (m, name) => {
    if (name !== undefined) {
      if (text) parts.push({ text });
      text = "";
      parts.push({ name });
    } else if (m === "{{" || m === "}}") text += m[0];
    else text += m;
    return m;
  });
  if (text) parts.push({ text });
  return parts;
}

const state = {
  templates: [],
  rows: new Map(), // placeholder -> {value, baselines: [], group}
  names: [],
  result: null, // {request, response}
  jobId: null,
  abort: null,
  compare: null, // {placeholder, target, items: [{value, log_prob, log_probs}]}
  compareAbort: null,
  generated: null, // {prompt, text}
  mode: "template", // or "tokens": every token of a text is a feature
  tokens: null, // tokenization of the text: {text, ids, pieces}
  skip: new Set(), // token ids (or token strings from a link) never perturbed
};

function rowFor(name) {
  if (!state.rows.has(name)) state.rows.set(name, { value: "", baselines: [], group: "" });
  return state.rows.get(name);
}

function onTemplateInput() {
  const { names, error } = parseTemplate($("#template").value);
  const box = $("#err-template");
  if (!box.dataset.server) {
    box.textContent = error || "";
    $("#template").toggleAttribute("aria-invalid", Boolean(error));
  }
  if (!error || names.length >= state.names.length) setNames(names);
  const seed = state.templates.find((t) => t.id === $("#seed-template").value);
  if (seed && seed.template !== $("#template").value) $("#seed-template").value = "";
}

/** Shows one row per placeholder; keeps rows (and focus) that did not change. */
function setNames(names) {
  const same = names.length === state.names.length && names.every((n, i) => n === state.names[i]);
  state.names = names;
  $("#no-placeholders").hidden = names.length > 0;
  fillCompareSelect();
  if (same) return;
  const box = $("#placeholders");
  const existing = new Map($$(".ph", box).map((node) => [node.dataset.name, node]));
  const nodes = names.map((name) => existing.get(name) || placeholderRow(name));
  box.replaceChildren(...nodes);
}

let rowCounter = 0;
function placeholderRow(name) {
  const row = rowFor(name);
  const id = `ph${++rowCounter}`;
  const update = () => {
    row.value = valueInput.value;
    row.baselines = lines(baseInput.value);
    row.group = groupInput.value.trim();
    saveState();
    if ($("#compare-ph").value === name) fillCompareValues(false);
  };
  const valueInput = el("input", {
    id: `${id}-value`, type: "text", value: row.value, spellcheck: "false",
    "aria-describedby": `${id}-value-err`, oninput: update,
  });
  const baseInput = el("textarea", {
    id: `${id}-base`, rows: Math.min(5, Math.max(2, row.baselines.length)), spellcheck: "false",
    "aria-describedby": `${id}-base-help ${id}-base-err`, oninput: update,
  });
  baseInput.value = row.baselines.join("\n");
  const groupInput = el("input", {
    id: `${id}-group`, type: "text", value: row.group, placeholder: "own feature", spellcheck: "false",
    "aria-describedby": `${id}-group-help ${id}-group-err`, oninput: update,
  });
  return el("fieldset", { class: "ph", "data-name": name },
    el("legend", {}, el("code", { text: `{${name}}` })),
    el("div", { class: "field ph-value" },
      el("label", { for: valueInput.id, text: "Value" }), valueInput,
      el("p", { id: `${id}-value-err`, class: "field-error", "data-field": `values.${name}`, role: "alert" })),
    el("div", { class: "field ph-group" },
      el("label", { for: groupInput.id, text: "Group" }), groupInput,
      el("p", { id: `${id}-group-help`, class: "visually-hidden", text: "Placeholders with the same group label are switched together." }),
      el("p", { id: `${id}-group-err`, class: "field-error", "data-field": `mask.${name}`, role: "alert" })),
    el("div", { class: "field ph-base" },
      el("label", { for: baseInput.id, text: "Baselines, one per line" }), baseInput,
      el("p", { id: `${id}-base-help`, class: "visually-hidden", text: "Empty: compare against removing the value." }),
      el("p", { id: `${id}-base-err`, class: "field-error", "data-field": `baselines.${name}`, role: "alert" })),
  );
}

function loadSeed(id) {
  const seed = state.templates.find((t) => t.id === id);
  if (!seed) return;
  state.rows.clear();
  state.names = [];
  for (const [name, value] of Object.entries(seed.values || {})) rowFor(name).value = value;
  for (const [name, b] of Object.entries(seed.baselines || {})) rowFor(name).baselines = Array.isArray(b) ? [...b] : [b];
  $("#template").value = seed.template;
  $("#target").value = seed.target || "";
  $("#placeholders").replaceChildren();
  $("#generated").hidden = true;
  clearErrors();
  onTemplateInput();
  $("#seed-template").value = id;
  fillCompareValues(true);
  saveState();
}

/* ---------- request and URL state ---------- */

const SAMPLED = new Set(["shapley_value_sampling", "lime", "kernel_shap"]);
const DEFAULT_SAMPLES = { shapley_value_sampling: 25, lime: 50, kernel_shap: 25 };

function method() {
  return $("input[name=method]:checked")?.value || "shapley_values";
}

function intField(id) {
  const v = $(`#${id}`).value.trim();
  if (v === "") return undefined;
  const n = Number(v);
  return Number.isFinite(n) ? n : v; // the server names the field if it is not a number
}

function targetText() {
  const t = $("#target").value;
  return t.trim() === "" ? undefined : t;
}

/** The AttributeRequest (src/request.rs) the form describes. */
function buildRequest() {
  const req = state.mode === "tokens" ? tokenInput() : templateInput();
  const target = targetText();
  if (target !== undefined) req.target = target;
  else if (intField("max_new_tokens") !== undefined) req.max_new_tokens = intField("max_new_tokens");
  req.method = method();
  req.attr_target = $("#attr_target").value;
  if (SAMPLED.has(req.method) && intField("n_samples") !== undefined) req.n_samples = intField("n_samples");
  if (intField("seed") !== undefined) req.seed = intField("seed");
  if ($("#baseline_sampling").value) req.baseline_sampling = $("#baseline_sampling").value;
  if (intField("num_trials") !== undefined) req.num_trials = intField("num_trials");
  return req;
}

function templateInput() {
  const template = $("#template").value;
  const { names } = parseTemplate(template);
  const req = { template, values: {} };
  const baselines = {};
  const mask = {};
  for (const name of names) {
    const row = rowFor(name);
    req.values[name] = row.value;
    if (row.baselines.length === 1) baselines[name] = row.baselines[0];
    else if (row.baselines.length > 1) baselines[name] = [...row.baselines];
    if (row.group) mask[name] = row.group;
  }
  if (Object.keys(baselines).length) req.baselines = baselines;
  if (Object.keys(mask).length) req.mask = mask;
  return req;
}

function tokenInput() {
  const req = { text: $("#text").value };
  if (state.skip.size) req.skip_tokens = [...state.skip];
  const b = $("#baseline_token").value;
  if (b.trim() !== "") req.baseline_token = /^\d+$/.test(b.trim()) ? Number(b.trim()) : b;
  return req;
}

/** Puts a request (from a link or a job) back into the form. */
function applyRequest(req) {
  state.rows.clear();
  state.names = [];
  $("#placeholders").replaceChildren();
  for (const [name, value] of Object.entries(req.values || {})) rowFor(name).value = String(value);
  for (const [name, b] of Object.entries(req.baselines || {})) rowFor(name).baselines = (Array.isArray(b) ? b : [b]).map(String);
  for (const [name, g] of Object.entries(req.mask || {})) rowFor(name).group = String(g);
  $("#template").value = req.template || "";
  $("#text").value = req.text ?? "";
  state.skip = new Set(req.skip_tokens || []);
  $("#baseline_token").value = req.baseline_token ?? "";
  setMode(req.text !== undefined && req.template === undefined ? "tokens" : "template");
  $("#target").value = req.target ?? "";
  $("#max_new_tokens").value = req.max_new_tokens ?? "";
  const m = { fa: "feature_ablation", sv: "shapley_values", svs: "shapley_value_sampling", kernel: "kernel_shap" }[req.method] || req.method || "shapley_values";
  const radio = $(`input[name=method][value="${CSS.escape(m)}"]`);
  if (radio) radio.checked = true;
  $("#attr_target").value = req.attr_target === "prob" ? "prob" : "log_prob";
  $("#n_samples").value = req.n_samples ?? "";
  $("#seed").value = req.seed ?? "";
  $("#baseline_sampling").value = req.baseline_sampling || "";
  $("#num_trials").value = req.num_trials ?? "";
  onTemplateInput();
  onMethodChange();
}

function pageState() {
  const params = new URLSearchParams();
  params.set("req", JSON.stringify(buildRequest()));
  if (state.mode === "template" && $("#seed-template").value) params.set("seed", $("#seed-template").value);
  const ph = $("#compare-ph").value;
  if (ph && state.mode === "template") params.set("cmp", JSON.stringify({ placeholder: ph, values: lines($("#compare-values").value) }));
  // The job goes in the link only while it is running or its result matches the form.
  const running = Boolean(state.abort);
  const matches = state.result && JSON.stringify(state.result.request) === params.get("req");
  if (state.jobId && (running || matches)) params.set("job", state.jobId);
  return params.toString();
}

const saveState = debounce(() => {
  history.replaceState(null, "", `#${pageState()}`);
}, 250);

function readHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  const out = {};
  for (const key of ["req", "cmp"]) {
    if (!params.has(key)) continue;
    try {
      out[key] = JSON.parse(params.get(key));
    } catch {
      out.bad = true;
    }
  }
  out.seed = params.get("seed");
  out.job = params.get("job");
  return out;
}

/* ---------- errors next to their field ---------- */

function clearErrors(scope = document) {
  for (const box of $$(".field-error", scope)) {
    box.textContent = "";
    delete box.dataset.server;
  }
  for (const input of $$("[aria-invalid]", scope)) input.removeAttribute("aria-invalid");
}

/** Shows `err` next to the field it names (`values.name` → that row's value), else in `fallback`. */
function showError(err, fallback = "#err-general") {
  let field = err.field || "";
  let box = null;
  while (field && !box) {
    box = $(`.field-error[data-field="${CSS.escape(field)}"]`);
    const parent = field.replace(/(\[[^\]]*\]|\.[^.[\]]*)$/, ""); // baselines.name[2] -> baselines.name -> baselines
    field = parent === field ? "" : parent;
  }
  if (!box) box = $(fallback);
  let message = err.message || String(err);
  if (err.field && message.startsWith(`${err.field}: `)) message = message.slice(err.field.length + 2);
  if (err.status === 503 && err.retryAfter) message += ` (try again in ${err.retryAfter} s)`;
  box.textContent = message;
  box.dataset.server = "1";
  const input = $(`[aria-describedby~="${box.id}"]`);
  if (input) {
    input.setAttribute("aria-invalid", "true");
    input.closest("details")?.setAttribute("open", "");
    input.focus({ preventScroll: true });
    input.scrollIntoView({ block: "center", behavior: "smooth" });
  } else {
    box.scrollIntoView({ block: "nearest", behavior: "smooth" });
  }
}

/* ---------- job ---------- */

function setRunning(running) {
  $("#run").disabled = running;
  $("#cancel").disabled = !running;
  $("#run-box").classList.toggle("busy", running);
}

function setProgress(p, label) {
  const bar = $("#progress");
  if (p && p.total > 0) {
    bar.max = p.total;
    bar.value = Math.min(p.done, p.total);
    const pct = Math.floor((100 * Math.min(p.done, p.total)) / p.total);
    bar.dataset.percent = String(pct);
    $("#progress-text").textContent = label || `Scored ${p.done} of ${p.total} prompts (${pct}%).`;
  } else {
    bar.removeAttribute("value");
    $("#progress-text").textContent = label || "Working…";
  }
}

async function runJob(event) {
  event?.preventDefault();
  if (state.abort) return;
  clearErrors($("#probe"));
  const request = buildRequest();
  setRunning(true);
  $("#progress").value = 0;
  $("#progress").dataset.percent = "0";
  setProgress(null, "Sending…");
  let job;
  try {
    job = await api("POST", "/v1/jobs", request);
  } catch (err) {
    setRunning(false);
    setProgress({ done: 0, total: 1 }, "Not started: see the message below the field.");
    showError(err);
    return;
  }
  state.jobId = job.id;
  saveState();
  await followJob(job, request);
}

/** Follows a job over its event stream (falls back to polling) until it ends. */
async function followJob(job, request) {
  const abort = new AbortController();
  state.abort = abort;
  setRunning(true);
  setProgress(job.progress, job.state === "queued" ? "Waiting in the queue…" : undefined);
  let final = null;
  try {
    await readEvents(`/v1/jobs/${job.id}/events`, abort.signal, (name, data) => {
      if (name === "progress") setProgress(data);
      else if (["done", "failed", "cancelled"].includes(name)) {
        final = data;
        return false;
      }
      return true;
    });
  } catch (err) {
    if (err.name === "AbortError" && state.abort !== abort) return;
  }
  while (!final && !abort.signal.aborted) {
    try {
      const j = await api("GET", `/v1/jobs/${job.id}`, undefined, abort.signal);
      setProgress(j.progress);
      if (["done", "failed", "cancelled"].includes(j.state)) final = j;
      else await new Promise((r) => setTimeout(r, 500));
    } catch (err) {
      if (err.name === "AbortError") break;
      final = { state: "failed", error: { message: err.message, field: err.field } };
    }
  }
  if (state.abort === abort) state.abort = null;
  setRunning(false);
  if (!final) return;
  finishJob(final, request);
}

function finishJob(job, request) {
  saveState();
  if (job.progress) setProgress(job.progress);
  if (job.state === "done" && job.result) {
    setProgress(job.progress, `Done: ${job.result.stats.unique_sequences} prompts scored in ${job.result.stats.seconds.toFixed(1)} s.`);
    showResult(request, job.result);
  } else if (job.state === "failed") {
    setProgress(job.progress, "Failed.");
    showError(job.error || { message: "The job failed." });
  } else if (job.state === "cancelled") {
    setProgress(job.progress, "Cancelled.");
  }
}

async function cancelJob() {
  const id = state.jobId;
  const abort = state.abort;
  if (!id || !abort) return;
  $("#cancel").disabled = true;
  setProgress(null, "Cancelling…");
  try {
    const job = await api("DELETE", `/v1/jobs/${id}`);
    if (job.state !== "done") {
      abort.abort();
      state.abort = null;
      setRunning(false);
      finishJob(job, null);
    }
  } catch (err) {
    abort.abort();
    state.abort = null;
    setRunning(false);
    showError(err);
  }
}

/* ---------- results ---------- */

function showResult(request, res) {
  state.result = { request, response: res };
  $("#empty-results").hidden = true;
  for (const id of ["summary", "heatmap-card", "bars-card"]) $(`#${id}`).hidden = false;
  drawSummary(request, res);
  drawAll();
  if (res.generated_target && targetText() === undefined) {
    showGenerated(res.target, "The model's greedy continuation, explained below.");
  }
}

function drawAll() {
  if (state.result) {
    const { response } = state.result;
    drawHeatmap($("#heatmap"), response);
    drawTable($("#heatmap-table"), response);
    drawBars($("#bars"), response);
  }
  if (state.compare) drawCompare($("#compare-chart"), state.compare);
}

function measureName(res) {
  return res.attr_target === "prob" ? "p" : "log p";
}

const METHOD_NAMES = {
  feature_ablation: "Feature ablation",
  shapley_values: "Shapley values",
  shapley_value_sampling: "Shapley value sampling",
  lime: "LIME",
  kernel_shap: "Kernel SHAP",
};

function drawSummary(request, res) {
  const view = $("#prompt-view");
  view.replaceChildren();
  const seqMax = Math.max(1e-30, ...res.seq_attr.map(Math.abs));
  const byPlaceholder = new Map();
  res.features.forEach((f, i) => (f.placeholders?.length ? f.placeholders : [f.name]).forEach((p) => byPlaceholder.set(p, i)));
  if (request?.text !== undefined && state.tokens?.text === request.text) {
    const byPosition = new Map(res.features.map((f, i) => [f.position, i]));
    state.tokens.pieces.forEach((piece, p) => {
      const i = byPosition.get(p);
      if (i === undefined) return view.append(el("span", { class: "fixed", title: "kept fixed" }, piece));
      const bg = color(res.seq_attr[i] / seqMax);
      const [, space, word] = piece.match(/^(\s*)([\s\S]*)$/);
      view.append(space, el("mark", { class: "feature token", style: `background:${bg};color:${textOn(bg)}`, title: `${exact(res.seq_attr[i])}` }, word || "␣"));
    });
  } else if (request?.template) {
    for (const part of templateParts(request.template)) {
      if (part.text !== undefined) {
        view.append(part.text);
        continue;
      }
      const i = byPlaceholder.get(part.name);
      const value = request.values?.[part.name] ?? "";
      if (i === undefined) {
        view.append(value);
        continue;
      }
      const a = res.seq_attr[i];
      const bg = color(a / seqMax);
      view.append(el("mark", {
        class: "feature", style: `background:${bg};color:${textOn(bg)}`,
        title: `${res.features[i].name}: ${exact(a)}`,
      }, value, el("span", { class: "visually-hidden", text: ` (${res.features[i].name}, ${fmt(a)})` })));
    }
  } else {
    view.append(res.prompt);
  }
  view.append(" ", el("span", { class: "target-text", title: "target" }, res.target));

  const p = Math.exp(res.target_log_prob);
  const facts = [
    ["Probability of the target", `${fmtProb(p)}  (log p = ${exact(res.target_log_prob)})`],
    ["Target tokens", `${res.output_tokens.length}${res.generated_target ? ", the model's own greedy continuation" : ""}`],
    ["Method", `${METHOD_NAMES[res.method] || res.method}, ${res.attr_target === "prob" ? "probability" : "log-probability"}, baselines ${res.baseline_sampling === "sample" ? "sampled" : "averaged exactly"}`],
    ["Work", `${res.stats.evaluations} evaluations, ${res.stats.unique_sequences} distinct prompts, ${res.stats.tokens_scored} tokens, ${res.stats.seconds.toFixed(2)} s`],
    ["Model", res.model],
  ];
  $("#facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
  $("#facts dd").id = "target-prob";
  $("#heatmap-help").textContent = `Each cell: how much the feature (column) raises (red) or lowers (blue) the model's ${measureName(res)} of that target token (row). Hover a cell, or focus the chart and use the arrow keys, for the exact number.`;
}

/* ---------- colour ---------- */

// ColorBrewer RdBu (colour-blind safe), blue = negative, red = positive.
const RDBU = ["#053061", "#2166ac", "#4393c3", "#92c5de", "#d1e5f0", "#f7f7f7", "#fddbc7", "#f4a582", "#d6604d", "#b2182b", "#67001f"];
const RDBU_RGB = RDBU.map((h) => [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16)));

/** Colour for t in [-1, 1]. */
function color(t) {
  const x = (Math.max(-1, Math.min(1, Number.isFinite(t) ? t : 0)) + 1) / 2 * (RDBU.length - 1);
  const i = Math.min(RDBU.length - 2, Math.floor(x));
  const f = x - i;
  const c = RDBU_RGB[i].map((a, k) => Math.round(a + (RDBU_RGB[i + 1][k] - a) * f));
  return `rgb(${c.join(",")})`;
}

function textOn(rgb) {
  const [r, g, b] = rgb.match(/\d+/g).map((v) => {
    const s = v / 255;
    return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
  });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.2 ? "#111" : "#fff";
}

/** Round tick values covering [lo, hi]. */
function ticks(lo, hi, count = 5) {
  const span = hi - lo || 1;
  const raw = span / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => span / s <= count) || 10 * mag;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  return out;
}

function tickLabel(v) {
  const s = Math.abs(v) >= 100 ? v.toFixed(0) : String(Number(v.toPrecision(3)));
  return s.replace("-", MINUS);
}

/* ---------- heatmap ---------- */

function featureLabel(f) {
  return f.position != null ? showToken(f.name) : f.name;
}

function featureValue(f) {
  return f.value === f.name ? "" : f.value;
}

function drawHeatmap(box, res) {
  const feats = res.features;
  const rows = res.output_tokens.map(showToken);
  const m = res.token_attr;
  const se = res.token_attr_stderr;
  const nr = rows.length;
  const nc = feats.length;
  const max = Math.max(1e-30, ...m.flat().map(Math.abs));
  const { div, note } = numberScale(max);
  const many = nc > 10;
  const avail = Math.max(280, (box.clientWidth || 708) - 8);
  const narrow = avail < 480;
  const rowLabelW = Math.min(narrow ? 110 : 170, Math.max(40, ...rows.map((r) => textWidth(r, 12))) + 14);
  const pColW = narrow ? 60 : 74;
  const fitW = Math.floor((avail - rowLabelW - pColW - 12) / Math.max(1, nc));
  const colW = many ? 46 : Math.max(narrow ? 52 : 62, Math.min(150, fitW));
  const rowH = 24;
  const headH = many ? Math.min(110, 16 + Math.max(...feats.map((f) => textWidth(featureLabel(f), 12, 600))) * 0.77) : 44;
  const left = rowLabelW;
  const top = headH + 6;
  const gridW = nc * colW;
  const width = left + gridW + pColW + 8 + (many ? Math.max(0, headH * 0.65 - pColW) : 0);
  const legendTop = top + nr * rowH + 26;
  const height = legendTop + 46;
  const measure = measureName(res);

  const root = svg("svg", {
    xmlns: SVG_NS, width, height, viewBox: `0 0 ${width} ${height}`, class: "chart heatmap",
    role: "img", tabindex: 0, "font-family": FONT, "font-size": 12,
    "aria-label": `Heatmap of ${nr} target tokens by ${nc} features; attributions from ${fmt(-max)} to ${fmt(max)}. Arrow keys move between cells.`,
  });
  root.append(svg("rect", { x: 0, y: 0, width, height, fill: "#fff" }));

  // column headers
  feats.forEach((f, j) => {
    const cx = left + j * colW + colW / 2;
    const g = svg("g", { class: "col-head", "data-col": j });
    const full = featureValue(f) ? `${f.name} = ${f.value}` : f.name;
    g.append(svg("title", {}, full));
    if (many) {
      g.append(svg("text", {
        x: cx, y: headH, transform: `rotate(-50 ${cx} ${headH})`, "font-weight": 600, fill: "#222",
      }, fit(featureLabel(f), headH * 1.2, 12, 600)));
    } else {
      const size = narrow ? 11 : 12;
      g.append(svg("text", { x: cx, y: 18, "text-anchor": "middle", "font-weight": 600, fill: "#222", "font-size": size }, fit(featureLabel(f), colW - 4, size, 600)));
      const v = featureValue(f);
      if (v) g.append(svg("text", { x: cx, y: 36, "text-anchor": "middle", fill: "#555", "font-size": size - 1 }, fit(v, colW - 4, size - 1)));
    }
    root.append(g);
  });
  root.append(svg("text", { x: left + gridW + pColW / 2 + 4, y: headH, "text-anchor": "middle", fill: "#555", "font-size": 11 }, "p(token)"));

  // rows
  rows.forEach((label, i) => {
    const y = top + i * rowH;
    root.append(svg("text", {
      x: left - 8, y: y + rowH / 2 + 4, "text-anchor": "end", fill: "#222", class: "row-head", "data-row": i,
    }, svg("title", {}, res.output_tokens[i]), fit(label, rowLabelW - 14, 12)));
    const lp = res.target_log_probs?.[i];
    if (lp !== undefined) {
      root.append(svg("text", { x: left + gridW + pColW / 2 + 4, y: y + rowH / 2 + 4, "text-anchor": "middle", fill: "#555", "font-size": narrow ? 10 : 11, "font-variant-numeric": "tabular-nums" },
        svg("title", {}, `log p = ${exact(lp)}`), fmtProb(Math.exp(lp))));
    }
    for (let j = 0; j < nc; j++) {
      const v = m[i][j];
      const fill = color(v / max);
      const g = svg("g", { class: "cell", "data-row": i, "data-col": j, "data-value": v });
      const tip = `${res.output_tokens[i]} × ${feats[j].name}: ${exact(v)}${se ? ` ± ${exact(se[i][j])}` : ""}`;
      g.append(
        svg("title", {}, tip),
        svg("rect", { x: left + j * colW, y, width: colW, height: rowH, fill, stroke: "#fff", "stroke-width": 1 }),
        svg("text", {
          x: left + j * colW + colW / 2, y: y + rowH / 2 + 4, "text-anchor": "middle", fill: textOn(fill),
          "font-size": many ? 10 : 11.5, "font-variant-numeric": "tabular-nums",
        }, many ? fmt(v / div, 1) : fmt(v / div)),
      );
      root.append(g);
    }
  });

  // legend
  const lw = Math.min(300, Math.max(180, gridW));
  const lx = left;
  const grad = svg("linearGradient", { id: "heat-grad", x1: 0, x2: 1, y1: 0, y2: 0 });
  RDBU.forEach((c, k) => grad.append(svg("stop", { offset: k / (RDBU.length - 1), "stop-color": c })));
  root.append(svg("defs", {}, grad));
  root.append(svg("rect", { x: lx, y: legendTop, width: lw, height: 10, fill: "url(#heat-grad)", stroke: "#999", "stroke-width": 0.5 }));
  [-1, -0.5, 0, 0.5, 1].forEach((t) => {
    const x = lx + ((t + 1) / 2) * lw;
    root.append(svg("line", { x1: x, x2: x, y1: legendTop + 10, y2: legendTop + 14, stroke: "#666" }));
    root.append(svg("text", { x, y: legendTop + 26, "text-anchor": "middle", fill: "#444", "font-size": 11 }, t === 0 ? "0" : fmt((t * max) / div)));
  });
  root.append(svg("text", { x: lx + lw + 10, y: legendTop + 9, fill: "#444", "font-size": 11 }, `← lowers ${measure} · raises ${measure} →`));
  if (note) root.append(svg("text", { x: lx + lw + 10, y: legendTop + 26, fill: "#444", "font-size": 11, class: "scale-note" }, note));

  const focus = svg("rect", { class: "focus-ring", width: colW, height: rowH, fill: "none", stroke: "#111", "stroke-width": 2.5, visibility: "hidden", "pointer-events": "none" });
  root.append(focus);
  box.replaceChildren(root);
  wireHeatmap(root, res, { left, top, colW, rowH, nr, nc, focus });
}

function cellText(res, i, j) {
  const f = res.features[j];
  const se = res.token_attr_stderr?.[i]?.[j];
  const v = res.token_attr[i][j];
  const dir = v > 0 ? "raises" : v < 0 ? "lowers" : "does not change";
  return {
    title: `“${res.output_tokens[i]}” × ${f.name}${featureValue(f) ? ` = “${f.value}”` : ""}`,
    body: `${exact(v)}${se !== undefined ? ` ± ${exact(se)}` : ""}: ${dir} ${measureName(res)} of token ${i + 1}`,
  };
}

function wireHeatmap(root, res, g) {
  let cur = null;
  const tooltip = $("#tooltip");
  const mark = (i, j, fromKey) => {
    cur = [i, j];
    g.focus.setAttribute("x", g.left + j * g.colW);
    g.focus.setAttribute("y", g.top + i * g.rowH);
    g.focus.setAttribute("visibility", "visible");
    for (const n of $$(".row-head, .col-head", root)) n.classList.toggle("hl", Number(n.dataset.row ?? -1) === i || Number(n.dataset.col ?? -1) === j);
    const t = cellText(res, i, j);
    $("#heatmap-readout").textContent = `${t.title}: ${t.body}`;
    if (fromKey) {
      const r = root.getBoundingClientRect();
      showTooltip(t, r.left + g.left + (j + 0.5) * g.colW, r.top + g.top + i * g.rowH);
    }
  };
  const clear = () => {
    g.focus.setAttribute("visibility", "hidden");
    for (const n of $$(".hl", root)) n.classList.remove("hl");
    tooltip.hidden = true;
  };
  root.addEventListener("pointermove", (e) => {
    const cell = e.target.closest(".cell");
    if (!cell) return clear();
    const i = Number(cell.dataset.row);
    const j = Number(cell.dataset.col);
    mark(i, j, false);
    showTooltip(cellText(res, i, j), e.clientX, e.clientY - 8);
  });
  root.addEventListener("pointerleave", clear);
  root.addEventListener("blur", clear);
  root.addEventListener("focus", () => mark(...(cur || [0, 0]), true));
  root.addEventListener("keydown", (e) => {
    const [i, j] = cur || [0, 0];
    const moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1], Home: [0, -j], End: [0, g.nc - 1 - j] };
    const d = moves[e.key];
    if (e.key === "Escape") return clear();
    if (!d) return;
    e.preventDefault();
    mark(Math.max(0, Math.min(g.nr - 1, i + d[0])), Math.max(0, Math.min(g.nc - 1, j + d[1])), true);
  });
}

function showTooltip(t, x, y) {
  const tip = $("#tooltip");
  tip.replaceChildren(el("strong", { text: t.title }), el("span", { text: t.body }));
  tip.hidden = false;
  const w = tip.offsetWidth;
  const h = tip.offsetHeight;
  const left = Math.max(4, Math.min(window.innerWidth - w - 4, x - w / 2));
  const top = y - h - 6 < 4 ? y + 28 : y - h - 6;
  tip.style.left = `${left + window.scrollX}px`;
  tip.style.top = `${top + window.scrollY}px`;
}

function drawTable(box, res) {
  const se = res.token_attr_stderr;
  const head = el("tr", {}, el("th", { scope: "col", text: "Target token" }),
    ...res.features.map((f) => el("th", { scope: "col", text: featureValue(f) ? `${f.name} (${f.value})` : f.name })),
    el("th", { scope: "col", text: "p(token)" }));
  const body = res.output_tokens.map((t, i) => el("tr", {},
    el("th", { scope: "row", text: showToken(t) }),
    ...res.token_attr[i].map((v, j) => el("td", { text: exact(v) + (se ? ` ± ${exact(se[i][j])}` : "") })),
    el("td", { text: res.target_log_probs ? fmtProb(Math.exp(res.target_log_probs[i])) : "" })));
  const total = el("tr", { class: "total" }, el("th", { scope: "row", text: "Whole target" }),
    ...res.seq_attr.map((v, j) => el("td", { text: exact(v) + (res.seq_attr_stderr ? ` ± ${exact(res.seq_attr_stderr[j])}` : "") })),
    el("td", { text: fmtProb(Math.exp(res.target_log_prob)) }));
  box.replaceChildren(el("table", {}, el("thead", {}, head), el("tbody", {}, ...body, total)));
}

/* ---------- bar chart ---------- */

/** White outline behind text that may cross grid lines. */
const HALO = { stroke: "#fff", "stroke-width": 3, "stroke-linejoin": "round", "paint-order": "stroke" };

function drawBars(box, res) {
  const feats = res.features;
  const vals = res.seq_attr;
  const se = res.seq_attr_stderr;
  const avail = Math.max(280, (box.clientWidth || 708) - 8);
  const narrow = avail < 520;
  const labelW = narrow ? 0 : Math.min(230, Math.max(80, ...feats.map((f) => Math.max(textWidth(f.name, 12, 600), textWidth(featureValue(f), 11)))) + 16);
  const rowH = narrow ? 48 : 38;
  const top = 10;
  const plotW = Math.max(200, Math.min(640, avail - labelW - 32));
  const left = labelW + 12;
  const room = 50; // space for the value written past each bar's end
  const lo = Math.min(0, ...vals.map((v, i) => v - (se?.[i] || 0)));
  const hi = Math.max(0, ...vals.map((v, i) => v + (se?.[i] || 0)));
  const t = ticks(lo, hi);
  const d0 = Math.min(t[0], lo);
  const d1 = Math.max(t[t.length - 1], hi);
  const x0px = lo < 0 ? left + room : left;
  const x1px = hi > 0 ? left + plotW - room : left + plotW;
  const x = (v) => x0px + ((v - d0) / (d1 - d0 || 1)) * (x1px - x0px);
  const height = top + feats.length * rowH + 44;
  const width = left + plotW + 16;
  const max = Math.max(1e-30, ...vals.map(Math.abs));
  const { div, note } = numberScale(Math.max(...t.map(Math.abs), max));
  const root = svg("svg", {
    xmlns: SVG_NS, width, height, viewBox: `0 0 ${width} ${height}`, class: "chart bars", role: "img",
    "font-family": FONT, "font-size": 12,
    "aria-label": `Bar chart of ${feats.length} features: ${feats.map((f, i) => `${f.name} ${fmt(vals[i])}`).join(", ")}.`,
  });
  root.append(svg("rect", { x: 0, y: 0, width, height, fill: "#fff" }));
  const bottom = top + feats.length * rowH;
  for (const v of t) {
    root.append(svg("line", { x1: x(v), x2: x(v), y1: top, y2: bottom, stroke: v === 0 ? "#333" : "#e3e3e3", "stroke-width": v === 0 ? 1.2 : 1 }));
    root.append(svg("text", { x: x(v), y: bottom + 16, "text-anchor": "middle", fill: "#555", "font-size": 11 }, tickLabel(v / div)));
  }
  root.append(svg("text", { x: left + plotW / 2, y: bottom + 36, "text-anchor": "middle", fill: "#444", "font-size": 11 },
    `attribution to ${measureName(res)} of the whole target${note ? ` (${note})` : ""}`));
  feats.forEach((f, i) => {
    const v = vals[i];
    const y = top + i * rowH;
    const barY = narrow ? y + 20 : y + 8;
    const barH = narrow ? 20 : 22;
    const name = featureLabel(f);
    const value = featureValue(f);
    if (narrow) {
      root.append(svg("text", { x: left, y: y + 14, fill: "#222", "font-weight": 600, ...HALO }, svg("title", {}, value ? `${name} = ${value}` : name),
        fit(name + (value ? ` · ${value}` : ""), plotW, 12, 600)));
    } else {
      root.append(svg("text", { x: labelW, y: y + (value ? 17 : 23), "text-anchor": "end", fill: "#222", "font-weight": 600 }, svg("title", {}, name), fit(name, labelW - 16, 12, 600)));
      if (value) root.append(svg("text", { x: labelW, y: y + 31, "text-anchor": "end", fill: "#555", "font-size": 11 }, svg("title", {}, value), fit(value, labelW - 16, 11)));
    }
    const x0 = x(Math.min(0, v));
    const w = Math.max(1, Math.abs(x(v) - x(0)));
    const fill = v >= 0 ? color(Math.max(0.55, v / max)) : color(Math.min(-0.55, v / max));
    const g = svg("g", { class: "bar", "data-index": i, "data-value": v, "data-feature": f.name });
    g.append(svg("title", {}, `${name}${value ? ` = ${value}` : ""}: ${exact(v)}${se ? ` ± ${exact(se[i])}` : ""}`));
    g.append(svg("rect", { x: x0, y: barY, width: w, height: barH, fill, rx: 2 }));
    if (se) {
      const a = x(v - se[i]);
      const b = x(v + se[i]);
      const cy = barY + barH / 2;
      g.append(svg("path", { d: `M${a},${cy}H${b}M${a},${cy - 5}V${cy + 5}M${b},${cy - 5}V${cy + 5}`, stroke: "#222", "stroke-width": 1.2, fill: "none" }));
    }
    const end = v >= 0 ? Math.max(x(v), se ? x(v + se[i]) : 0) + 5 : Math.min(x(v), se ? x(v - se[i]) : Infinity) - 5;
    g.append(svg("text", { x: end, y: barY + barH / 2 + 4, "text-anchor": v >= 0 ? "start" : "end", fill: "#222", "font-variant-numeric": "tabular-nums" }, fmt(v / div)));
    root.append(g);
  });
  box.replaceChildren(root);
}

/* ---------- target generation ---------- */

function showGenerated(text, note) {
  const p = $("#generated");
  p.hidden = false;
  p.replaceChildren(el("span", { class: "note", text: note }), " ", el("q", { text: text }));
}

async function generate() {
  clearErrors($("#probe"));
  let prompt = $("#text").value;
  if (state.mode === "template") {
    const template = $("#template").value;
    const { names, error } = parseTemplate(template);
    if (error) return showError({ field: "template", message: error });
    prompt = renderTemplate(template, Object.fromEntries(names.map((n) => [n, rowFor(n).value])));
  }
  const body = { prompt };
  if (intField("max_new_tokens") !== undefined) body.max_new_tokens = intField("max_new_tokens");
  const button = $("#generate");
  button.disabled = true;
  button.textContent = "Asking…";
  try {
    const out = await api("POST", "/v1/generate", body);
    $("#target").value = out.text;
    state.generated = { prompt, text: out.text };
    showGenerated(out.text, `The model's greedy continuation (${out.tokens?.length ?? "?"} tokens), now the target:`);
    saveState();
    return out.text;
  } catch (err) {
    showError(err.field === "prompt" ? { ...err, field: state.mode === "template" ? "template" : "text" } : err);
    return undefined;
  } finally {
    button.disabled = false;
    button.textContent = "Ask the model";
  }
}

/* ---------- token input ---------- */

function setMode(mode) {
  state.mode = mode;
  const radio = $(`input[name=mode][value="${mode}"]`);
  if (radio) radio.checked = true;
  $("#template-mode").hidden = mode !== "template";
  $("#tokens-mode").hidden = mode !== "tokens";
  const tokens = mode === "tokens";
  $("#compare-needs-template").hidden = !tokens;
  for (const id of ["compare-ph", "compare-values", "compare-run"]) $(`#${id}`).disabled = tokens;
  if (tokens) tokenizeSoon();
}

/** Byte offsets (from the server) to string pieces. */
function pieces(text, offsets) {
  const bytes = new TextEncoder().encode(text);
  const dec = new TextDecoder();
  return offsets.map(([a, b]) => dec.decode(bytes.slice(a, b)));
}

async function tokenize() {
  const text = $("#text").value;
  const box = $("#token-chips");
  if (text === "") {
    state.tokens = null;
    return box.replaceChildren();
  }
  try {
    const out = await api("POST", "/v1/tokenize", { text });
    if ($("#text").value !== text) return;
    state.tokens = { text, ids: out.ids, pieces: pieces(text, out.offsets) };
    drawChips();
  } catch (err) {
    showError(err.field ? err : { ...err, field: "text" });
  }
}
const tokenizeSoon = debounce(tokenize, 300);

function drawChips() {
  const t = state.tokens;
  if (!t) return;
  const chips = t.ids.map((id, p) => {
    const piece = t.pieces[p];
    const skipped = state.skip.has(id) || state.skip.has(piece) || state.skip.has(piece.trim());
    return el("button", {
      type: "button", "aria-pressed": skipped ? "true" : "false", "data-id": id,
      title: `token ${id}${skipped ? ", kept fixed" : ""}`, text: showToken(piece),
      onclick: () => {
        if (skipped) {
          state.skip.delete(id);
          state.skip.delete(piece);
          state.skip.delete(piece.trim());
        } else state.skip.add(id);
        drawChips();
        $(`#token-chips button:nth-child(${p + 1})`)?.focus();
        saveState();
      },
    });
  });
  $("#token-chips").replaceChildren(...chips);
}

/* ---------- compare ---------- */

function fillCompareSelect() {
  const sel = $("#compare-ph");
  const keep = sel.value;
  const opts = state.names.map((n) => el("option", { value: n, text: `{${n}}` }));
  const same = opts.length === sel.options.length && opts.every((o, i) => o.value === sel.options[i].value);
  if (same) return;
  sel.replaceChildren(...opts);
  if (state.names.includes(keep)) sel.value = keep;
  fillCompareValues(true);
}

/** Default compare list: the placeholder's value, then its baselines. */
function fillCompareValues(force) {
  const area = $("#compare-values");
  const name = $("#compare-ph").value;
  if (!name) return;
  if (!force && area.dataset.edited) return;
  const row = rowFor(name);
  const values = [...new Set([row.value, ...row.baselines].filter((v) => v.trim() !== ""))];
  area.value = values.join("\n");
  area.rows = Math.max(3, Math.min(8, values.length));
  delete area.dataset.edited;
}

async function runCompare() {
  if (state.compareAbort || state.mode !== "template") return;
  clearErrors($("#compare-card"));
  clearErrors($("#probe"));
  const template = $("#template").value;
  const { names, error } = parseTemplate(template);
  if (error) return showError({ field: "template", message: error });
  const placeholder = $("#compare-ph").value;
  if (!placeholder || !names.includes(placeholder)) {
    return showError({ message: "Choose a placeholder of the template." }, "#err-compare");
  }
  const values = [...new Set(lines($("#compare-values").value))];
  if (values.length < 2) return showError({ message: "Give at least two values to compare, one per line." }, "#err-compare");
  let target = targetText();
  if (target === undefined) {
    $("#compare-status").textContent = "No target yet: asking the model for its continuation first…";
    target = await generate();
    if (target === undefined) return;
  }
  const others = Object.fromEntries(names.map((n) => [n, rowFor(n).value]));
  // Everything but the compared placeholder is written into the template, so each value costs
  // two scored prompts: the prompt with that value, and (shared) the one with the first value.
  const fixed = renderTemplate(template, others, placeholder);
  const reference = values[0];
  const abort = new AbortController();
  state.compareAbort = abort;
  const cmp = { placeholder, target, reference, template: fixed, items: [] };
  state.compare = cmp;
  $("#compare-run").disabled = true;
  $("#compare-cancel").disabled = false;
  const bar = $("#compare-progress");
  bar.max = values.length;
  bar.value = 0;
  saveState();
  try {
    for (const value of values) {
      $("#compare-status").textContent = `Scoring “${value}” (${cmp.items.length + 1} of ${values.length})…`;
      const res = await api("POST", "/v1/attributions", {
        template: fixed, values: { [placeholder]: value }, baselines: { [placeholder]: reference },
        target, method: "feature_ablation", attr_target: "log_prob",
      }, abort.signal);
      cmp.items.push({ value, log_prob: res.target_log_prob, token_log_probs: res.target_log_probs, output_tokens: res.output_tokens, prompt: res.prompt });
      bar.value = cmp.items.length;
      $("#compare-exports").hidden = false;
      drawCompare($("#compare-chart"), cmp);
    }
    $("#compare-status").textContent = `Done: ${values.length} values of {${placeholder}}, same target.`;
  } catch (err) {
    if (err.name === "AbortError") $("#compare-status").textContent = `Cancelled after ${cmp.items.length} of ${values.length} values.`;
    else {
      $("#compare-status").textContent = "";
      showError(err.field ? err : err, err.field ? "#err-compare" : "#err-compare");
    }
  } finally {
    state.compareAbort = null;
    $("#compare-run").disabled = false;
    $("#compare-cancel").disabled = true;
  }
}

function drawCompare(box, cmp) {
  const items = cmp.items;
  if (!items.length) return box.replaceChildren();
  const ref = items.find((it) => it.value === cmp.reference) || items[0];
  const avail = Math.max(280, (box.clientWidth || 708) - 8);
  const narrow = avail < 520;
  const labelW = narrow ? 0 : Math.min(200, Math.max(60, ...items.map((it) => textWidth(it.value, 12, 600))) + 16);
  const infoW = narrow ? 0 : 170;
  const plotW = Math.max(180, Math.min(520, avail - labelW - infoW - 24));
  const left = labelW + 10;
  const rowH = narrow ? 46 : 30;
  const top = 30;
  const lps = items.map((it) => it.log_prob);
  const lo = Math.min(...lps);
  const hi = Math.max(...lps);
  const pad = Math.max((hi - lo) * 0.08, 0.05);
  const t = ticks(lo - pad, hi + pad, 5);
  const d0 = Math.min(t[0], lo - pad);
  const d1 = Math.max(t[t.length - 1], hi + pad);
  const x = (v) => left + ((v - d0) / (d1 - d0)) * plotW;
  const bottom = top + items.length * rowH;
  const width = left + plotW + infoW + 10;
  const height = bottom + 44;
  const root = svg("svg", {
    xmlns: SVG_NS, width, height, viewBox: `0 0 ${width} ${height}`, class: "chart compare", role: "img",
    "font-family": FONT, "font-size": 12,
    "aria-label": `log p of the target for each value of {${cmp.placeholder}}: ${items.map((it) => `${it.value} ${exact(it.log_prob)}`).join(", ")}.`,
  });
  root.append(svg("rect", { x: 0, y: 0, width, height, fill: "#fff" }));
  root.append(svg("text", { x: left, y: 14, fill: "#444", "font-size": 11 }, fit("log p(target | prompt) · further right: more likely", plotW - 8, 11)));
  if (!narrow) root.append(svg("text", { x: left + plotW + 14, y: 14, fill: "#444", "font-size": 11 }, "log p · p relative"));
  for (const v of t) {
    root.append(svg("line", { x1: x(v), x2: x(v), y1: top - 4, y2: bottom, stroke: "#e3e3e3" }));
    root.append(svg("text", { x: x(v), y: bottom + 16, "text-anchor": "middle", fill: "#555", "font-size": 11 }, tickLabel(v)));
  }
  root.append(svg("line", { x1: x(ref.log_prob), x2: x(ref.log_prob), y1: top - 4, y2: bottom, stroke: "#666", "stroke-dasharray": "4 3" }));
  root.append(svg("text", { x: left + plotW / 2, y: bottom + 36, "text-anchor": "middle", fill: "#444", "font-size": 11 },
    `log-probability of the target; dashed: “${fit(ref.value, 120, 11)}”`));
  items.forEach((it, i) => {
    const y = top + i * rowH;
    const cy = narrow ? y + 32 : y + rowH / 2;
    const delta = it.log_prob - ref.log_prob;
    const g = svg("g", { class: "compare-row", "data-value": it.log_prob, "data-label": it.value });
    g.append(svg("title", {}, `${it.value}: log p = ${exact(it.log_prob)}, p = ${fmtProb(Math.exp(it.log_prob))}, ${fmt(delta)} vs “${ref.value}”`));
    if (narrow) {
      g.append(svg("text", { x: left, y: y + 14, fill: "#222", "font-weight": 600, ...HALO }, fit(`${it.value} · ${exact(it.log_prob).replace(/(\.\d{3})\d+/, "$1")} · ${it === ref ? "reference" : `×${Math.exp(delta).toPrecision(2)}`}`, plotW, 12, 600)));
    } else {
      g.append(svg("text", { x: labelW, y: cy + 4, "text-anchor": "end", fill: "#222", "font-weight": 600 }, fit(it.value, labelW - 16, 12, 600)));
    }
    g.append(svg("line", { x1: x(ref.log_prob), x2: x(it.log_prob), y1: cy, y2: cy, stroke: color(delta >= 0 ? 0.7 : -0.7), "stroke-width": 3 }));
    g.append(svg("circle", { cx: x(it.log_prob), cy, r: 6, fill: it === ref ? "#333" : color(delta >= 0 ? 0.85 : -0.85), stroke: "#fff", "stroke-width": 1.5 }));
    if (!narrow) {
      g.append(svg("text", { x: left + plotW + 14, y: cy + 4, fill: "#333", "font-variant-numeric": "tabular-nums", "font-size": 11.5 },
        `${exact(it.log_prob).replace(/(\.\d{3})\d+/, "$1")}  ·  ${it === ref ? "reference" : `×${Math.exp(delta).toPrecision(2)}`}`));
    }
    root.append(g);
  });
  box.replaceChildren(root);
}

/* ---------- export ---------- */

function download(name, blob) {
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 5000);
}

/** The chart as a standalone SVG document, with a title line saying what it shows. */
function exportSvg(node, title) {
  const copy = node.cloneNode(true);
  copy.querySelector(".focus-ring")?.remove();
  copy.removeAttribute("tabindex");
  copy.removeAttribute("class");
  const w = node.width.baseVal.value;
  const h = node.height.baseVal.value;
  const titles = [title].flat().filter(Boolean);
  const head = titles.length ? 10 + 18 * titles.length : 0;
  const body = svg("g", { transform: `translate(0 ${head})` }, ...Array.from(copy.childNodes));
  copy.replaceChildren(svg("rect", { x: 0, y: 0, width: w, height: h + head, fill: "#fff" }), body);
  titles.forEach((line, k) => {
    const size = k === 0 ? 13 : 11.5;
    const weight = k === 0 ? 600 : 400;
    copy.append(svg("text", { x: 8, y: 20 + 18 * k, fill: k === 0 ? "#111" : "#444", "font-size": size, "font-weight": weight }, fit(line, w - 16, size, weight)));
  });
  setAttrs(copy, { width: w, height: h + head, viewBox: `0 0 ${w} ${h + head}` });
  return { text: `<?xml version="1.0" encoding="UTF-8"?>\n${new XMLSerializer().serializeToString(copy)}`, w, h: h + head };
}

function chartTitle(kind) {
  const r = state.result?.response;
  const c = state.compare;
  if (kind === "compare-chart" && c) return `log p of “${c.target.trim()}” for each value of {${c.placeholder}}`;
  if (!r) return "";
  const what = kind === "heatmap" ? "Attribution per target token" : "Attribution for the whole target";
  return [`${what} · ${METHOD_NAMES[r.method] || r.method}`, `“${r.prompt}” → “${r.target.trim()}”`];
}

function exportPng(node, title, name) {
  const { text, w, h } = exportSvg(node, title);
  const img = new Image();
  const scale = 2;
  img.onload = () => {
    const canvas = el("canvas", { width: w * scale, height: h * scale });
    const ctx = canvas.getContext("2d");
    ctx.scale(scale, scale);
    ctx.drawImage(img, 0, 0);
    canvas.toBlob((blob) => download(name, blob), "image/png");
  };
  img.src = `data:image/svg+xml;charset=utf-8,${encodeURIComponent(text)}`;
}

function csvCell(v) {
  const s = String(v);
  return /[",\n\r]/.test(s) || /^[=+\-@]/.test(s) && isNaN(Number(s)) ? `"${s.replace(/"/g, '""')}"` : s;
}

function csv(rows) {
  return rows.map((r) => r.map(csvCell).join(",")).join("\r\n") + "\r\n";
}

function exportData(kind, format) {
  const stamp = new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19);
  if (kind === "compare") {
    const c = state.compare;
    if (!c) return;
    const ref = c.items.find((it) => it.value === c.reference) || c.items[0];
    if (format === "json") {
      return download(`llm-attr-compare-${stamp}.json`, new Blob([JSON.stringify({ placeholder: c.placeholder, template: c.template, target: c.target, reference: c.reference, items: c.items }, null, 2)], { type: "application/json" }));
    }
    const rows = [["value", "log_prob", "prob", "delta_log_prob_vs_reference"], ...c.items.map((it) => [it.value, it.log_prob, Math.exp(it.log_prob), it.log_prob - ref.log_prob])];
    return download(`llm-attr-compare-${stamp}.csv`, new Blob([csv(rows)], { type: "text/csv" }));
  }
  if (!state.result) return;
  const { request, response: r } = state.result;
  const names = r.features.map((f) => f.name);
  if (format === "json") {
    const data = kind === "token"
      ? { request, output_tokens: r.output_tokens, target_log_probs: r.target_log_probs, features: r.features, token_attr: r.token_attr, token_attr_stderr: r.token_attr_stderr ?? null }
      : { request, features: r.features, seq_attr: r.seq_attr, seq_attr_stderr: r.seq_attr_stderr ?? null, target_log_prob: r.target_log_prob };
    return download(`llm-attr-${kind}-attr-${stamp}.json`, new Blob([JSON.stringify(data, null, 2)], { type: "application/json" }));
  }
  let rows;
  if (kind === "token") {
    const se = r.token_attr_stderr;
    rows = [["output_token", ...names, ...(se ? names.map((n) => `${n}_stderr`) : []), "log_prob"],
      ...r.output_tokens.map((t, i) => [t, ...r.token_attr[i], ...(se ? se[i] : []), r.target_log_probs?.[i] ?? ""])];
  } else {
    const se = r.seq_attr_stderr;
    rows = [["feature", "value", "seq_attr", ...(se ? ["stderr"] : [])], ...r.features.map((f, j) => [f.name, f.value, r.seq_attr[j], ...(se ? [se[j]] : [])])];
  }
  download(`llm-attr-${kind}-attr-${stamp}.csv`, new Blob([csv(rows)], { type: "text/csv" }));
}

function onExport(e) {
  const b = e.target.closest("button[data-export]");
  if (!b) return;
  const { export: kind, format } = b.dataset;
  const charts = { heatmap: "#heatmap svg", bars: "#bars svg", "compare-chart": "#compare-chart svg" };
  if (charts[kind]) {
    const node = $(charts[kind]);
    if (!node) return;
    const stamp = new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19);
    const name = `llm-attr-${kind}-${stamp}.${format}`;
    if (format === "svg") download(name, new Blob([exportSvg(node, chartTitle(kind)).text], { type: "image/svg+xml" }));
    else exportPng(node, chartTitle(kind), name);
  } else exportData(kind, format);
}

/* ---------- start ---------- */

function onMethodChange() {
  const m = method();
  const ns = $("#n_samples");
  ns.disabled = !SAMPLED.has(m);
  ns.placeholder = SAMPLED.has(m) ? String(DEFAULT_SAMPLES[m]) : "not used";
  saveState();
}

async function loadModelInfo() {
  try {
    const info = await api("GET", "/v1/model");
    const name = (info.spec || "").split(/[\\/]/).pop() || info.spec;
    const params = info.parameters ? `${Math.round(info.parameters / 1e6)}M parameters` : "";
    $("#model-info").textContent = [name, info.architecture, params, info.dtype].filter(Boolean).join(" · ");
  } catch (err) {
    if (err.status === 503) {
      $("#model-info").textContent = "Loading the model…";
      setTimeout(loadModelInfo, 1000);
    } else {
      $("#model-info").textContent = err.status === 401 ? "API key needed (see Connection)" : "Model not reachable";
    }
  }
}

async function start() {
  $("#probe").addEventListener("submit", runJob);
  $("#cancel").addEventListener("click", cancelJob);
  $("#template").addEventListener("input", () => {
    delete $("#err-template").dataset.server;
    onTemplateInput();
    saveState();
  });
  $("#seed-template").addEventListener("change", (e) => e.target.value && loadSeed(e.target.value));
  $("#generate").addEventListener("click", generate);
  for (const input of $$("input[name=mode]")) {
    input.addEventListener("change", () => {
      if (input.value === "tokens" && $("#text").value === "") {
        const { names, error } = parseTemplate($("#template").value);
        if (!error) $("#text").value = renderTemplate($("#template").value, Object.fromEntries(names.map((n) => [n, rowFor(n).value])));
      }
      setMode(input.value);
      saveState();
    });
  }
  $("#text").addEventListener("input", () => {
    tokenizeSoon();
    saveState();
  });
  $("#baseline_token").addEventListener("input", saveState);
  $("#compare-run").addEventListener("click", runCompare);
  $("#compare-cancel").addEventListener("click", () => state.compareAbort?.abort());
  $("#compare-ph").addEventListener("change", () => {
    fillCompareValues(true);
    saveState();
  });
  $("#compare-values").addEventListener("input", (e) => {
    e.target.dataset.edited = "1";
    saveState();
  });
  for (const input of $$("input[name=method]")) input.addEventListener("change", onMethodChange);
  for (const id of ["target", "max_new_tokens", "n_samples", "seed", "attr_target", "baseline_sampling", "num_trials"]) {
    $(`#${id}`).addEventListener("input", saveState);
    $(`#${id}`).addEventListener("change", saveState);
  }
  $("#target").addEventListener("input", () => ($("#generated").hidden = true));
  // Editing a field clears its server message.
  document.addEventListener("input", (e) => {
    const ids = (e.target.getAttribute?.("aria-describedby") || "").split(/\s+/);
    for (const id of ids) {
      const box = id && document.getElementById(id);
      if (box?.classList.contains("field-error") && box.dataset.server) {
        box.textContent = "";
        delete box.dataset.server;
        e.target.removeAttribute("aria-invalid");
      }
    }
  });
  $("#results").addEventListener("click", onExport);
  $("#share").addEventListener("click", async () => {
    history.replaceState(null, "", `#${pageState()}`);
    try {
      await navigator.clipboard.writeText(location.href);
      $("#progress-text").textContent = "Link copied: it opens this probe with every setting.";
    } catch {
      $("#progress-text").textContent = "The address bar now holds a link to this probe.";
    }
  });
  const key = $("#api-key");
  key.value = sessionStorage.getItem("llm-attr-key") || "";
  key.addEventListener("change", () => {
    sessionStorage.setItem("llm-attr-key", key.value.trim());
    loadModelInfo();
    loadTemplates();
  });
  window.addEventListener("resize", debounce(drawAll, 150));

  const hash = readHash();
  if (hash.req) applyRequest(hash.req);
  else onMethodChange();
  loadModelInfo();
  await loadTemplates(hash);
  if (hash.cmp && state.names.includes(hash.cmp.placeholder)) {
    $("#compare-ph").value = hash.cmp.placeholder;
    if (Array.isArray(hash.cmp.values)) {
      $("#compare-values").value = hash.cmp.values.join("\n");
      $("#compare-values").dataset.edited = "1";
    }
  }
  if (hash.bad) showError({ message: "The link is damaged; starting from a seed template." });
  if (hash.job) reopenJob(hash.job, hash.req);
  document.body.dataset.ready = "1";
}

async function loadTemplates(hash = {}) {
  try {
    const { templates } = await api("GET", "/v1/templates");
    state.templates = templates || [];
  } catch (err) {
    state.templates = [];
    $("#err-template").textContent = `Seed templates unavailable: ${err.message}`;
  }
  const sel = $("#seed-template");
  const keep = sel.value;
  sel.replaceChildren(el("option", { value: "", text: "Your own template" }),
    ...state.templates.map((t) => el("option", { value: t.id, text: `${t.id} · ${t.title}` })));
  if (hash.req) {
    const seed = state.templates.find((t) => t.id === hash.seed && t.template === hash.req.template);
    sel.value = seed ? seed.id : "";
  } else if (keep) sel.value = keep;
  else if (state.templates.length && !$("#template").value) loadSeed(state.templates[0].id);
}

/** A shared link may name a job: show its result if the server still has it. */
async function reopenJob(id, request) {
  try {
    const job = await api("GET", `/v1/jobs/${encodeURIComponent(id)}`);
    state.jobId = job.id;
    if (job.state === "queued" || job.state === "running") await followJob(job, request);
    else finishJob(job, request);
  } catch {
    state.jobId = null;
    saveState();
  }
}

start();
