// The page's shared state, and the one way modules say "the inputs changed".
// Lowest layer: imports nothing, so every module may use it without forming a loop.

export const state = {
  templates: [],
  rows: new Map(), // placeholder -> {value, baselines: [], group}
  names: [],
  result: null, // {request, response}
  jobId: null,
  abort: null,
  audit: null, // {request, result, jobId}
  auditAbort: null,
  generated: null, // {prompt, text}
  mode: "template", // "tokens": every token of a text is a feature; "chat": system and user messages
  tokens: null, // tokenization of the text: {text, ids, pieces}
  skip: new Set(), // token ids (or token strings from a link) never perturbed
  model: null, // GET /v1/model
};

export function rowFor(name) {
  if (!state.rows.has(name)) state.rows.set(name, { value: "", baselines: [], group: "" });
  return state.rows.get(name);
}

const listeners = [];

/** Registers `fn`, called after any input of the probe changed (main.js wires these). */
export function onChange(fn) {
  listeners.push(fn);
}

/** Tells every listener that the inputs changed (typing, a seed, a token chip, a link). */
export function changed() {
  for (const fn of listeners) fn();
}
