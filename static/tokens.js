// Token mode: every token of a text is a feature; chips choose tokens kept fixed.
// Also the tokenizer call the target preview uses.

import { api } from "./api.js";
import { $, el, debounce } from "./dom.js";
import { showError } from "./errors.js";
import { showToken, spokenToken } from "./format.js";
import { state, changed } from "./state.js";

/** Byte offsets (from the server) to string pieces. */
function pieces(text, offsets) {
  const bytes = new TextEncoder().encode(text);
  const dec = new TextDecoder();
  return offsets.map(([a, b]) => dec.decode(bytes.slice(a, b)));
}

/** The model's tokens of `text` (no special tokens): {ids, pieces}, pieces cut from the text itself. */
export async function tokenizeText(text, signal) {
  const out = await api("POST", "/v1/tokenize", { text }, signal);
  return { ids: out.ids, pieces: pieces(text, out.offsets) };
}

async function tokenize() {
  const text = $("#text").value;
  const box = $("#token-chips");
  if (text === "") {
    state.tokens = null;
    return box.replaceChildren();
  }
  try {
    const out = await tokenizeText(text);
    if ($("#text").value !== text) return;
    state.tokens = { text, ...out };
    drawChips();
  } catch (err) {
    showError(err.field ? err : { ...err, field: "text" });
  }
}
export const tokenizeSoon = debounce(tokenize, 300);

function drawChips() {
  const t = state.tokens;
  if (!t) return;
  const chips = t.ids.map((id, p) => {
    const piece = t.pieces[p];
    const skipped = state.skip.has(id) || state.skip.has(piece) || state.skip.has(piece.trim());
    return el("button", {
      type: "button", "aria-pressed": skipped ? "true" : "false", "data-id": id,
      "aria-label": `token ${spokenToken(piece)}`,
      title: `token ${id}${skipped ? ", kept fixed" : ""}`, text: showToken(piece),
      onclick: () => {
        if (skipped) {
          state.skip.delete(id);
          state.skip.delete(piece);
          state.skip.delete(piece.trim());
        } else state.skip.add(id);
        drawChips();
        $(`#token-chips button:nth-child(${p + 1})`)?.focus();
        changed();
      },
    });
  });
  $("#token-chips").replaceChildren(...chips);
}
