// Pieces shared by the charts: colour scale, feature labels, names.

import { $$, FONT, el, svg } from "./dom.js";
import { showToken } from "./format.js";

/* ---------- colour ---------- */

// ColorBrewer RdBu (colour-blind safe), blue = negative, red = positive.
export const RDBU = ["#053061", "#2166ac", "#4393c3", "#92c5de", "#d1e5f0", "#f7f7f7", "#fddbc7", "#f4a582", "#d6604d", "#b2182b", "#67001f"];
const RDBU_RGB = RDBU.map((h) => [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16)));

/** Colour for t in [-1, 1]. */
export function color(t) {
  const x = (Math.max(-1, Math.min(1, Number.isFinite(t) ? t : 0)) + 1) / 2 * (RDBU.length - 1);
  const i = Math.min(RDBU.length - 2, Math.floor(x));
  const f = x - i;
  const c = RDBU_RGB[i].map((a, k) => Math.round(a + (RDBU_RGB[i + 1][k] - a) * f));
  return `rgb(${c.join(",")})`;
}

export function textOn(rgb) {
  const [r, g, b] = rgb.match(/\d+/g).map((v) => {
    const s = v / 255;
    return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
  });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.2 ? "#111" : "#fff";
}

export function featureLabel(f) {
  return f.position != null ? showToken(f.name) : f.name;
}

export function featureValue(f) {
  return f.value === f.name ? "" : f.value;
}

/** What a result attributes: log p (or p) of the target, or with a contrast the difference. */
export function measureName(res) {
  const m = { prob: "p", logit_prob: "logit p" }[res.attr_target] || "log p";
  return hasContrast(res) ? `${m}(target) − ${m}(contrast)` : m;
}

export function hasContrast(res) {
  return res.contrast_target != null;
}

/**
 * The rows of token_attr: each target token with its log p, then each contrast token, whose
 * attributions the server negated so that every row adds to the difference. `n` counts from 1
 * within its continuation.
 */
export function tokenRows(res) {
  const part = (tokens, logProbs, contrast, pieces) => (tokens || []).map((token, k) => ({ token, piece: pieces?.[k], logProb: logProbs?.[k], contrast, n: k + 1 }));
  return [...part(res.output_tokens, res.target_log_probs, false, res.target_pieces), ...part(res.contrast_output_tokens, res.contrast_log_probs, true, res.contrast_pieces)];
}

/** A row's label: the token with its spaces shown (from the text's own pieces, where the page
 * has them: the API's tokens are trimmed, as Captum's), a contrast token marked by its minus sign. */
export function rowLabel(row) {
  return `${row.contrast ? "− " : ""}${showToken(row.piece ?? row.token)}`;
}

export const METHOD_NAMES = {
  feature_ablation: "Feature ablation",
  shapley_values: "Shapley values",
  shapley_value_sampling: "Shapley value sampling",
  lime: "LIME",
  kernel_shap: "Kernel SHAP",
  context_cite: "ContextCite",
  integrated_gradients: "Integrated gradients",
  gradient_x_input: "Gradient × input",
  gradient_shap: "Gradient SHAP",
};

/** White outline behind text that may cross grid lines. */
export const HALO = { stroke: "#fff", "stroke-width": 3, "stroke-linejoin": "round", "paint-order": "stroke" };

/** Width a chart may use in `box`. */
export function availWidth(box) {
  return Math.max(280, (box.clientWidth || 708) - 8);
}

/**
 * When a chart scrolls sideways, a copy of its row labels (`.row-head`, between y0 and y1) stays at
 * the left edge: a zero-width sticky column in the scroller, so every row stays named.
 */
export function stickRowLabels(box, root, width, y0, y1) {
  const height = y1 - y0;
  const strip = svg("svg", {
    width, height, viewBox: `0 ${y0} ${width} ${height}`, class: "row-labels", "aria-hidden": "true",
    style: `position: relative; top: ${y0}px`, "font-family": FONT, "font-size": 12,
  });
  strip.append(svg("rect", { x: 0, y: y0, width, height, fill: "#fff" }));
  for (const label of $$(".row-head", root)) {
    const copy = label.cloneNode(true);
    copy.setAttribute("class", "row-label-copy");
    strip.append(copy);
  }
  box.prepend(el("div", { class: "sticky-col" }, strip));
}
