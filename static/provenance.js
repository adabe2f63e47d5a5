// What produced a result: model, method, samples, seed, repeats, targets and the contrast.
// Shown in the facts line and carried by every export.

import { METHOD_NAMES } from "./charts.js";
import { METHODS } from "./request.js";

/** Provenance of an attribution (request as sent, response) or of an audit (no response). */
export function provenance(request, response, model) {
  const method = response?.method ?? request.method ?? null;
  const sampled = METHODS[method]?.sampled;
  const contrast = response?.contrast_target ?? request.contrast_target;
  return {
    model: response?.model ?? model ?? null,
    method,
    n_samples: sampled ? (request.n_samples ?? METHODS[method].samples) : null,
    seed: request.seed ?? 0,
    num_trials: request.num_trials ?? 1,
    targets: request.targets ?? [response?.target ?? request.target ?? null],
    ...(contrast != null ? { contrast } : {}),
  };
}

/** One line for people: "SmolLM2… · Shapley values · samples — · seed 0 · repeats 1 · target “ hire”". */
export function provenanceLine(p) {
  const targets = p.targets.filter((t) => t != null).map((t) => `“${t}”`).join(", ");
  return [
    p.model ? String(p.model).split(/[\\/]/).pop() : null,
    p.method ? METHOD_NAMES[p.method] || p.method : null,
    p.method ? `samples ${p.n_samples ?? "— (exact)"}` : null,
    p.method ? `seed ${p.seed}` : null,
    p.method ? `repeats ${p.num_trials}` : null,
    targets ? `target${p.targets.length > 1 ? "s" : ""} ${targets}` : null,
    p.contrast != null ? `rather than “${p.contrast}”` : null,
  ].filter(Boolean).join(" · ");
}
