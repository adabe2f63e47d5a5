// DOM and SVG building, text measuring, small timing and text helpers.

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
export const SVG_NS = "http://www.w3.org/2000/svg";
export const FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Noto Sans', 'DejaVu Sans', sans-serif";


export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  node.append(...children.filter((c) => c != null));
  return node;
}

export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  node.append(...children.filter((c) => c != null));
  return node;
}

export function setAttrs(node, attrs) {
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
}

let measureCtx = null;
export function textWidth(text, size = 12, weight = 400) {
  measureCtx ||= document.createElement("canvas").getContext("2d");
  measureCtx.font = `${weight} ${size}px ${FONT}`;
  return measureCtx.measureText(text).width;
}

/** Cuts `text` to fit `width` pixels, with an ellipsis. */
export function fit(text, width, size = 12, weight = 400) {
  if (textWidth(text, size, weight) <= width) return text;
  let lo = 0;
  let hi = text.length;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (textWidth(text.slice(0, mid) + "…", size, weight) <= width) lo = mid;
    else hi = mid - 1;
  }
  return text.slice(0, lo) + "…";
}

/** Splits `text` into lines of at most `width` pixels, at spaces (a long word gets its own line). */
export function wrap(text, width, size = 12, weight = 400) {
  const out = [];
  let line = "";
  for (const word of text.split(/(?<= )/)) {
    if (line && textWidth(line + word, size, weight) > width) {
      out.push(line.trimEnd());
      line = "";
    }
    line += word;
  }
  if (line) out.push(line.trimEnd());
  return out;
}

/** Chart heading lines (the first bold), wrapped to `width`: [{text, size, weight, first}]. */
export function headLines(lines, width) {
  return lines.filter(Boolean).flatMap((line, k) => {
    const [size, weight] = k === 0 ? [13, 600] : [11.5, 400];
    return wrap(line, width, size, weight).map((text) => ({ text, size, weight, first: k === 0, k }));
  });
}

export function debounce(fn, ms) {
  let timer = 0;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

export function lines(text) {
  return text.split("\n").map((s) => s.trim()).filter((s) => s !== "");
}
