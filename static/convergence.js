// Whether a gradient result adds up: its convergence delta per row, as a share of the change it
// should explain (f(input) − f(baseline)), and the response's warnings in the page's words.

import { METHOD_NAMES, tokenRows, rowLabel } from "./charts.js";
import { el } from "./dom.js";
import { exact } from "./format.js";

/** Per row of token_attr: its label, delta, and f(input) − f(baseline) (the row's sum minus the delta). */
export function convergenceRows(res) {
  if (!Array.isArray(res.convergence_delta)) return [];
  const rows = tokenRows(res);
  return res.convergence_delta.map((delta, r) => {
    const sum = (res.token_attr[r] || []).reduce((s, v) => s + v, 0);
    const change = sum - delta;
    return { label: rowLabel(rows[r] || { token: `row ${r + 1}` }), delta, change, share: change === 0 ? Infinity : Math.abs(delta / change) };
  });
}

function percent(share) {
  if (!Number.isFinite(share)) return "the change is 0";
  return `${share >= 10 ? Math.round(share * 100).toLocaleString("en-US") : (share * 100).toFixed(1)}% of it`;
}

/** The facts line: each row's delta, with f(input) − f(baseline) and the share. */
export function convergenceFact(res) {
  const rows = convergenceRows(res);
  if (!rows.length) return null;
  const shown = rows.slice(0, 6).map((r) => `${r.label}: ${exact(r.delta)} against f(input) − f(baseline) = ${exact(r.change)} (${percent(r.share)})`);
  if (rows.length > shown.length) shown.push(`and ${rows.length - shown.length} more rows (table and exports)`);
  return ["Convergence delta (a row's sum minus what it should add up to)", shown.join("; "), "convergence"];
}

/** What to try when the attributions do not add up, for this method and input. */
function remedy(res, request) {
  const other = request?.text !== undefined ? ", or another replacement token" : "";
  if (res.method === "gradient_shap") return `Use more samples${other}.`;
  return `Use more steps (Steps, now ${request?.n_steps ?? 50})${other}.`;
}

/** The response's warnings, in the page's words where the page knows the kind. */
export function drawWarnings(box, res, request) {
  const warnings = res.warnings || [];
  box.hidden = warnings.length === 0;
  box.replaceChildren(...warnings.map((w) => {
    if (w.code !== "convergence_delta") return el("p", { class: "warning", "data-code": w.code, text: w.message });
    const rows = convergenceRows(res);
    const bad = (w.rows || []).map((r) => rows[r]).filter(Boolean);
    const worst = bad.reduce((a, b) => (b.share > (a?.share ?? -1) ? b : a), null);
    const method = METHOD_NAMES[res.method] || res.method;
    return el("p", { class: "warning", "data-code": w.code },
      el("strong", { text: "These attributions do not add up. " }),
      `${method} should give each row a sum equal to the change it explains, f(input) − f(baseline). `,
      `Here ${bad.length} of ${rows.length} row${rows.length === 1 ? "" : "s"} miss it by more than 10%`,
      worst ? ` (worst: “${worst.label}”, off by ${exact(worst.delta)} against ${exact(worst.change)}, ${percent(worst.share)})` : "",
      ". The colours and numbers below may mislead: the path from the baseline is too coarse, or the model is far from linear along it. ",
      remedy(res, request));
  }));
}
