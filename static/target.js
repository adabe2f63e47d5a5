// Before a run: the target's tokens, with a visible mark for a leading space, and a warning when
// neither the prompt nor the target supplies the space between them.

import { el } from "./dom.js";
import { showToken, spokenToken } from "./format.js";
import { tokenizeText } from "./tokens.js";

const cache = new Map(); // text -> Promise<{ids, pieces}>

/** The model's tokens of `text` ({ids, pieces}), asked once per text. */
export function tokensOf(text) {
  if (!cache.has(text)) {
    const p = tokenizeText(text).catch((err) => {
      cache.delete(text);
      throw err;
    });
    cache.set(text, p);
  }
  return cache.get(text);
}

/** True when the prompt ends in a letter or digit and the target starts with one: no space between. */
function missingSpace(prompt, target) {
  return prompt !== null && target !== "" && /[\p{L}\p{N}]$/u.test(prompt) && /^[\p{L}\p{N}]/u.test(target);
}

/** Draws the tokens of `target` into `box` (chips; ␣ marks a space that is in the text). */
export async function drawTokens(box, target) {
  if (target === "") return box.replaceChildren();
  let tokens;
  try {
    tokens = await tokensOf(target);
  } catch {
    return box.replaceChildren(el("span", { class: "help", text: "Tokens unavailable: the server did not answer." }));
  }
  const chips = tokens.pieces.map((piece) => el("span", {
    class: "tok", role: "listitem", "aria-label": spokenToken(piece), title: JSON.stringify(piece),
  }, ...markSpaces(piece)));
  box.replaceChildren(el("span", { class: "tok-count", text: `${chips.length} token${chips.length === 1 ? "" : "s"}:` }),
    el("span", { class: "tok-list", role: "list" }, ...chips));
}

/** The token's text with its leading and trailing spaces drawn as a marked ␣. */
function markSpaces(piece) {
  const shown = showToken(piece);
  return shown.split(/(␣+)/).filter(Boolean).map((part) => (part.startsWith("␣") ? el("span", { class: "space-mark", "aria-hidden": "true", text: part }) : part));
}

/**
 * Shows or hides the warning in `box` for `target` after `prompt`. `seedNote` says the text is a
 * seed kept as Captum wrote it; `fix` (if given) adds the space.
 */
export function drawSpaceWarning(box, prompt, target, { seedNote = "", fix = null } = {}) {
  if (!missingSpace(prompt, target)) {
    box.hidden = true;
    return box.replaceChildren();
  }
  const end = prompt.match(/(?:\S+\s+)?\S+$/)[0];
  const start = target.match(/^\S+/)[0];
  box.hidden = false;
  box.replaceChildren(...[
    el("strong", { text: "No space before the target. " }),
    `Neither the prompt nor the target supplies it, so the model is scored on “…${end}${start}…”, one word. `,
    "Most tokenizers put the space into the target's first token (␣word), and its probability changes a lot without it. ",
    seedNote ? el("span", { class: "seed-note", text: `${seedNote} ` }) : null,
    fix ? el("button", { type: "button", class: "small", text: "Add the leading space", onclick: fix }) : null,
  ].filter(Boolean));
}
