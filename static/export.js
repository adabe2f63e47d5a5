// Export charts (SVG, PNG) and data (CSV, JSON), each carrying what produced it.

import { $$, el, svg, setAttrs, wrap } from "./dom.js";
import { METHOD_NAMES, hasContrast, measureName, tokenRows } from "./charts.js";
import { cellValue, measureOf } from "./auditview.js";
import { provenance, provenanceLine } from "./provenance.js";
import { state } from "./state.js";

function download(name, blob) {
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 5000);
}

/** Stacks chart SVGs into one, with title lines (wrapped, never cut) saying what it shows. */
function exportSvg(nodes, title) {
  const w = Math.max(...nodes.map((n) => n.width.baseVal.value));
  const heads = [title].flat().filter(Boolean).flatMap((line, k) =>
    wrap(line, w - 16, k === 0 ? 13 : 11.5, k === 0 ? 600 : 400).map((text) => ({ text, first: k === 0 })));
  const head = heads.length ? 10 + 18 * heads.length : 0;
  const root = svg("svg", { xmlns: "http://www.w3.org/2000/svg", "font-family": nodes[0].getAttribute("font-family"), "font-size": 12 });
  let y = head;
  for (const node of nodes) {
    const copy = node.cloneNode(true);
    copy.querySelector(".focus-ring")?.remove();
    root.append(svg("g", { transform: `translate(0 ${y})` }, ...Array.from(copy.childNodes)));
    y += node.height.baseVal.value;
  }
  root.prepend(svg("rect", { x: 0, y: 0, width: w, height: y, fill: "#fff" }));
  heads.forEach((line, k) => {
    root.append(svg("text", { x: 8, y: 20 + 18 * k, fill: line.first ? "#111" : "#444", "font-size": line.first ? 13 : 11.5, "font-weight": line.first ? 600 : 400 }, line.text));
  });
  setAttrs(root, { width: w, height: y, viewBox: `0 0 ${w} ${y}` });
  return { text: `<?xml version="1.0" encoding="UTF-8"?>\n${new XMLSerializer().serializeToString(root)}`, w, h: y };
}

function chartTitle(kind) {
  if (kind === "audit-chart") {
    const a = state.audit;
    if (!a?.result) return "";
    return [`${measureOf(a.result).long} by ${a.result.swept.map((n) => `{${n}}`).join(" × ")}`,
      prompt(a.request), provenanceLine(provenance(a.request, null, a.result.model ?? state.model?.spec))];
  }
  const r = state.result?.response;
  if (!r) return "";
  const what = hasContrast(r)
    ? `Attribution of ${measureName(r)}${kind === "heatmap" ? " per token (contrast's rows negated)" : ""}`
    : kind === "heatmap" ? "Attribution per target token" : "Attribution for the whole target";
  const against = hasContrast(r) ? ` rather than “${r.contrast_target}”` : "";
  return [`${what} · ${METHOD_NAMES[r.method] || r.method}`, `“${r.prompt}” → “${r.target}”${against}`, provenanceLine(provenance(state.result.request, r))];
}

function prompt(request) {
  return request.template ?? request.messages?.map((m) => `${m.role}: ${m.content}`).join(" / ") ?? "";
}

