// Sources: which passages of a context an answer rests on. A paste box (context, question,
// answer) runs an attribution over the context's sentences (`split`); any result whose features
// are segments is drawn as the context's text with each segment tinted by its score, the top
// segments listed with their scores, and a segment's row of token_attr shown when pressed.

import { api } from "./api.js";
import { color, textOn } from "./charts.js";
import { $, el } from "./dom.js";
import { exact, fmt, showToken } from "./format.js";
import { state } from "./state.js";

const TOP = 5;

/** The attribute request for the paste box: the context a split placeholder, the question
 * literal text, the answer the target (empty: the model's own). A chat where the model has a
 * chat template. */
export function sourcesRequest({ context, question, answer, split, method, chat }) {
  const literal = (s) => s.replace(/\{/g, "{{").replace(/\}/g, "}}");
  const ask = `Answer the question using the context.\n\nContext:\n{context}\n\nQuestion: ${literal(question.trim())}`;
  const req = { values: { context }, split: { context: split }, method };
  if (chat) req.messages = [{ role: "user", content: ask }];
  else req.template = `${ask}\nAnswer:`;
  if (answer.trim()) req.target = chat || /^\s/.test(answer) ? answer : ` ${answer}`;
  else req.max_new_tokens = 40;
  return req;
}

/** The paste box's request, as "Find sources" sends it. */
export function pasteRequest() {
  return sourcesRequest({
    context: $("#src-context").value,
    question: $("#src-question").value,
    answer: $("#src-answer").value,
    split: $("#src-split").value,
    method: $("#src-method").value,
    chat: Boolean(state.model?.chat_template),
  });
}

async function runSources() {
  const status = $("#src-status");
  $("#src-error").textContent = "";
  if (!$("#src-context").value.trim()) {
    $("#src-error").textContent = "Paste a context first.";
    return;
  }
  const req = pasteRequest();
  status.textContent = "Scoring the ablated contexts…";
  $("#src-run").disabled = true;
  const started = performance.now();
  try {
    const res = await api("POST", "/v1/attributions", req);
    status.textContent = `Done: ${res.features.length} segments in ${((performance.now() - started) / 1000).toFixed(1)} s. Answer: “${res.target.trim()}”`;
    drawSources(res, req.values);
  } catch (err) {
    status.textContent = "";
    $("#src-error").textContent = err.field ? `${err.field}: ${err.message}` : err.message;
  } finally {
    $("#src-run").disabled = false;
  }
}

/** The segment features of `res` (those of its first split placeholder), in text order. */
function segmentsOf(res) {
  const first = res.features.find((f) => f.segments?.length)?.segments[0].placeholder;
  const out = [];
  res.features.forEach((f, i) => {
    for (const s of f.segments || []) if (s.placeholder === first) out.push({ ...s, feature: i });
  });
  return { placeholder: first, segments: out.sort((a, b) => a.start - b.start) };
}

/** Draws the Sources view for `res` when its features are segments; hides it otherwise. */
export function drawSources(res, values) {
  const { placeholder, segments } = segmentsOf(res);
  const view = $("#sources-view");
  view.hidden = !placeholder;
  if (!placeholder) return;
  const chars = Array.from(values?.[placeholder] ?? "");
  const max = Math.max(1e-30, ...segments.map((s) => Math.abs(res.seq_attr[s.feature])));
  const nodes = [];
  let at = 0;
  for (const s of segments) {
    nodes.push(chars.slice(at, s.start).join(""));
    const a = res.seq_attr[s.feature];
    const bg = color(a / max);
    nodes.push(el("mark", {
      class: "source", tabindex: 0, role: "button", "data-feature": s.feature,
      style: `background:${bg};color:${textOn(bg)}`, title: `${res.features[s.feature].name}: ${exact(a)}`,
      onclick: () => showRow(res, s.feature), onkeydown: (e) => (e.key === "Enter" || e.key === " ") && showRow(res, s.feature),
    }, chars.slice(s.start, s.end).join("")));
    at = Math.max(at, s.end);
  }
  nodes.push(chars.slice(at).join(""));
  $("#sources-text").replaceChildren(...nodes);
  const top = segments.map((s) => s.feature).sort((a, b) => res.seq_attr[b] - res.seq_attr[a]).slice(0, TOP);
  $("#sources-top").replaceChildren(...top.map((i) => el("li", { "data-feature": i },
    el("strong", { text: fmt(res.seq_attr[i], 3) }), ` ${res.features[i].value}`)));
  $("#sources-row").replaceChildren();
}

/** The pressed segment's column of token_attr: its share of each token of the answer. */
function showRow(res, feature) {
  for (const m of document.querySelectorAll("#sources-text mark.source")) {
    m.classList.toggle("picked", Number(m.dataset.feature) === feature);
  }
  const column = res.token_attr.map((row) => row[feature]);
  const max = Math.max(1e-30, ...column.map(Math.abs));
  const tokens = [...res.output_tokens, ...(res.contrast_output_tokens || []).map((t) => `− ${t}`)];
  const chips = column.map((v, k) => {
    const bg = color(v / max);
    return el("span", { class: "chip", style: `background:${bg};color:${textOn(bg)}`, title: exact(v), "data-value": v },
      `${showToken(tokens[k] ?? "")} ${fmt(v)}`);
  });
  $("#sources-row").replaceChildren(
    el("p", {}, el("strong", { text: res.features[feature].name }), ": its share of each token of the answer"),
    el("div", {}, ...chips),
  );
}

export function wireSources() {
  $("#src-run").addEventListener("click", runSources);
}
