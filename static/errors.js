// Errors shown next to the field they name.

import { $, $$ } from "./dom.js";

export function clearErrors(scope = document) {
  for (const box of $$(".field-error", scope)) {
    box.textContent = "";
    delete box.dataset.server;
  }
  for (const input of $$("[aria-invalid]", scope)) input.removeAttribute("aria-invalid");
}

/** Shows `err` next to the field it names (`values.name` → that row's value), else in `fallback`. */
export function showError(err, fallback = "#err-general") {
  let field = err.field || "";
  let box = null;
  while (field && !box) {
    box = $(`.field-error[data-field="${CSS.escape(field)}"]`);
    const parent = field.replace(/(\[[^\]]*\]|\.[^.[\]]*)$/, ""); // baselines.name[2] -> baselines.name -> baselines
    field = parent === field ? "" : parent;
  }
  if (!box) box = $(fallback);
  let message = err.message || String(err);
  if (err.field && message.startsWith(`${err.field}: `)) message = message.slice(err.field.length + 2);
  if (err.status === 503 && err.retryAfter) message += ` (try again in ${err.retryAfter} s)`;
  const input = $(`[aria-describedby~="${box.id}"]`);
  if (typeof input?.value === "string") message = inCharacters(message, input.value);
  box.textContent = message;
  box.dataset.server = "1";
  if (input) {
    input.setAttribute("aria-invalid", "true");
    input.closest("details")?.setAttribute("open", "");
    input.focus({ preventScroll: true });
    input.scrollIntoView({ block: "center", behavior: "smooth" });
  } else {
    box.scrollIntoView({ block: "nearest", behavior: "smooth" });
  }
}

/**
 * The server counts positions in UTF-8 bytes from 0; people (and the page's own messages) count
 * characters from 1. Rewrites "at byte N" for the text of the field the message belongs to.
 */
function inCharacters(message, text) {
  const bytes = new TextEncoder().encode(text);
  return message.replace(/\bat byte (\d+)/g, (m, n) => {
    const at = Number(n);
    if (at > bytes.length) return m;
    const before = new TextDecoder().decode(bytes.slice(0, at));
    return `at character ${Array.from(before).length + 1}`;
  });
}
