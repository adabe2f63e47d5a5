// Compare: log p of the target for several values of one placeholder.

import { api } from "./api.js";
import { color, HALO, availWidth } from "./charts.js";
import { $, SVG_NS, FONT, el, svg, textWidth, fit, lines } from "./dom.js";
import { clearErrors, showError } from "./errors.js";
import { generate } from "./form.js";
import { fmt, exact, fmtProb, ticks, tickLabel } from "./format.js";
import { targetText, saveState } from "./request.js";
import { state, rowFor, valuesOf } from "./state.js";
import { parseTemplate, renderTemplate } from "./template.js";

export function fillCompareSelect() {
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
export function fillCompareValues(force) {
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

export async function runCompare() {
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
  const others = valuesOf(names);
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
      showError(err, "#err-compare");
    }
  } finally {
    state.compareAbort = null;
    $("#compare-run").disabled = false;
    $("#compare-cancel").disabled = true;
  }
}

export function drawCompare(box, cmp) {
  const items = cmp.items;
  if (!items.length) return box.replaceChildren();
  const ref = items.find((it) => it.value === cmp.reference) || items[0];
  const avail = availWidth(box);
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
    const info = (sep) => `${exact(it.log_prob).replace(/(\.\d{3})\d+/, "$1")}${sep}${it === ref ? "reference" : `×${Math.exp(delta).toPrecision(2)}`}`;
    const g = svg("g", { class: "compare-row", "data-value": it.log_prob, "data-label": it.value });
    g.append(svg("title", {}, `${it.value}: log p = ${exact(it.log_prob)}, p = ${fmtProb(Math.exp(it.log_prob))}, ${fmt(delta)} vs “${ref.value}”`));
    if (narrow) {
      g.append(svg("text", { x: left, y: y + 14, fill: "#222", "font-weight": 600, ...HALO }, fit(`${it.value} · ${info(" · ")}`, plotW, 12, 600)));
    } else {
      g.append(svg("text", { x: labelW, y: cy + 4, "text-anchor": "end", fill: "#222", "font-weight": 600 }, fit(it.value, labelW - 16, 12, 600)));
    }
    g.append(svg("line", { x1: x(ref.log_prob), x2: x(it.log_prob), y1: cy, y2: cy, stroke: color(delta >= 0 ? 0.7 : -0.7), "stroke-width": 3 }));
    g.append(svg("circle", { cx: x(it.log_prob), cy, r: 6, fill: it === ref ? "#333" : color(delta >= 0 ? 0.85 : -0.85), stroke: "#fff", "stroke-width": 1.5 }));
    if (!narrow) {
      g.append(svg("text", { x: left + plotW + 14, y: cy + 4, fill: "#333", "font-variant-numeric": "tabular-nums", "font-size": 11.5 },
        info("  ·  ")));
    }
    root.append(g);
  });
  box.replaceChildren(root);
}
