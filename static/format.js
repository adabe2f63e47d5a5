// Numbers, probabilities and tokens written for people.

const MINUS = "\u2212";

/** A number for people: sign, fixed decimals, real minus sign. */
export function fmt(x, digits = 2) {
  if (!Number.isFinite(x)) return String(x);
  const a = Math.abs(x);
  let s = a >= 1000 ? a.toExponential(1) : a.toFixed(a >= 100 ? 0 : digits);
  if (Number(s) === 0) return (0).toFixed(digits);
  return (x < 0 ? MINUS : "+") + s;
}

/** A number with all the precision a person can use (hover, tables). */
export function exact(x) {
  if (!Number.isFinite(x)) return String(x);
  const s = Math.abs(x) < 1e-4 && x !== 0 ? x.toExponential(4) : x.toFixed(6);
  return s.replace("-", MINUS);
}

/** A probability: percent when readable, else a power of ten. */
export function fmtProb(p) {
  if (!Number.isFinite(p)) return String(p);
  if (p >= 0.995) return (p * 100).toFixed(1) + "%";
  if (p >= 0.001) return (p * 100).toPrecision(2) + "%";
  if (p === 0) return "0";
  const e = Math.floor(Math.log10(p));
  const m = p / 10 ** e;
  return `${m.toFixed(1)} × 10${superscript(e)}`;
}

function superscript(n) {
  return String(n).replace(/./g, (c) => "⁻⁰¹²³⁴⁵⁶⁷⁸⁹"["-0123456789".indexOf(c)]);
}

/** A common factor for numbers up to `max` that would read badly with two decimals. */
export function numberScale(max) {
  if (!(max > 0) || (max >= 0.1 && max < 1000)) return { div: 1, note: "" };
  const e = Math.floor(Math.log10(max));
  return { div: 10 ** e, note: `values × 10${superscript(e)}` };
}

/** Makes whitespace in a token visible: ␣ for a space at either end, ⏎ and ⇥. */
export function showToken(t) {
  if (t === "") return "∅";
  return t.replace(/\n/g, "⏎").replace(/\t/g, "⇥").replace(/^ +| +$/g, (m) => "␣".repeat(m.length));
}

/** A token as a screen reader should say it: the text in quotes, and its spaces in words. */
export function spokenToken(t) {
  const lead = t.match(/^\s*/)[0];
  const trail = t.slice(lead.length).match(/\s*$/)[0];
  const word = t.trim();
  const space = (s) => (s === "\n" ? "a line break" : s.length > 1 ? `${s.length} spaces` : "a space");
  const parts = [word ? `“${word}”` : lead ? space(lead) : "empty"];
  if (word && lead) parts.push(`after ${space(lead)}`);
  if (word && trail) parts.push(`before ${space(trail)}`);
  return parts.join(", ");
}

/** Round tick values covering [lo, hi]. */
export function ticks(lo, hi, count = 5) {
  const span = hi - lo || 1;
  const raw = span / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => span / s <= count) || 10 * mag;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  return out;
}

export function tickLabel(v) {
  const s = Math.abs(v) >= 100 ? v.toFixed(0) : String(Number(v.toPrecision(3)));
  return s.replace("-", MINUS);
}
