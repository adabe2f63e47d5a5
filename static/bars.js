// Bar chart of each feature's attribution to the whole target (with a contrast: to the difference).

import { color, featureLabel, featureValue, measureName, hasContrast, HALO, availWidth } from "./charts.js";
import { SVG_NS, FONT, svg, textWidth, fit } from "./dom.js";
import { fmt, exact, numberScale, ticks, tickLabel } from "./format.js";

export function drawBars(box, res) {
  const feats = res.features;
  const vals = res.seq_attr;
  const se = res.seq_attr_stderr;
  const avail = availWidth(box);
  const narrow = avail < 520;
  const labelW = narrow ? 0 : Math.min(230, Math.max(80, ...feats.map((f) => Math.max(textWidth(f.name, 12, 600), textWidth(featureValue(f), 11)))) + 16);
  const rowH = narrow ? 48 : 38;
  const top = 10;
  const plotW = Math.max(200, Math.min(640, avail - labelW - 32));
  const left = labelW + 12;
  const room = 50; // space for the value written past each bar's end
  const lo = Math.min(0, ...vals.map((v, i) => v - (se?.[i] || 0)));
  const hi = Math.max(0, ...vals.map((v, i) => v + (se?.[i] || 0)));
  const t = ticks(lo, hi);
  const d0 = Math.min(t[0], lo);
  const d1 = Math.max(t[t.length - 1], hi);
  const x0px = lo < 0 ? left + room : left;
  const x1px = hi > 0 ? left + plotW - room : left + plotW;
  const x = (v) => x0px + ((v - d0) / (d1 - d0 || 1)) * (x1px - x0px);
  const height = top + feats.length * rowH + 44;
  const width = left + plotW + 16;
  const max = Math.max(1e-30, ...vals.map(Math.abs));
  const { div, note } = numberScale(Math.max(...t.map(Math.abs), max));
  const root = svg("svg", {
    xmlns: SVG_NS, width, height, viewBox: `0 0 ${width} ${height}`, class: "chart bars", role: "img",
    "font-family": FONT, "font-size": 12,
    "aria-label": `Bar chart of ${feats.length} features: ${feats.map((f, i) => `${f.name} ${fmt(vals[i])}`).join(", ")}.`,
  });
  root.append(svg("rect", { x: 0, y: 0, width, height, fill: "#fff" }));
  const bottom = top + feats.length * rowH;
  for (const v of t) {
    root.append(svg("line", { x1: x(v), x2: x(v), y1: top, y2: bottom, stroke: v === 0 ? "#333" : "#e3e3e3", "stroke-width": v === 0 ? 1.2 : 1 }));
    root.append(svg("text", { x: x(v), y: bottom + 16, "text-anchor": "middle", fill: "#555", "font-size": 11 }, tickLabel(v / div)));
  }
  root.append(svg("text", { x: left + plotW / 2, y: bottom + 36, "text-anchor": "middle", fill: "#444", "font-size": 11 },
    `attribution to ${measureName(res)}${hasContrast(res) ? "" : " of the whole target"}${note ? ` (${note})` : ""}`));
  feats.forEach((f, i) => {
    const v = vals[i];
    const y = top + i * rowH;
    const barY = narrow ? y + 20 : y + 8;
    const barH = narrow ? 20 : 22;
    const name = featureLabel(f);
    const value = featureValue(f);
    if (narrow) {
      root.append(svg("text", { x: left, y: y + 14, fill: "#222", "font-weight": 600, ...HALO }, svg("title", {}, value ? `${name} = ${value}` : name),
        fit(name + (value ? ` · ${value}` : ""), plotW, 12, 600)));
    } else {
      root.append(svg("text", { x: labelW, y: y + (value ? 17 : 23), "text-anchor": "end", fill: "#222", "font-weight": 600 }, svg("title", {}, name), fit(name, labelW - 16, 12, 600)));
      if (value) root.append(svg("text", { x: labelW, y: y + 31, "text-anchor": "end", fill: "#555", "font-size": 11 }, svg("title", {}, value), fit(value, labelW - 16, 11)));
    }
    const x0 = x(Math.min(0, v));
    const w = Math.max(1, Math.abs(x(v) - x(0)));
    const fill = v >= 0 ? color(Math.max(0.55, v / max)) : color(Math.min(-0.55, v / max));
    const g = svg("g", { class: "bar", "data-index": i, "data-value": v, "data-feature": f.name });
    g.append(svg("title", {}, `${name}${value ? ` = ${value}` : ""}: ${exact(v)}${se ? ` ± ${exact(se[i])}` : ""}`));
    g.append(svg("rect", { x: x0, y: barY, width: w, height: barH, fill, rx: 2 }));
    if (se) {
      const a = x(v - se[i]);
      const b = x(v + se[i]);
      const cy = barY + barH / 2;
      g.append(svg("path", { d: `M${a},${cy}H${b}M${a},${cy - 5}V${cy + 5}M${b},${cy - 5}V${cy + 5}`, stroke: "#222", "stroke-width": 1.2, fill: "none" }));
    }
    const end = v >= 0 ? Math.max(x(v), se ? x(v + se[i]) : 0) + 5 : Math.min(x(v), se ? x(v - se[i]) : Infinity) - 5;
    g.append(svg("text", { x: end, y: barY + barH / 2 + 4, "text-anchor": v >= 0 ? "start" : "end", fill: "#222", "font-variant-numeric": "tabular-nums" }, fmt(v / div)));
    root.append(g);
  });
  box.replaceChildren(root);
}
