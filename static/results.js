// The attribution result: highlighted prompt, facts, charts, and marking it out of date.

import { drawBars } from "./bars.js";
import { color, textOn, measureName, hasContrast, METHOD_NAMES } from "./charts.js";
import { convergenceFact, drawWarnings } from "./convergence.js";
import { $, el } from "./dom.js";
import { fmt, exact, fmtProb } from "./format.js";
import { drawHeatmap, drawTable } from "./heatmap.js";
import { provenance, provenanceLine } from "./provenance.js";
import { drawSources } from "./sources.js";
import { METHODS, buildRequest } from "./request.js";
import { state } from "./state.js";
import { tokensOf } from "./target.js";
import { templateParts } from "./template.js";

const CARDS = ["summary", "heatmap-card", "bars-card"];

export function showResult(request, res) {
  state.result = { request, response: res };
  $("#empty-results").hidden = true;
  for (const id of CARDS) $(`#${id}`).hidden = false;
  // The mark is otherwise set only as inputs change: a new result would keep the old one's.
  markResultStale(buildRequest());
  drawSummary(request, res);
  drawResult();
  drawSources(res, request.values);
  addPieces(res).then(() => state.result?.response === res && drawResult());
}

/** The target's and the contrast's tokens as their text has them, spaces included, for the row
 * labels (kept only where they match the API's tokens one for one). */
async function addPieces(res) {
  const of = async (text, tokens) => {
    if (text == null || !tokens) return undefined;
    try {
      const { pieces } = await tokensOf(text);
      return pieces.length === tokens.length && pieces.every((p, k) => p.trim() === tokens[k].trim()) ? pieces : undefined;
    } catch {
      return undefined;
    }
  };
  res.target_pieces = await of(res.target, res.output_tokens);
  res.contrast_pieces = await of(res.contrast_target, res.contrast_output_tokens);
}

export function drawResult() {
  if (!state.result) return;
  const { response } = state.result;
  drawHeatmap($("#heatmap"), response);
  drawTable($("#heatmap-table"), response);
  drawBars($("#bars"), response);
}

/** Marks the result out of date when `request` (the form now) is not the one it answers. */
export function markResultStale(request) {
  const stale = Boolean(state.result) && JSON.stringify(request) !== JSON.stringify(state.result.request);
  for (const id of CARDS) $(`#${id}`).classList.toggle("stale", stale);
  $("#result-stale").hidden = !stale;
}

/** The template (or a chat message) with each placeholder's value highlighted by its attribution. */
function highlighted(template, request, res) {
  const seqMax = Math.max(1e-30, ...res.seq_attr.map(Math.abs));
  const byPlaceholder = new Map();
  res.features.forEach((f, i) => (f.placeholders?.length ? f.placeholders : [f.name]).forEach((p) => byPlaceholder.set(p, i)));
  return templateParts(template).map((part) => {
    if (part.text !== undefined) return part.text;
    const i = byPlaceholder.get(part.name);
    const value = request.values?.[part.name] ?? "";
    if (i === undefined) return value;
    const a = res.seq_attr[i];
    const bg = color(a / seqMax);
    return el("mark", {
      class: "feature", style: `background:${bg};color:${textOn(bg)}`, title: `${res.features[i].name}: ${exact(a)}`,
    }, value, el("span", { class: "visually-hidden", text: ` (${res.features[i].name}, ${fmt(a)})` }));
  });
}

function tokenView(view, res) {
  const seqMax = Math.max(1e-30, ...res.seq_attr.map(Math.abs));
  const byPosition = new Map(res.features.map((f, i) => [f.position, i]));
  state.tokens.pieces.forEach((piece, p) => {
    const i = byPosition.get(p);
    if (i === undefined) return view.append(el("span", { class: "fixed", title: "kept fixed" }, piece));
    const bg = color(res.seq_attr[i] / seqMax);
    const [, space, word] = piece.match(/^(\s*)([\s\S]*)$/);
    view.append(space, el("mark", { class: "feature token", style: `background:${bg};color:${textOn(bg)}`, title: `${exact(res.seq_attr[i])}` }, word || "␣"));
  });
}

