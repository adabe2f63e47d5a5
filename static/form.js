// The probe form: input mode, one row per placeholder, seed templates, chat editors, asking the
// model for a target, and putting a request (from a link) back into the form.

import { api } from "./api.js";
import { $, $$, el, lines } from "./dom.js";
import { clearErrors, showError } from "./errors.js";
import { METHODS, emptyValueMessage, inputNames, intField, method, promptText, repeatsUseful } from "./request.js";
import { state, rowFor, changed } from "./state.js";
import { tokenizeSoon } from "./tokens.js";

const ERROR_BOX = { template: "#err-template", chat: "#err-messages" };

/** Shows the editors of `mode` ("template", "tokens" or "chat"). */
export function setMode(mode) {
  state.mode = mode;
  const radio = $(`input[name=mode][value="${mode}"]`);
  if (radio) radio.checked = true;
  $("#template-mode").hidden = mode !== "template";
  $("#tokens-mode").hidden = mode !== "tokens";
  $("#chat-mode").hidden = mode !== "chat";
  $("#placeholder-box").hidden = mode === "tokens";
  $("#generate-row").hidden = mode === "chat";
  if (mode === "tokens") tokenizeSoon();
  onInputChanged();
}

/** A person chose a mode: carry the prompt over, and pick a sampling method for many tokens. */
export function switchMode(mode) {
  const from = state.mode;
  if (mode === "tokens" && $("#text").value === "" && from === "template") {
    const text = promptText();
    if (text !== null) $("#text").value = text;
  }
  if (mode === "chat" && $("#user").value === "" && from === "template") $("#user").value = $("#template").value;
  setMode(mode);
  if (mode === "tokens" && method() === "shapley_values") {
    // Every token is a feature: exact Shapley values would need 2ⁿ prompts for n tokens.
    swapMethod("shapley_values", "shapley_value_sampling",
      "Every token is a feature, and exact Shapley values would need 2ⁿ prompts for n tokens: the page chose Shapley value sampling. Switching back to placeholders or chat restores Shapley values.");
  } else if (mode !== "tokens" && state.methodSwap?.to === method()) {
    swapMethod(state.methodSwap.to, state.methodSwap.from, "");
  }
}

/** The page changes the method from `from` to `to` and says why next to the methods (`why`
 * empty: the change is undone and the note goes). */
function swapMethod(from, to, why) {
  $(`input[name=method][value=${to}]`).checked = true;
  state.methodSwap = why ? { from, to } : null;
  $("#method-note").hidden = !why;
  $("#method-note").textContent = why;
  updateMethodFields();
}

/** A person chose a method: a change the page made is no longer theirs to undo. */
export function forgetMethodSwap() {
  state.methodSwap = null;
  $("#method-note").hidden = true;
}

/** Re-reads the placeholders of the current input after an edit. */
export function onInputChanged() {
  const { names, error } = inputNames();
  const box = ERROR_BOX[state.mode] && $(ERROR_BOX[state.mode]);
  if (box && !box.dataset.server) {
    box.textContent = error || "";
    $(state.mode === "chat" ? "#user" : "#template").toggleAttribute("aria-invalid", Boolean(error));
  }
  if (state.mode !== "tokens" && (!error || names.length >= state.names.length)) setNames(names);
  const seed = state.templates.find((t) => t.id === $("#seed-template").value);
  if (seed && !seedMatches(seed)) $("#seed-template").value = "";
}

function seedMatches(seed) {
  if (seed.messages) return state.mode === "chat" && seed.messages.every((m) => $(m.role === "system" ? "#system" : "#user").value === m.content);
  return state.mode === "template" && seed.template === $("#template").value;
}

/** Shows one row per placeholder; keeps rows (and focus) that did not change. */
function setNames(names) {
  const same = names.length === state.names.length && names.every((n, i) => n === state.names[i]);
  state.names = names;
  $("#no-placeholders").hidden = names.length > 0;
  if (same) return;
  const box = $("#placeholders");
  const existing = new Map($$(".ph", box).map((node) => [node.dataset.name, node]));
  box.replaceChildren(...names.map((name) => existing.get(name) || placeholderRow(name)));
}

/** Forgets every placeholder row (before loading a seed or a request). */
function clearRows() {
  state.rows.clear();
  state.names = [];
  $("#placeholders").replaceChildren();
}

