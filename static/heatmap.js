// Heatmap of target tokens by features (SVG), its keyboard and hover readout, and table. With a
// contrast, the contrast's tokens follow the target's, under a line, their attributions negated.

import { RDBU, color, textOn, featureLabel, featureValue, measureName, hasContrast, tokenRows, rowLabel, availWidth, stickRowLabels } from "./charts.js";
import { $, $$, SVG_NS, FONT, el, svg, textWidth, fit } from "./dom.js";
import { fmt, exact, fmtProb, numberScale } from "./format.js";

export function drawHeatmap(box, res) {
  const feats = res.features;
  const tokens = tokenRows(res);
  const rows = tokens.map(rowLabel);
  const m = res.token_attr;
  const se = res.token_attr_stderr;
  const nr = rows.length;
  const nc = feats.length;
  const max = Math.max(1e-30, ...m.flat().map(Math.abs));
  const { div, note } = numberScale(max);
  const many = nc > 10;
  const avail = availWidth(box);
  const narrow = avail < 480;
  const rowLabelW = Math.min(narrow ? 110 : 170, Math.max(40, ...rows.map((r) => textWidth(r, 12))) + 14);
  const pColW = narrow ? 60 : 74;
  const fitW = Math.floor((avail - rowLabelW - pColW - 12) / Math.max(1, nc));
  const colW = many ? 46 : Math.max(narrow ? 52 : 62, Math.min(150, fitW));
  const rowH = 24;
  const headH = many ? Math.min(110, 16 + Math.max(...feats.map((f) => textWidth(featureLabel(f), 12, 600))) * 0.77) : 44;
  const left = rowLabelW;
  const top = headH + 6;
  const gridW = nc * colW;
  const legendTop = top + nr * rowH + 26;
  const measure = measureName(res);
  const contrast = hasContrast(res);
  const lw = Math.min(300, Math.max(180, gridW));
  // The legend's end labels ("−0.37") are centred on the bar's ends: the bar starts far enough
  // in for them to stay whole at the chart's edge.
  const endLabel = textWidth(fmt(-max / div), 11) / 2 + 4;
  const lx = Math.max(narrow ? 8 : left, endLabel);
  const caption = contrast ? "← favours the contrast · favours the target →" : `← lowers ${measure} · raises ${measure} →`;
  const below = contrast ? "Rows under the line: the contrast's tokens, their attributions negated." : "";
  const captionW = Math.max(textWidth(caption, 11) + (note ? textWidth(note, 11) + 16 : 0), textWidth(below, 11));
  const width = Math.max(left + gridW + pColW + 8 + (many ? Math.max(0, headH * 0.65 - pColW) : 0), lx + Math.max(lw + endLabel, captionW) + 12);
  const height = legendTop + (below ? 78 : 62);
  const what = contrast
    ? `${res.output_tokens.length} target tokens and ${res.contrast_output_tokens.length} contrast tokens (negated)`
    : `${nr} target tokens`;

  const root = svg("svg", {
    xmlns: SVG_NS, width, height, viewBox: `0 0 ${width} ${height}`, class: "chart heatmap",
    role: "img", tabindex: 0, "font-family": FONT, "font-size": 12,
    "aria-label": `Heatmap of ${what} by ${nc} features; attributions from ${fmt(-max)} to ${fmt(max)}. Arrow keys move between cells.`,
  });
  root.append(svg("rect", { x: 0, y: 0, width, height, fill: "#fff" }));

  // column headers
  feats.forEach((f, j) => {
    const cx = left + j * colW + colW / 2;
    const g = svg("g", { class: "col-head", "data-col": j });
    const full = featureValue(f) ? `${f.name} = ${f.value}` : f.name;
    g.append(svg("title", {}, full));
    if (many) {
      g.append(svg("text", {
        x: cx, y: headH, transform: `rotate(-50 ${cx} ${headH})`, "font-weight": 600, fill: "#222",
      }, fit(featureLabel(f), headH * 1.2, 12, 600)));
    } else {
      const size = narrow ? 11 : 12;
      g.append(svg("text", { x: cx, y: 18, "text-anchor": "middle", "font-weight": 600, fill: "#222", "font-size": size }, fit(featureLabel(f), colW - 4, size, 600)));
      const v = featureValue(f);
      if (v) g.append(svg("text", { x: cx, y: 36, "text-anchor": "middle", fill: "#555", "font-size": size - 1 }, fit(v, colW - 4, size - 1)));
    }
    root.append(g);
  });
  root.append(svg("text", { x: left + gridW + pColW / 2 + 4, y: headH, "text-anchor": "middle", fill: "#555", "font-size": 11 }, "p(token)"));

  // rows
  tokens.forEach((row, i) => {
    const y = top + i * rowH;
    root.append(svg("text", {
      x: left - 8, y: y + rowH / 2 + 4, "text-anchor": "end", fill: "#222", class: "row-head", "data-row": i, "data-contrast": row.contrast,
    }, svg("title", {}, row.token), fit(rows[i], rowLabelW - 14, 12)));
    const lp = row.logProb;
    if (lp !== undefined) {
      root.append(svg("text", { x: left + gridW + pColW / 2 + 4, y: y + rowH / 2 + 4, "text-anchor": "middle", fill: "#555", "font-size": narrow ? 10 : 11, "font-variant-numeric": "tabular-nums" },
        svg("title", {}, `log p = ${exact(lp)}`), fmtProb(Math.exp(lp))));
    }
    for (let j = 0; j < nc; j++) {
      const v = m[i][j];
      const fill = color(v / max);
      const g = svg("g", { class: "cell", "data-row": i, "data-col": j, "data-value": v });
      const tip = `${row.contrast ? "− " : ""}${row.token} × ${feats[j].name}: ${exact(v)}${se ? ` ± ${exact(se[i][j])}` : ""}`;
      g.append(
        svg("title", {}, tip),
        svg("rect", { x: left + j * colW, y, width: colW, height: rowH, fill, stroke: "#fff", "stroke-width": 1 }),
        svg("text", {
          x: left + j * colW + colW / 2, y: y + rowH / 2 + 4, "text-anchor": "middle", fill: textOn(fill),
          "font-size": many ? 10 : 11.5, "font-variant-numeric": "tabular-nums",
        }, many ? fmt(v / div, 1) : fmt(v / div)),
      );
      root.append(g);
    }
  });
  if (contrast) {
    const y = top + res.output_tokens.length * rowH;
    root.append(svg("line", { x1: 4, x2: left + gridW + pColW, y1: y, y2: y, stroke: "#222", "stroke-width": 1.5, class: "contrast-line" }));
  }

  // legend: the colour bar, its numbers, and a caption below (all inside the chart's width)
  const grad = svg("linearGradient", { id: "heat-grad", x1: 0, x2: 1, y1: 0, y2: 0 });
  RDBU.forEach((c, k) => grad.append(svg("stop", { offset: k / (RDBU.length - 1), "stop-color": c })));
  root.append(svg("defs", {}, grad));
  root.append(svg("rect", { x: lx, y: legendTop, width: lw, height: 10, fill: "url(#heat-grad)", stroke: "#999", "stroke-width": 0.5, class: "legend" }));
  [-1, -0.5, 0, 0.5, 1].forEach((t) => {
    const x = lx + ((t + 1) / 2) * lw;
    root.append(svg("line", { x1: x, x2: x, y1: legendTop + 10, y2: legendTop + 14, stroke: "#666" }));
    root.append(svg("text", { x, y: legendTop + 26, "text-anchor": "middle", fill: "#444", "font-size": 11, class: "legend-tick" }, t === 0 ? "0" : fmt((t * max) / div)));
  });
  root.append(svg("text", { x: lx, y: legendTop + 44, fill: "#444", "font-size": 11, class: "legend-caption" }, caption,
    note ? svg("tspan", { dx: 16, class: "scale-note" }, note) : null));
  if (below) root.append(svg("text", { x: lx, y: legendTop + 60, fill: "#444", "font-size": 11, class: "legend-contrast" }, below));

  const focus = svg("rect", { class: "focus-ring", width: colW, height: rowH, fill: "none", stroke: "#111", "stroke-width": 2.5, visibility: "hidden", "pointer-events": "none" });
  root.append(focus);
  box.replaceChildren(root);
  const scrolls = width > avail + 4;
  if (scrolls) stickRowLabels(box, root, left, top, top + nr * rowH);
  box.classList.toggle("scrolls", scrolls);
  const hint = box.parentElement.querySelector(".scroll-hint");
  if (hint) {
    hint.hidden = !scrolls;
    hint.textContent = `Scroll sideways for all ${nc} features →`;
  }
  wireHeatmap(root, res, { left, top, colW, rowH, nr, nc, focus });
}

