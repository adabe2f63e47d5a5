// Export charts (SVG, PNG) and data (CSV, JSON).

import { METHOD_NAMES } from "./charts.js";
import { $, el, svg, setAttrs, fit } from "./dom.js";
import { state } from "./state.js";

function download(name, blob) {
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 5000);
}

/** The chart as a standalone SVG document, with a title line saying what it shows. */
function exportSvg(node, title) {
  const copy = node.cloneNode(true);
  copy.querySelector(".focus-ring")?.remove();
  copy.removeAttribute("tabindex");
  copy.removeAttribute("class");
  const w = node.width.baseVal.value;
  const h = node.height.baseVal.value;
  const titles = [title].flat().filter(Boolean);
  const head = titles.length ? 10 + 18 * titles.length : 0;
  const body = svg("g", { transform: `translate(0 ${head})` }, ...Array.from(copy.childNodes));
  copy.replaceChildren(svg("rect", { x: 0, y: 0, width: w, height: h + head, fill: "#fff" }), body);
  titles.forEach((line, k) => {
    const size = k === 0 ? 13 : 11.5;
    const weight = k === 0 ? 600 : 400;
    copy.append(svg("text", { x: 8, y: 20 + 18 * k, fill: k === 0 ? "#111" : "#444", "font-size": size, "font-weight": weight }, fit(line, w - 16, size, weight)));
  });
  setAttrs(copy, { width: w, height: h + head, viewBox: `0 0 ${w} ${h + head}` });
  return { text: `<?xml version="1.0" encoding="UTF-8"?>\n${new XMLSerializer().serializeToString(copy)}`, w, h: h + head };
}

function chartTitle(kind) {
  const r = state.result?.response;
  const c = state.compare;
  if (kind === "compare-chart" && c) return `log p of “${c.target.trim()}” for each value of {${c.placeholder}}`;
  if (!r) return "";
  const what = kind === "heatmap" ? "Attribution per target token" : "Attribution for the whole target";
  return [`${what} · ${METHOD_NAMES[r.method] || r.method}`, `“${r.prompt}” → “${r.target.trim()}”`];
}

function exportPng(node, title, name) {
  const { text, w, h } = exportSvg(node, title);
  const img = new Image();
  const scale = 2;
  img.onload = () => {
    const canvas = el("canvas", { width: w * scale, height: h * scale });
    const ctx = canvas.getContext("2d");
    ctx.scale(scale, scale);
    ctx.drawImage(img, 0, 0);
    canvas.toBlob((blob) => download(name, blob), "image/png");
  };
  img.src = `data:image/svg+xml;charset=utf-8,${encodeURIComponent(text)}`;
}

function csvCell(v) {
  const s = String(v);
  return /[",\n\r]/.test(s) || /^[=+\-@]/.test(s) && isNaN(Number(s)) ? `"${s.replace(/"/g, '""')}"` : s;
}

function csvBlob(rows) {
  return new Blob([rows.map((r) => r.map(csvCell).join(",")).join("\r\n") + "\r\n"], { type: "text/csv" });
}

function jsonBlob(data) {
  return new Blob([JSON.stringify(data, null, 2)], { type: "application/json" });
}

/** The time, for file names: 2026-01-31T12-00-00. */
function timeStamp() {
  return new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19);
}

function exportData(kind, format) {
  const stamp = timeStamp();
  if (kind === "compare") {
    const c = state.compare;
    if (!c) return;
    const ref = c.items.find((it) => it.value === c.reference) || c.items[0];
    if (format === "json") {
      return download(`llm-attr-compare-${stamp}.json`, jsonBlob({ placeholder: c.placeholder, template: c.template, target: c.target, reference: c.reference, items: c.items }));
    }
    const rows = [["value", "log_prob", "prob", "delta_log_prob_vs_reference"], ...c.items.map((it) => [it.value, it.log_prob, Math.exp(it.log_prob), it.log_prob - ref.log_prob])];
    return download(`llm-attr-compare-${stamp}.csv`, csvBlob(rows));
  }
  if (!state.result) return;
  const { request, response: r } = state.result;
  const names = r.features.map((f) => f.name);
  if (format === "json") {
    const data = kind === "token"
      ? { request, output_tokens: r.output_tokens, target_log_probs: r.target_log_probs, features: r.features, token_attr: r.token_attr, token_attr_stderr: r.token_attr_stderr ?? null }
      : { request, features: r.features, seq_attr: r.seq_attr, seq_attr_stderr: r.seq_attr_stderr ?? null, target_log_prob: r.target_log_prob };
    return download(`llm-attr-${kind}-attr-${stamp}.json`, jsonBlob(data));
  }
  let rows;
  if (kind === "token") {
    const se = r.token_attr_stderr;
    rows = [["output_token", ...names, ...(se ? names.map((n) => `${n}_stderr`) : []), "log_prob"],
      ...r.output_tokens.map((t, i) => [t, ...r.token_attr[i], ...(se ? se[i] : []), r.target_log_probs?.[i] ?? ""])];
  } else {
    const se = r.seq_attr_stderr;
    rows = [["feature", "value", "seq_attr", ...(se ? ["stderr"] : [])], ...r.features.map((f, j) => [f.name, f.value, r.seq_attr[j], ...(se ? [se[j]] : [])])];
  }
  download(`llm-attr-${kind}-attr-${stamp}.csv`, csvBlob(rows));
}

export function onExport(e) {
  const b = e.target.closest("button[data-export]");
  if (!b) return;
  const { export: kind, format } = b.dataset;
  const charts = { heatmap: "#heatmap svg", bars: "#bars svg", "compare-chart": "#compare-chart svg" };
  if (charts[kind]) {
    const node = $(charts[kind]);
    if (!node) return;
    const stamp = timeStamp();
    const name = `llm-attr-${kind}-${stamp}.${format}`;
    if (format === "svg") download(name, new Blob([exportSvg(node, chartTitle(kind)).text], { type: "image/svg+xml" }));
    else exportPng(node, chartTitle(kind), name);
  } else exportData(kind, format);
}