let rowCounter = 0;
function placeholderRow(name) {
  const row = rowFor(name);
  const id = `ph${++rowCounter}`;
  const update = () => {
    row.value = valueInput.value;
    row.baselines = lines(baseInput.value);
    row.group = groupInput.value.trim();
    row.emptyOk = emptyOk.checked;
    showEmpty();
  };
  const emptyOk = el("input", { id: `${id}-empty-ok`, type: "checkbox", onchange: update });
  emptyOk.checked = row.emptyOk;
  const emptyNote = el("p", { id: `${id}-empty`, class: "empty-value", role: "status" },
    el("span", { class: "empty-text" }), " ",
    el("label", { class: "check", for: emptyOk.id }, emptyOk, " Empty is intended"));
  // Flagged as soon as the value is empty, before any run.
  const showEmpty = () => {
    const empty = row.value.trim() === "";
    emptyNote.hidden = !empty;
    emptyNote.classList.toggle("ok", row.emptyOk);
    emptyNote.querySelector(".empty-text").textContent = row.emptyOk
      ? `{${name}} runs empty, as if removed.`
      : emptyValueMessage(name);
  };
  const valueInput = el("input", {
    id: `${id}-value`, type: "text", value: row.value, spellcheck: "false",
    "aria-describedby": `${id}-value-err ${id}-empty`, oninput: update,
  });
  const baseInput = el("textarea", {
    id: `${id}-base`, rows: Math.min(5, Math.max(2, row.baselines.length)), spellcheck: "false",
    "aria-describedby": `${id}-base-help ${id}-base-err`, oninput: update,
  });
  baseInput.value = row.baselines.join("\n");
  showEmpty();
  const groupInput = el("input", {
    id: `${id}-group`, type: "text", value: row.group, placeholder: "own feature", spellcheck: "false",
    "aria-describedby": `${id}-group-help ${id}-group-err`, oninput: update,
  });
  return el("fieldset", { class: "ph", "data-name": name },
    el("legend", {}, el("code", { text: `{${name}}` })),
    el("div", { class: "field ph-value" },
      el("label", { for: valueInput.id, text: "Value" }), valueInput,
      el("p", { id: `${id}-value-err`, class: "field-error", "data-field": `values.${name}`, role: "alert" }), emptyNote),
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

/** Fills the seed list: template seeds, and chat seeds where the model has a chat template. */
export function fillSeeds(keep) {
  const sel = $("#seed-template");
  const usable = state.templates.filter((t) => !t.messages || chatAllowed());
  sel.replaceChildren(el("option", { value: "", text: "Your own prompt" }),
    ...usable.map((t) => el("option", { value: t.id, text: `${t.id} · ${t.title}` })));
  if (keep && usable.some((t) => t.id === keep)) sel.value = keep;
}

/** Chat mode is offered unless the server says the model has no chat template. */
export function chatAllowed() {
  return state.model?.chat_template !== false;
}

export function loadSeed(id) {
  const seed = state.templates.find((t) => t.id === id);
  if (!seed) return;
  clearRows();
  for (const [name, value] of Object.entries(seed.values || {})) rowFor(name).value = value;
  for (const [name, b] of Object.entries(seed.baselines || {})) rowFor(name).baselines = Array.isArray(b) ? [...b] : [b];
  if (seed.messages) {
    $("#system").value = seed.messages.find((m) => m.role === "system")?.content ?? "";
    $("#user").value = seed.messages.find((m) => m.role === "user")?.content ?? "";
  } else $("#template").value = seed.template;
  $("#target").value = seed.target || "";
  // A seed is a new probe: a contrast chosen for the previous target would not fit its target.
  $("#contrast_target").value = "";
  $("#generated").hidden = true;
  clearErrors();
  setMode(seed.messages ? "chat" : "template");
  $("#seed-template").value = id;
  changed();
}

/** The seed the form holds unchanged, if any. */
export function currentSeed() {
  return state.templates.find((t) => t.id === $("#seed-template").value) || null;
}

/** Shows the model's continuation; `undo` (if given) puts back the target it replaced. */
export function showGenerated(text, note, undo = null) {
  const p = $("#generated");
  p.hidden = false;
  p.replaceChildren(el("span", { class: "note", text: note }), " ", el("q", { text: text }),
    undo ? el("button", { type: "button", class: "small", id: "undo-generate", text: "Undo", onclick: undo }) : null);
}

export async function generate() {
  clearErrors($("#probe"));
  const { error, field } = inputNames();
  if (error) return showError({ field, message: error });
  const body = { prompt: promptText() ?? "" };
  if (intField("max_new_tokens") !== undefined) body.max_new_tokens = intField("max_new_tokens");
  const button = $("#generate");
  button.disabled = true;
  button.textContent = "Asking…";
  try {
    const out = await api("POST", "/v1/generate", body);
    const before = $("#target").value;
    $("#target").value = out.text;
    state.generated = { prompt: body.prompt, text: out.text };
    const undo = before === out.text ? null : () => {
      $("#target").value = before;
      $("#generated").hidden = true;
      changed();
    };
    showGenerated(out.text, `The model's greedy continuation (${out.tokens?.length ?? "?"} tokens), now the target${before ? ` instead of “${before}”` : ""}:`, undo);
    changed();
    return out.text;
  } catch (err) {
    showError(err.field === "prompt" ? { ...err, field: state.mode === "template" ? "template" : "text" } : err);
    return undefined;
  } finally {
    button.disabled = false;
    button.textContent = "Ask the model";
  }
}

/** Samples and Repeats are enabled only where the method uses them. */
export function updateMethodFields() {
  const m = METHODS[method()];
  const ns = $("#n_samples");
  ns.disabled = !m.sampled;
  $("#baseline_sampling").disabled = Boolean(m.gradient);
  ns.placeholder = m.sampled ? String(m.samples) : "not used";
  $("#n_steps").disabled = !m.steps;
  $("#n_steps").placeholder = m.steps ? String(m.steps) : "not used";
  const trials = $("#num_trials");
  trials.disabled = !repeatsUseful();
  trials.placeholder = trials.disabled ? "not used" : "1";
  $("#num_trials-help").textContent = trials.disabled
    ? m.sampled
      ? "Not used: more samples make this method's estimate closer, and it gives standard errors."
      : "Not used: this method with exact baselines gives the same answer every run."
    : "Run the method this many times and average; gives standard errors.";
}

const METHOD_ALIASES = {
  fa: "feature_ablation",
  sv: "shapley_values",
  svs: "shapley_value_sampling",
  kernel: "kernel_shap",
  contextcite: "context_cite",
  ig: "integrated_gradients",
  gxi: "gradient_x_input",
  gs: "gradient_shap",
};

/** Puts a request (from a link or a job) back into the form. */
export function applyRequest(req) {
  clearRows();
  for (const [name, value] of Object.entries(req.values || {})) {
    // An empty value in a request was sent on purpose.
    Object.assign(rowFor(name), { value: String(value), emptyOk: String(value).trim() === "" });
  }
  for (const [name, b] of Object.entries(req.baselines || {})) rowFor(name).baselines = (Array.isArray(b) ? b : [b]).map(String);
  for (const [name, g] of Object.entries(req.mask || {})) rowFor(name).group = String(g);
  $("#template").value = req.template || "";
  const messages = Array.isArray(req.messages) ? req.messages : [];
  $("#system").value = messages.find((m) => m.role === "system")?.content ?? "";
  $("#user").value = messages.find((m) => m.role === "user")?.content ?? "";
  $("#text").value = req.text ?? "";
  state.skip = new Set(req.skip_tokens || []);
  $("#baseline_token").value = req.baseline_token ?? "";
  $("#baseline_mode").value = req.text !== undefined && req.baseline_token === undefined ? "remove" : "token";
  $("#baseline_token").disabled = $("#baseline_mode").value === "remove";
  $("#target").value = req.target ?? "";
  $("#contrast_target").value = req.contrast_target ?? "";
  $("#max_new_tokens").value = req.max_new_tokens ?? "";
  const m = METHOD_ALIASES[req.method] || req.method || "shapley_values";
  const radio = $(`input[name=method][value="${CSS.escape(m)}"]`);
  if (radio) radio.checked = true;
  $("#attr_target").value = req.attr_target === "prob" ? "prob" : "log_prob";
  $("#n_samples").value = req.n_samples ?? "";
  $("#n_steps").value = req.n_steps ?? "";
  $("#seed").value = req.seed ?? "";
  $("#baseline_sampling").value = req.baseline_sampling || "";
  $("#num_trials").value = req.num_trials ?? "";
  setMode(req.messages ? "chat" : req.text !== undefined && req.template === undefined ? "tokens" : "template");
  updateMethodFields();
}