function cellText(res, i, j) {
  const f = res.features[j];
  const row = tokenRows(res)[i];
  const se = res.token_attr_stderr?.[i]?.[j];
  const v = res.token_attr[i][j];
  const dir = v > 0 ? "raises" : v < 0 ? "lowers" : "does not change";
  const where = row.contrast ? `through contrast token ${row.n} (negated)` : hasContrast(res) ? `through target token ${row.n}` : `of token ${row.n}`;
  return {
    title: `${row.contrast ? "− " : ""}“${row.token}” × ${f.name}${featureValue(f) ? ` = “${f.value}”` : ""}`,
    body: `${exact(v)}${se !== undefined ? ` ± ${exact(se)}` : ""}: ${dir} ${measureName(res)} ${where}`,
  };
}

function wireHeatmap(root, res, g) {
  let cur = null;
  const tooltip = $("#tooltip");
  const mark = (i, j, fromKey) => {
    cur = [i, j];
    g.focus.setAttribute("x", g.left + j * g.colW);
    g.focus.setAttribute("y", g.top + i * g.rowH);
    g.focus.setAttribute("visibility", "visible");
    for (const n of $$(".row-head, .col-head", root)) n.classList.toggle("hl", Number(n.dataset.row ?? -1) === i || Number(n.dataset.col ?? -1) === j);
    const t = cellText(res, i, j);
    $("#heatmap-readout").textContent = `${t.title}: ${t.body}`;
    if (fromKey) {
      const r = root.getBoundingClientRect();
      showTooltip(t, r.left + g.left + (j + 0.5) * g.colW, r.top + g.top + i * g.rowH);
    }
  };
  const clear = () => {
    g.focus.setAttribute("visibility", "hidden");
    for (const n of $$(".hl", root)) n.classList.remove("hl");
    tooltip.hidden = true;
  };
  root.addEventListener("pointermove", (e) => {
    const cell = e.target.closest(".cell");
    if (!cell) return clear();
    const i = Number(cell.dataset.row);
    const j = Number(cell.dataset.col);
    mark(i, j, false);
    showTooltip(cellText(res, i, j), e.clientX, e.clientY - 8);
  });
  root.addEventListener("pointerleave", clear);
  root.addEventListener("blur", clear);
  root.addEventListener("focus", () => mark(...(cur || [0, 0]), true));
  root.addEventListener("keydown", (e) => {
    const [i, j] = cur || [0, 0];
    const moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1], Home: [0, -j], End: [0, g.nc - 1 - j] };
    const d = moves[e.key];
    if (e.key === "Escape") return clear();
    if (!d) return;
    e.preventDefault();
    mark(Math.max(0, Math.min(g.nr - 1, i + d[0])), Math.max(0, Math.min(g.nc - 1, j + d[1])), true);
  });
}

