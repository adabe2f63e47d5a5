// Template mode: one row per placeholder, seed templates, asking the model for a target.

import { api } from "./api.js";
import { fillCompareSelect, fillCompareValues } from "./compare.js";
import { $, $$, el, lines } from "./dom.js";
import { clearErrors, showError } from "./errors.js";
import { intField, saveState } from "./request.js";
import { state, rowFor, valuesOf } from "./state.js";
import { parseTemplate, renderTemplate } from "./template.js";

export function onTemplateInput() {
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

/** Forgets every placeholder row (before loading a seed or a request). */
export function clearRows() {
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

export function loadSeed(id) {
  const seed = state.templates.find((t) => t.id === id);
  if (!seed) return;
  clearRows();
  for (const [name, value] of Object.entries(seed.values || {})) rowFor(name).value = value;
  for (const [name, b] of Object.entries(seed.baselines || {})) rowFor(name).baselines = Array.isArray(b) ? [...b] : [b];
  $("#template").value = seed.template;
  $("#target").value = seed.target || "";
  $("#generated").hidden = true;
  clearErrors();
  onTemplateInput();
  $("#seed-template").value = id;
  fillCompareValues(true);
  saveState();
}

export function showGenerated(text, note) {
  const p = $("#generated");
  p.hidden = false;
  p.replaceChildren(el("span", { class: "note", text: note }), " ", el("q", { text: text }));
}

export async function generate() {
  clearErrors($("#probe"));
  let prompt = $("#text").value;
  if (state.mode === "template") {
    const template = $("#template").value;
    const { names, error } = parseTemplate(template);
    if (error) return showError({ field: "template", message: error });
    prompt = renderTemplate(template, valuesOf(names));
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
