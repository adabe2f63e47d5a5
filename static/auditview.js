// Drawing an audit result: per swept placeholder, its values sorted by Δ log p between the first
// two targets (or log p of the only target), with 95% intervals when contexts are averaged; and a
// two-placeholder sweep as a heatmap of cells.

import { color, textOn, HALO, availWidth, stickRowLabels } from "./charts.js";
import { SVG_NS, FONT, el, svg, textWidth, fit, headLines } from "./dom.js";
import { fmt, exact, showToken, ticks, tickLabel } from "./format.js";

const q = (t) => `“${showToken(t)}”`;

/** What the charts show for an audit: the contrast of the first two targets, or log p of one. */
export function measureOf(result) {
  const [a, b] = result.targets;
  return b === undefined
    ? { short: `log p(${q(a)})`, long: `log p(${q(a)} | prompt)`, contrast: false }
    : { short: `Δ log p`, long: `Δ log p = log p(${q(a)}) − log p(${q(b)})`, contrast: true };
}

/** The summary rows of `placeholder`, sorted by rank (1 first), with the charted number and interval. */
function summaryRows(result, placeholder) {
  const m = measureOf(result);
  const t0 = result.targets[0];
  return (result.summary[placeholder] || [])
    .map((s) => ({
      value: s.value,
      rank: s.rank,
      gap: s.gap,
      y: m.contrast ? s.contrast : s.mean_log_prob[t0],
      ci: m.contrast ? s.contrast_ci ?? null : s.ci?.[t0] ?? null,
      means: s.mean_log_prob,
      n: s.n,
    }))
    .sort((a, b) => a.rank - b.rank);
}

/** What a summary row's mean runs over: the contexts, and the other swept placeholder's values. */
function intervalOver(result) {
  const parts = [];
  if (result.n_contexts > 1) parts.push(`${result.n_contexts} contexts`);
  if (result.swept.length > 1) parts.push("the other placeholder's values");
  return `over ${parts.join(" and ")}`;
}

/** The value of one cell: the contrast of the first two targets, or log p of the only one. */
export function cellValue(result, cell) {
  const [a, b] = result.targets;
  return b === undefined ? cell.log_prob[a] : cell.log_prob[a] - cell.log_prob[b];
}