function exportPng(nodes, title, name) {
  const { text, w, h } = exportSvg(nodes, title);
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
  const s = String(v ?? "");
  return /[",\n\r]/.test(s) || (/^[=+\-@]/.test(s) && isNaN(Number(s))) ? `"${s.replace(/"/g, '""')}"` : s;
}

/** CSV with the provenance as trailing columns on every row, so each row says what made it.
 * Only the settings the method uses are columns (targets are the rows' own). */
function csvText(rows, prov) {
  const keys = Object.keys(prov).filter((k) => k !== "targets" && k !== "contrast");
  const [head, ...body] = rows;
  const all = [[...head, ...keys], ...body.map((r) => [...r, ...keys.map((k) => prov[k])])];
  return all.map((r) => r.map(csvCell).join(",")).join("\r\n") + "\r\n";
}

const csvBlob = (rows, prov) => new Blob([csvText(rows, prov)], { type: "text/csv" });
const jsonBlob = (data) => new Blob([JSON.stringify(data, null, 2)], { type: "application/json" });

/** The time, for file names: 2026-01-31T12-00-00. */
function timeStamp() {
  return new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19);
}

/** The other placeholders' baselines an averaged audit ran over: "job: nurse | doctor; …". */
function averagedOver(a) {
  if (a.result.contexts !== "average") return "";
  return Object.entries(a.request.baselines || {}).map(([n, b]) => `${n}: ${[b].flat().join(" | ")}`).join("; ");
}

/**
 * The audit as the chart shows it: one row per cell and target (log p, its stderr and tokens, and
 * the charted value: Δ log p of the first two targets, or log p of the only one), then one
 * summary row per swept value (its mean, 95% interval, rank and gap).
 */
function auditRows(a) {
  const result = a.result;
  const m = measureOf(result);
  const over = averagedOver(a);
  const head = ["row", ...result.swept, "target", "log_prob", "log_prob_stderr", "token_log_probs", "measure", "value", "ci_low", "ci_high", "rank", "gap", "n", "contexts", "n_contexts", "averaged_over"];
  const cells = result.cells.flatMap((c) => result.targets.map((t) => [
    "cell", ...result.swept.map((n) => c.values[n]), t, c.log_prob[t], c.log_prob_stderr?.[t] ?? "",
    (c.token_log_probs?.[t] || []).join(" "), m.long, cellValue(result, c), "", "", "", "", result.n_contexts,
    result.contexts, result.n_contexts, over,
  ]));
  const summary = result.swept.flatMap((p) => (result.summary[p] || []).map((s) => {
    const ci = m.contrast ? s.contrast_ci : s.ci?.[result.targets[0]];
    return [`summary of {${p}}`, ...result.swept.map((n) => (n === p ? s.value : "(mean)")), "", "", "", "", m.long,
      m.contrast ? s.contrast : s.mean_log_prob[result.targets[0]], ci?.[0] ?? "", ci?.[1] ?? "", s.rank, s.gap, s.n,
      result.contexts, result.n_contexts, over];
  }));
  return [head, ...cells, ...summary];
}

function exportData(kind, format) {
  const stamp = timeStamp();
  if (kind === "audit") {
    const a = state.audit;
    if (!a?.result) return;
    const prov = provenance(a.request, null, a.result.model ?? state.model?.spec);
    if (format === "json") {
      const cells = a.result.cells.map((c) => ({ ...c, value: cellValue(a.result, c) }));
      return download(`llm-attr-audit-${stamp}.json`, jsonBlob({ provenance: prov, request: a.request, result: { ...a.result, cells } }));
    }
    return download(`llm-attr-audit-${stamp}.csv`, csvBlob(auditRows(a), prov));
  }
  if (!state.result) return;
  const { request, response: r } = state.result;
  const prov = provenance(request, r);
  if (format === "json") {
    const data = kind === "token"
      ? { provenance: prov, request, output_tokens: r.output_tokens, target_log_probs: r.target_log_probs, ...contrastFields(r, kind), features: r.features, token_attr: r.token_attr, token_attr_stderr: r.token_attr_stderr ?? null }
      : { provenance: prov, request, features: r.features, seq_attr: r.seq_attr, seq_attr_stderr: r.seq_attr_stderr ?? null, target_log_prob: r.target_log_prob, ...contrastFields(r, kind) };
    return download(`llm-attr-${kind}-attr-${stamp}.json`, jsonBlob(data));
  }
  download(`llm-attr-${kind}-attr-${stamp}.csv`, csvBlob(kind === "token" ? tokenCsvRows(r) : seqCsvRows(r), prov));
}

/** The response's contrast fields for an export of `kind` ("token" or "seq"); none without one. */
function contrastFields(r, kind) {
  if (!hasContrast(r)) return {};
  return kind === "token"
    ? { contrast_target: r.contrast_target, contrast_output_tokens: r.contrast_output_tokens, contrast_log_probs: r.contrast_log_probs }
    : { contrast_target: r.contrast_target, contrast_log_prob: r.contrast_log_prob };
}

/** One row per row of token_attr; with a contrast, which continuation the token is from. */
function tokenCsvRows(r) {
  const names = r.features.map((f) => f.name);
  const se = r.token_attr_stderr;
  const contrast = hasContrast(r);
  const head = ["target", ...(contrast ? ["contrast_target", "continuation"] : []), "output_token", ...names, ...(se ? names.map((n) => `${n}_stderr`) : []), "log_prob"];
  const rows = tokenRows(r).map((row, i) => [r.target, ...(contrast ? [r.contrast_target, row.contrast ? "contrast (negated)" : "target"] : []),
    row.token, ...r.token_attr[i], ...(se ? se[i] : []), row.logProb ?? ""]);
  return [head, ...rows];
}

function seqCsvRows(r) {
  const se = r.seq_attr_stderr;
  const contrast = hasContrast(r) ? [r.contrast_target] : [];
  return [["target", ...(contrast.length ? ["contrast_target"] : []), "feature", "value", "seq_attr", ...(se ? ["stderr"] : [])],
    ...r.features.map((f, j) => [r.target, ...contrast, f.name, f.value, r.seq_attr[j], ...(se ? [se[j]] : [])])];
}

const CHARTS = { heatmap: "#heatmap svg.heatmap", bars: "#bars svg", "audit-chart": "#audit-chart svg" };

export function onExport(e) {
  const b = e.target.closest("button[data-export]");
  if (!b) return;
  const { export: kind, format } = b.dataset;
  if (!CHARTS[kind]) return exportData(kind, format);
  const nodes = $$(CHARTS[kind]);
  if (!nodes.length) return;
  const name = `llm-attr-${kind}-${timeStamp()}.${format}`;
  if (format === "svg") download(name, new Blob([exportSvg(nodes, chartTitle(kind)).text], { type: "image/svg+xml" }));
  else exportPng(nodes, chartTitle(kind), name);
}