function drawSummary(request, res) {
  const view = $("#prompt-view");
  view.replaceChildren();
  if (request?.text !== undefined && state.tokens?.text === request.text) tokenView(view, res);
  else if (request?.template) view.append(...highlighted(request.template, request, res));
  else if (request?.messages) {
    for (const m of request.messages) {
      view.append(el("span", { class: "role", text: m.role }), ...highlighted(m.content, request, res), "\n");
    }
    view.append(el("span", { class: "role", text: "assistant" }));
  } else view.append(res.prompt);
  // The target follows the prompt exactly: a space is drawn only where the text has one.
  view.append(el("span", { class: "target-text", title: "target" }, res.target));
  if (hasContrast(res)) view.append(el("span", { class: "contrast-note" }, " rather than ", el("q", { class: "contrast-text", title: "contrast" }, res.contrast_target)));
  const rendered = $("#rendered-prompt");
  rendered.hidden = !request?.messages;
  if (request?.messages) rendered.querySelector("pre").textContent = res.prompt;

  const p = Math.exp(res.target_log_prob);
  const facts = [
    ["Probability of the target", `${fmtProb(p)}  (log p = ${exact(res.target_log_prob)})`, "target-prob"],
    ...contrastFacts(res),
    ["Target tokens", `${res.output_tokens.length}${res.generated_target ? ", the model's own greedy continuation" : ""}`],
    ["Method", methodFact(request, res), "method-fact"],
    convergenceFact(res),
    ["Work", `${res.stats.evaluations} evaluations, ${res.stats.unique_sequences} distinct prompts, ${res.stats.tokens_scored} tokens, ${res.stats.seconds.toFixed(2)} s`],
    ["Produced by", provenanceLine(provenance(request, res)), "provenance"],
  ];
  drawWarnings($("#result-warnings"), res, request);
  $("#facts").replaceChildren(...facts.filter(Boolean).flatMap(([k, v, id]) => [el("dt", { text: k }), el("dd", { text: v, id })]));
  describeCharts(res);
}

/** The method and what its settings mean: baselines for the perturbation methods, the path for
 * the gradient methods. */
function methodFact(request, res) {
  const name = METHOD_NAMES[res.method] || res.method;
  const measure = res.attr_target === "prob" ? "probability" : "log-probability";
  const from = request?.text !== undefined ? "the replacement token" : "token 0 in each placeholder's tokens";
  const how = {
    integrated_gradients: `gradients summed over ${request?.n_steps ?? 50} steps from ${from} to the input`,
    gradient_shap: `gradients at ${request?.n_samples ?? METHODS.gradient_shap.samples} random points between ${from} and the input`,
    gradient_x_input: "the gradient at the input itself, times the input (no baseline)",
  }[res.method];
  return `${name}, ${measure}, ${how ?? `baselines ${res.baseline_sampling === "sample" ? "sampled at random" : "averaged exactly"}`}`;
}

/** The contrast's probability and the difference that is attributed, for the facts list. */
function contrastFacts(res) {
  if (!hasContrast(res)) return [];
  const [t, c] = [res.target_log_prob, res.contrast_log_prob];
  const difference = res.attr_target === "prob" ? Math.exp(t) - Math.exp(c) : t - c;
  const n = res.contrast_output_tokens.length;
  return [
    ["Probability of the contrast", `${fmtProb(Math.exp(c))}  (log p = ${exact(c)}), ${n} token${n === 1 ? "" : "s"}`, "contrast-prob"],
    ["Attributed difference", `${measureName(res)} = ${exact(difference)}`, "contrast-difference"],
  ];
}

/** The charts' titles and help say what they show: the target alone, or against the contrast. */
function describeCharts(res) {
  const m = measureName(res);
  const contrast = hasContrast(res);
  const hover = "Hover a cell, or focus the chart and use the arrow keys, for the exact number.";
  $("#heatmap-title").textContent = contrast ? "Per token of the target and the contrast" : "Per target token";
  $("#heatmap-help").textContent = contrast
    ? `Each cell: how much the feature (column) raises (red) or lowers (blue) ${m} through that token (row). The target's tokens come first; under the line, the contrast's, their attributions negated, so red always favours the target. ${hover}`
    : `Each cell: how much the feature (column) raises (red) or lowers (blue) the model's ${m} of that target token (row). ${hover}`;
  $("#bars-title").textContent = contrast ? "Whole target rather than the contrast" : "Whole target";
  $("#bars-help").textContent = contrast
    ? `One bar per feature: its attribution to ${m}. Right (red) makes the target likelier against the contrast, left (blue) the contrast.`
    : "One bar per feature: its attribution for the whole target. Right (red) makes the target more likely, left (blue) less.";
}