export function drawAuditSummary(box, result, placeholder) {
  const rows = summaryRows(result, placeholder);
  const m = measureOf(result);
  const avail = availWidth(box);
  const narrow = avail < 520;
  const labelW = narrow ? 0 : Math.min(200, Math.max(70, ...rows.map((r) => textWidth(r.value, 12, 600))) + 16);
  const infoW = narrow ? 0 : 150;
  const plotW = Math.max(200, Math.min(560, avail - labelW - infoW - 24));
  const left = labelW + 12;
  const rowH = narrow ? 46 : 30;
  const intervals = rows.some((r) => r.ci) ? `bars: 95% intervals of the means (${intervalOver(result)})` : null;
  const side = m.contrast ? "right: the first target is the more likely" : "right: more likely";
  const width = Math.max(left + plotW + infoW + 10, Math.min(avail, textWidth(m.long, 11.5) + 20));
  const heads = headLines([`${m.short} by {${placeholder}}, highest first`, m.contrast ? m.long : null, side, intervals], width - 16);
  // The column header "value · gap to #1" sits below the last heading line, never on it.
  const top = 16 + 17 * (heads.length - 1) + (narrow ? 14 : 26);
  const lo = Math.min(...rows.map((r) => (r.ci ? r.ci[0] : r.y)), m.contrast ? 0 : Infinity);
  const hi = Math.max(...rows.map((r) => (r.ci ? r.ci[1] : r.y)), m.contrast ? 0 : -Infinity);
  const pad = Math.max((hi - lo) * 0.08, 0.05);
  const t = ticks(lo - pad, hi + pad, 5);
  const d0 = Math.min(t[0], lo - pad);
  const d1 = Math.max(t[t.length - 1], hi + pad);
  const x = (v) => left + ((v - d0) / (d1 - d0)) * plotW;
  const bottom = top + rows.length * rowH;
  const height = bottom + 44;
  const root = svg("svg", {
    xmlns: SVG_NS, width, height, viewBox: `0 0 ${width} ${height}`, class: "chart audit-summary", role: "img",
    "data-placeholder": placeholder, "font-family": FONT, "font-size": 12,
    "aria-label": `${m.long} for each value of {${placeholder}}, highest first: ${rows.map((r) => `${r.value} ${exact(r.y)}`).join(", ")}.`,
  });
  root.append(svg("rect", { x: 0, y: 0, width, height, fill: "#fff" }));
  heads.forEach((line, k) => {
    root.append(svg("text", { x: 8, y: 16 + 17 * k, fill: line.first ? "#111" : "#444", "font-size": line.size, "font-weight": line.weight, class: line.k === 1 && m.contrast ? "audit-measure audit-head" : "audit-head" }, line.text));
  });
  if (!narrow) root.append(svg("text", { x: left + plotW + 14, y: top - 6, fill: "#444", "font-size": 11 }, "value · gap to #1"));
  for (const v of t) {
    root.append(svg("line", { x1: x(v), x2: x(v), y1: top - 4, y2: bottom, stroke: v === 0 && m.contrast ? "#555" : "#e3e3e3", "stroke-dasharray": v === 0 && m.contrast ? "4 3" : null }));
    root.append(svg("text", { x: x(v), y: bottom + 16, "text-anchor": "middle", fill: "#555", "font-size": 11 }, tickLabel(v)));
  }
  root.append(svg("text", { x: left + plotW / 2, y: bottom + 36, "text-anchor": "middle", fill: "#444", "font-size": 11 }, fit(m.long, plotW, 11)));
  const mid = (d0 + d1) / 2;
  rows.forEach((r, i) => {
    const y = top + i * rowH;
    const cy = narrow ? y + 32 : y + rowH / 2;
    const tone = m.contrast ? (r.y >= 0 ? 0.85 : -0.85) : r.y >= mid ? 0.85 : -0.85;
    const info = `${fmt(r.y)} · ${r.rank === 1 ? "#1" : fmt(r.gap)}`;
    const g = svg("g", { class: "audit-row", "data-label": r.value, "data-value": r.y, "data-rank": r.rank });
    const ciText = r.ci ? `, 95% interval ${exact(r.ci[0])} to ${exact(r.ci[1])}` : "";
    const means = Object.entries(r.means || {}).map(([k, v]) => `log p(${q(k)}) = ${exact(v)}`).join(", ");
    const over = r.n > 1 ? ` (mean of ${r.n} prompts)` : "";
    g.append(svg("title", {}, `${r.value}: ${m.short} = ${exact(r.y)}${over}${ciText}; rank ${r.rank}, gap ${exact(r.gap)}; ${means}`));
    if (narrow) g.append(svg("text", { x: left, y: y + 14, fill: "#222", "font-weight": 600, ...HALO }, fit(`${r.rank}. ${r.value} · ${info}`, plotW, 12, 600)));
    else g.append(svg("text", { x: labelW, y: cy + 4, "text-anchor": "end", fill: "#222", "font-weight": 600 }, fit(r.value, labelW - 16, 12, 600)));
    if (r.ci) {
      const [a, b] = [x(r.ci[0]), x(r.ci[1])];
      g.append(svg("path", { class: "ci", d: `M${a},${cy}H${b}M${a},${cy - 5}V${cy + 5}M${b},${cy - 5}V${cy + 5}`, stroke: "#333", "stroke-width": 1.3, fill: "none" }));
    }
    g.append(svg("circle", { cx: x(r.y), cy, r: 6, fill: color(tone), stroke: "#fff", "stroke-width": 1.5 }));
    if (!narrow) g.append(svg("text", { x: left + plotW + 14, y: cy + 4, fill: "#333", "font-variant-numeric": "tabular-nums", "font-size": 11.5 }, info));
    root.append(g);
  });
  box.append(root);
}