function showTooltip(t, x, y) {
  const tip = $("#tooltip");
  tip.replaceChildren(el("strong", { text: t.title }), el("span", { text: t.body }));
  tip.hidden = false;
  const w = tip.offsetWidth;
  const h = tip.offsetHeight;
  const left = Math.max(4, Math.min(window.innerWidth - w - 4, x - w / 2));
  const top = y - h - 6 < 4 ? y + 28 : y - h - 6;
  tip.style.left = `${left + window.scrollX}px`;
  tip.style.top = `${top + window.scrollY}px`;
}

export function drawTable(box, res) {
  const se = res.token_attr_stderr;
  const contrast = hasContrast(res);
  const head = el("tr", {}, el("th", { scope: "col", text: contrast ? "Token (contrast: −)" : "Target token" }),
    ...res.features.map((f) => el("th", { scope: "col", text: featureValue(f) ? `${f.name} (${f.value})` : f.name })),
    el("th", { scope: "col", text: "p(token)" }));
  const body = tokenRows(res).map((row, i) => el("tr", { class: row.contrast && row.n === 1 ? "contrast-start" : null },
    el("th", { scope: "row", text: rowLabel(row) }),
    ...res.token_attr[i].map((v, j) => el("td", { text: exact(v) + (se ? ` ± ${exact(se[i][j])}` : "") })),
    el("td", { text: row.logProb !== undefined ? fmtProb(Math.exp(row.logProb)) : "" })));
  // With a contrast the total is the difference's: no one probability belongs in its last cell.
  const total = el("tr", { class: "total" }, el("th", { scope: "row", text: contrast ? "Target rather than contrast" : "Whole target" }),
    ...res.seq_attr.map((v, j) => el("td", { text: exact(v) + (res.seq_attr_stderr ? ` ± ${exact(res.seq_attr_stderr[j])}` : "") })),
    el("td", { text: contrast ? "" : fmtProb(Math.exp(res.target_log_prob)) }));
  box.replaceChildren(el("table", {}, el("thead", {}, head), el("tbody", {}, ...body, total)));
}
