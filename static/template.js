// Prompt templates: parse placeholders, fill them, split for display.

/** Placeholder names in order of first use, or an error. `{{` and `}}` are literal braces. */
export function parseTemplate(t) {
  const names = [];
  let i = 0;
  while (i < t.length) {
    const c = t[i];
    if ((c === "{" && t[i + 1] === "{") || (c === "}" && t[i + 1] === "}")) {
      i += 2;
    } else if (c === "{") {
      const end = t.indexOf("}", i + 1);
      const next = t.indexOf("{", i + 1);
      if (end < 0 || (next >= 0 && next < end)) {
        return { names, error: `“{” at character ${charNumber(t, i)} is never closed (write {{ for a literal brace).` };
      }
      const name = t.slice(i + 1, end);
      if (name === "") return { names, error: `Empty placeholder {} at character ${charNumber(t, i)}: give it a name, e.g. {name}.` };
      if (!/^[\p{L}\p{N}_-]+$/u.test(name)) {
        return { names, error: `Placeholder {${name}}: names use letters, digits, _ and - only.` };
      }
      if (!names.includes(name)) names.push(name);
      i = end + 1;
    } else if (c === "}") {
      return { names, error: `“}” at character ${charNumber(t, i)} has no opening brace (write }} for a literal brace).` };
    } else {
      i += 1;
    }
  }
  return { names, error: null };
}

/** The 1-based character (code point) number of UTF-16 index `i`, as people count. */
function charNumber(t, i) {
  return Array.from(t.slice(0, i)).length + 1;
}

/** Fills placeholders; `keep` names stay placeholders (their braces are kept). */
export function renderTemplate(t, values, keep = null) {
  const escape = keep ? (s) => s.replace(/[{}]/g, (b) => b + b) : (s) => s;
  return t.replace(/\{\{|\}\}|\{([^{}]*)\}/g, (m, name) => {
    if (name === undefined) return keep ? m : m[0];
    if (keep && name === keep) return m;
    return escape(values[name] ?? "");
  });
}

/** Template split into text and placeholder parts (for the highlighted prompt). */
export function templateParts(t) {
  const parts = [];
  let text = "";
  t.replace(/\{\{|\}\}|\{([^{}]*)\}|[^{}]+|[{}]/g, (m, name) => {
    if (name !== undefined) {
      if (text) parts.push({ text });
      text = "";
      parts.push({ name });
    } else if (m === "{{" || m === "}}") text += m[0];
    else text += m;
    return m;
  });
  if (text) parts.push({ text });
  return parts;
}
