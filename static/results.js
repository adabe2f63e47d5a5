// The result summary: highlighted prompt, facts, and redrawing every chart.

import { drawBars } from "./bars.js";
import { color, textOn, measureName, METHOD_NAMES } from "./charts.js";
import { drawCompare } from "./compare.js";
import { $, el } from "./dom.js";
import { showGenerated } from "./form.js";
import { fmt, exact, fmtProb } from "./format.js";
import { drawHeatmap, drawTable } from "./heatmap.js";
import { targetText } from "./request.js";
import { state } from "./state.js";
import { templateParts } from "./template.js";

export function showResult(request, res) {
  state.result = { request, response: res };
  $("#empty-results").hidden = true;
  for (const id of ["summary", "heatmap-card", "bars-card"]) $(`#${id}`).hidden = false;
  drawSummary(request, res);
  drawAll();
  if (res.generated_target && targetText() === undefined) {
    showGenerated(res.target, "The model's greedy continuation, explained below.");
  }
}

export function drawAll() {
  if (state.result) {
    const { response } = state.result;
    drawHeatmap($("#heatmap"), response);
    drawTable($("#heatmap-table"), response);
    drawBars($("#bars"), response);
  }
  if (state.compare) drawCompare($("#compare-chart"), state.compare);
}

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
