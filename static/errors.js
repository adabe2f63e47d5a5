// Errors shown next to the field they name.

import { METHOD_NAMES } from "./charts.js";
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
  message = inPageWords(message);
  if (err.status === 503 && err.retryAfter) message += ` (try again in ${err.retryAfter} s)`;
  let input = $(`[aria-describedby~="${box.id}"]`);
  if (typeof input?.value === "string") message = inCharacters(message, input.value);
  // A group of radio buttons (the methods): its chosen one takes the focus.
  if (input && typeof input.value !== "string") input = $("input:checked", input) || $("input", input) || input;
  box.textContent = message;
  box.dataset.server = "1";
  if (input) {
    input.setAttribute("aria-invalid", "true");
    input.closest("details")?.setAttribute("open", "");
    input.focus({ preventScroll: true });
    // The message and its field both in view: the message may sit above the field.
    (box.compareDocumentPosition(input) & Node.DOCUMENT_POSITION_FOLLOWING ? box : input).scrollIntoView({ block: "center" });
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

/** The API's names in the page's words: methods by their names, fields by their labels, 2^n as 2ⁿ. */
const FIELD_LABELS = { n_samples: "Samples", num_trials: "Repeats", n_steps: "Steps", baseline_token: "the replacement token", baseline_sampling: "Baselines", attr_target: "Measure", max_new_tokens: "tokens" };

export function inPageWords(message) {
  const sup = (s) => s.replace(/./g, (c) => "⁰¹²³⁴⁵⁶⁷⁸⁹ⁿ⁻"["0123456789n-".indexOf(c)] || c);
  return message
    .replace(/\b(feature_ablation|shapley_values|shapley_value_sampling|lime|kernel_shap|context_cite|integrated_gradients|gradient_x_input|gradient_shap)\b/g, (m) => METHOD_NAMES[m])
    .replace(/\b(n_samples|num_trials|n_steps|baseline_token|baseline_sampling|attr_target|max_new_tokens)\b/g, (m) => FIELD_LABELS[m])
    .replace(/2\^\(?([0-9n]+)\)?/g, (m, e) => `2${sup(e)}`);
}
