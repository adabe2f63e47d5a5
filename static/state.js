// The page's shared state.

export const state = {
  templates: [],
  rows: new Map(), // placeholder -> {value, baselines: [], group}
  names: [],
  result: null, // {request, response}
  jobId: null,
  abort: null,
  compare: null, // {placeholder, target, items: [{value, log_prob, log_probs}]}
  compareAbort: null,
  generated: null, // {prompt, text}
  mode: "template", // or "tokens": every token of a text is a feature
  tokens: null, // tokenization of the text: {text, ids, pieces}
  skip: new Set(), // token ids (or token strings from a link) never perturbed
};

export function rowFor(name) {
  if (!state.rows.has(name)) state.rows.set(name, { value: "", baselines: [], group: "" });
  return state.rows.get(name);
}

/** The current value of each of `names`. */
export function valuesOf(names) {
  return Object.fromEntries(names.map((n) => [n, rowFor(n).value]));
}
