// The page's shared state, and the one way modules say "the inputs changed".
// Lowest layer: imports nothing, so every module may use it without forming a loop.

export const state = {
  templates: [],
  rows: new Map(), // placeholder -> {value, baselines: [], group}
  names: [],
  result: null, // {request, response}
  jobId: null,
  abort: null,
  audit: null, // the last finished audit: {request, result}
  auditAbort: null,
  auditJob: null, // the running audit's job id
  auditCancel: false, // Cancel was pressed before the running audit had a job id
  generated: null, // {prompt, text}
  mode: "template", // "tokens": every token of a text is a feature; "chat": system and user messages
  tokens: null, // tokenization of the text: {text, ids, pieces}
  skip: new Set(), // token ids (or token strings from a link) never perturbed
  model: null, // GET /v1/model
  methodSwap: null, // {from, to}: a method change the page made for every-token mode
};

export function rowFor(name) {
  // emptyOk: an empty value is intended (otherwise the page stops the run and says so).
  if (!state.rows.has(name)) state.rows.set(name, { value: "", baselines: [], group: "", emptyOk: false });
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
