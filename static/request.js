// The request the form describes, and the page state kept in the URL.

import { $, debounce, lines } from "./dom.js";
import { onTemplateInput, clearRows } from "./form.js";
import { state, rowFor } from "./state.js";
import { parseTemplate } from "./template.js";
import { setMode } from "./tokens.js";

const SAMPLED = new Set(["shapley_value_sampling", "lime", "kernel_shap"]);
const DEFAULT_SAMPLES = { shapley_value_sampling: 25, lime: 50, kernel_shap: 25 };

function method() {
  return $("input[name=method]:checked")?.value || "shapley_values";
}

export function intField(id) {
  const v = $(`#${id}`).value.trim();
  if (v === "") return undefined;
  const n = Number(v);
  return Number.isFinite(n) ? n : v; // the server names the field if it is not a number
}

export function targetText() {
  const t = $("#target").value;
  return t.trim() === "" ? undefined : t;
}

/** The AttributeRequest (src/request.rs) the form describes. */
export function buildRequest() {
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
export function applyRequest(req) {
  clearRows();
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

export function pageState() {
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

export const saveState = debounce(() => {
  history.replaceState(null, "", `#${pageState()}`);
}, 250);

export function readHash() {
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

export function onMethodChange() {
  const m = method();
  const ns = $("#n_samples");
  ns.disabled = !SAMPLED.has(m);
  ns.placeholder = SAMPLED.has(m) ? String(DEFAULT_SAMPLES[m]) : "not used";
  saveState();
}