/** Two swept placeholders: rows are the first's values, columns the second's. */
export function drawAuditGrid(box, result, order) {
  const [rp, cp] = result.swept;
  const rowsV = order[rp];
  const colsV = order[cp];
  const m = measureOf(result);
  const value = new Map(result.cells.map((c) => [`${c.values[rp]}\u0000${c.values[cp]}`, cellValue(result, c)]));
  const all = [...value.values()];
  // Two targets: red favours the first, blue the second (Δ log p's sign). One target: log p is
  // always negative, so the colour says above or below the grid's mean, and the caption says so.
  const mean = all.reduce((s, v) => s + v, 0) / Math.max(1, all.length);
  const centre = m.contrast ? 0 : mean;
  const dev = Math.max(1e-9, ...all.map((v) => Math.abs(v - centre)));
  const [a, b] = result.targets;
  const legend = m.contrast
    ? `colour: red favours ${q(a)}, blue ${q(b)} (the sign of Δ log p; deepest at ±${fmt(dev).slice(1)})`
    : `colour: above (red) or below (blue) the grid's mean log p, ${fmt(mean)}; not likely or unlikely in itself`;
  const labelW = Math.min(150, Math.max(50, ...rowsV.map((v) => textWidth(v, 12, 600))) + 14);
  const colW = Math.max(64, Math.min(120, Math.max(...colsV.map((v) => textWidth(v, 12, 600))) + 12));
  const rowH = 28;
  const avail = availWidth(box);
  const gridW = colsV.length * colW;
  const width = Math.max(labelW + gridW + 10, Math.min(avail, 520));
  const heads = headLines([`${m.short} by {${rp}} (rows) × {${cp}} (columns)`, m.contrast ? m.long : null, legend], Math.min(width, avail) - 16);
  const top = 16 + 17 * (heads.length - 1) + 30;
  const height = top + rowsV.length * rowH + 30;
  const root = svg("svg", {
    xmlns: SVG_NS, width, height, viewBox: `0 0 ${width} ${height}`, class: "chart audit-grid", role: "img",
    "font-family": FONT, "font-size": 12,
    "aria-label": `${m.long} for each {${rp}} (rows) and {${cp}} (columns).`,
  });
  root.append(svg("rect", { x: 0, y: 0, width, height, fill: "#fff" }));
  heads.forEach((line, k) => {
    root.append(svg("text", { x: 8, y: 16 + 17 * k, fill: line.first ? "#111" : "#444", "font-size": line.size, "font-weight": line.weight, class: "audit-head" }, line.text));
  });
  colsV.forEach((v, j) => {
    root.append(svg("text", { x: labelW + j * colW + colW / 2, y: top - 8, "text-anchor": "middle", "font-weight": 600, fill: "#222", class: "col-head" }, svg("title", {}, v), fit(v, colW - 4, 12, 600)));
  });
  rowsV.forEach((rv, i) => {
    const y = top + i * rowH;
    root.append(svg("text", { x: labelW - 8, y: y + rowH / 2 + 4, "text-anchor": "end", "font-weight": 600, fill: "#222", class: "row-head" }, svg("title", {}, rv), fit(rv, labelW - 12, 12, 600)));
    colsV.forEach((cv, j) => {
      const v = value.get(`${rv}\u0000${cv}`);
      if (v === undefined) return;
      const fill = color((v - centre) / dev);
      root.append(svg("g", { class: "grid-cell", "data-row": rv, "data-col": cv, "data-value": v },
        svg("title", {}, `{${rp}} = ${rv}, {${cp}} = ${cv}: ${m.short} = ${exact(v)}`),
        svg("rect", { x: labelW + j * colW, y, width: colW, height: rowH, fill, stroke: "#fff" }),
        svg("text", { x: labelW + j * colW + colW / 2, y: y + rowH / 2 + 4, "text-anchor": "middle", fill: textOn(fill), "font-variant-numeric": "tabular-nums" }, fmt(v))));
    });
  });
  const scroller = el("div", { class: "chart-scroll grid-scroll" }, root);
  box.append(scroller);
  if (width > availWidth(scroller) + 4) {
    stickRowLabels(scroller, root, labelW, top, top + rowsV.length * rowH);
    box.append(el("p", { class: "scroll-hint", text: `Scroll sideways for all ${colsV.length} values of {${cp}} →` }));
  }
}
