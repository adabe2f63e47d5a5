// The requests the form describes: AttributeRequest (src/request.rs) and AuditRequest.
// Reads the form and the state; writes nothing. Imported by the modules above it, never the reverse.

import { $, lines } from "./dom.js";
import { state, rowFor } from "./state.js";
import { parseTemplate, renderTemplate } from "./template.js";

/** What the page knows of each method: sampling or exact, its default sample count, and whether
 * it works from the model's gradients (no baselines to sample). */
export const METHODS = {
  feature_ablation: { sampled: false },
  shapley_values: { sampled: false },
  shapley_value_sampling: { sampled: true, samples: 25 },
  lime: { sampled: true, samples: 50 },
  kernel_shap: { sampled: true, samples: 25 },
  context_cite: { sampled: true, samples: 64 },
  integrated_gradients: { sampled: false, gradient: true, steps: 50 },
  gradient_x_input: { sampled: false, gradient: true },
  gradient_shap: { sampled: true, samples: 5, gradient: true },
};

export function method() {
  return $("input[name=method]:checked")?.value || "shapley_values";
}

export function intField(id) {
  const v = $(`#${id}`).value.trim();
  if (v === "") return undefined;
  const n = Number(v);
  return Number.isFinite(n) ? n : v; // the server names the field if it is not a number
}

/** A continuation field's text exactly as written (spaces are part of it), or undefined when blank. */
function continuation(id) {
  const t = $(`#${id}`).value;
  return t.trim() === "" ? undefined : t;
}

export function targetText() {
  return continuation("target");
}

/** The continuation the target is weighed against (contrast_target), if any. */
export function contrastText() {
  return continuation("contrast_target");
}

/** Repeats only help where a run can differ: sampling methods, or baselines drawn at random.
 * A gradient method that samples takes more samples instead. */
export function repeatsUseful() {
  const m = METHODS[method()];
  if (m?.gradient) return false;
  return m?.sampled || $("#baseline_sampling").value === "sample";
}

/** The chat messages the editors hold (an empty system message is left out). */
function chatMessages() {
  const out = [];
  const system = $("#system").value;
  if (system.trim() !== "") out.push({ role: "system", content: system });
  out.push({ role: "user", content: $("#user").value });
  return out;
}

/** Placeholder names of the current input, in order of first use, and the first parse error. */
export function inputNames() {
  if (state.mode === "tokens") return { names: [], error: null, field: "text" };
  if (state.mode === "template") return { ...parseTemplate($("#template").value), field: "template" };
  const names = [];
  for (const m of chatMessages()) {
    const { names: own, error } = parseTemplate(m.content);
    if (error) return { names, error: `${m.role === "system" ? "System" : "User"} message: ${error}`, field: "messages" };
    for (const n of own) if (!names.includes(n)) names.push(n);
  }
  return { names, error: null, field: "messages" };
}

/** The placeholders (of the input, not in `except`) with an empty value not marked as intended. */
export function emptyValues(except = []) {
  if (state.mode === "tokens") return [];
  return inputNames().names.filter((n) => !except.includes(n) && rowFor(n).value.trim() === "" && !rowFor(n).emptyOk);
}

/** What the page says of an empty value, next to its field. */
export function emptyValueMessage(name) {
  return `{${name}} is empty: the prompt would run without it, as if it were removed. Give it a value, or tick “Empty is intended”.`;
}

/** The first empty value as an error for its field ({field, message}), or null. */
export function emptyValueProblem(except = []) {
  const [name] = emptyValues(except);
  return name === undefined ? null : { field: `values.${name}`, message: emptyValueMessage(name) };
}

/** The prompt text as the model sees it, where the page can write it (not for chat). */
export function promptText() {
  if (state.mode === "tokens") return $("#text").value;
  if (state.mode === "chat") return null;
  const { names, error } = inputNames();
  if (error) return null;
  return renderTemplate($("#template").value, Object.fromEntries(names.map((n) => [n, rowFor(n).value])));
}

/** The input part of a request: template, text or messages, with values, baselines and groups. */
function promptInput() {
  if (state.mode === "tokens") {
    const req = { text: $("#text").value };
    if (state.skip.size) req.skip_tokens = [...state.skip];
    // A perturbed token becomes the given token (id 0 when none is given), or is removed.
    const b = $("#baseline_token").value;
    if ($("#baseline_mode").value !== "remove") req.baseline_token = b.trim() === "" ? 0 : /^\d+$/.test(b.trim()) ? Number(b.trim()) : b;
    return req;
  }
  const req = state.mode === "chat" ? { messages: chatMessages() } : { template: $("#template").value };
  req.values = {};
  const baselines = {};
  const mask = {};
  for (const name of inputNames().names) {
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

/** The AttributeRequest the form describes. */
export function buildRequest() {
  const req = promptInput();
  const target = targetText();
  if (target !== undefined) req.target = target;
  else if (intField("max_new_tokens") !== undefined) req.max_new_tokens = intField("max_new_tokens");
  const contrast = contrastText();
  if (contrast !== undefined) req.contrast_target = contrast;
  req.method = method();
  // Gradient methods replace a placeholder's tokens with token 0: baseline strings do not apply.
  if (METHODS[req.method]?.gradient) delete req.baselines;
  req.attr_target = $("#attr_target").value;
  if (METHODS[req.method]?.sampled && intField("n_samples") !== undefined) req.n_samples = intField("n_samples");
  if (METHODS[req.method]?.steps && intField("n_steps") !== undefined) req.n_steps = intField("n_steps");
  if (intField("seed") !== undefined) req.seed = intField("seed");
  if (!METHODS[req.method]?.gradient && $("#baseline_sampling").value) req.baseline_sampling = $("#baseline_sampling").value;
  if (repeatsUseful() && intField("num_trials") !== undefined) req.num_trials = intField("num_trials");
  return req;
}

/** Audit targets, one per line, kept exactly as written (a leading space is part of a target). */
export function auditTargets() {
  return $("#audit-targets").value.split("\n").map((t) => t.replace(/\r$/, "")).filter((t) => t.trim() !== "");
}

/** The swept placeholders and their values: [[name, [values]]], one or two entries. */
export function auditSweep() {
  const out = [];
  for (const k of [1, 2]) {
    const name = $(`#audit-ph${k}`).value;
    if (!name || out.some(([n]) => n === name)) continue;
    out.push([name, [...new Set(lines($(`#audit-values${k}`).value))]]);
  }
  return out;
}

/** The AuditRequest the form and the audit card describe (template or chat input only). */
export function buildAudit() {
  const { mask, baselines, ...req } = promptInput();
  const sweep = auditSweep();
  req.sweep = Object.fromEntries(sweep);
  req.targets = auditTargets();
  if ($("#audit-average").checked) {
    req.contexts = "average";
    const others = Object.entries(baselines || {}).filter(([n]) => !(n in req.sweep));
    if (others.length) req.baselines = Object.fromEntries(others);
  }
  return req;
}
