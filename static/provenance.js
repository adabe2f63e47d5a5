// What produced a result: model, method and the settings it uses (steps, samples, seed, repeats),
// the measure, targets and the contrast. Shown in the facts line and carried by every export.
// Settings a method does not use are left out, so nothing suggests they mattered.

import { METHOD_NAMES } from "./charts.js";
import { METHODS } from "./request.js";

/** Provenance of an attribution (request as sent, response) or of an audit (no response). */
export function provenance(request, response, model) {
  const method = response?.method ?? request.method ?? null;
  const m = METHODS[method];
  const contrast = response?.contrast_target ?? request.contrast_target;
  const out = { model: response?.model ?? model ?? null };
  if (method) out.method = method;
  if (m?.steps) out.n_steps = request.n_steps ?? m.steps;
  if (m?.sampled) out.n_samples = request.n_samples ?? m.samples;
  // Exact perturbation methods keep seed and repeats: a sampled baseline makes them matter.
  if (m && (m.sampled || !m.gradient)) out.seed = request.seed ?? 0;
  if (m && !m.gradient) out.num_trials = request.num_trials ?? 1;
  if (method) out.attr_target = response?.attr_target ?? request.attr_target ?? "log_prob";
  out.targets = request.targets ?? [response?.target ?? request.target ?? null];
  if (contrast != null) out.contrast = contrast;
  return out;
}

/** One line for people: "SmolLM2… · Shapley values · samples — · seed 0 · repeats 1 · target “ hire”". */
export function provenanceLine(p) {
  const targets = p.targets.filter((t) => t != null).map((t) => `“${t}”`).join(", ");
  const exact = p.method && !METHODS[p.method]?.gradient && p.n_samples === undefined;
  return [
    p.model ? String(p.model).split(/[\\/]/).pop() : null,
    p.method ? METHOD_NAMES[p.method] || p.method : null,
    p.n_steps !== undefined ? `steps ${p.n_steps}` : null,
    p.n_samples !== undefined ? `samples ${p.n_samples}` : exact ? "samples — (exact)" : null,
    p.seed !== undefined ? `seed ${p.seed}` : null,
    p.num_trials !== undefined ? `repeats ${p.num_trials}` : null,
    p.attr_target ? `measure ${p.attr_target === "prob" ? "p" : "log p"}` : null,
    targets ? `target${p.targets.length > 1 ? "s" : ""} ${targets}` : null,
    p.contrast != null ? `rather than “${p.contrast}”` : null,
  ].filter(Boolean).join(" · ");
}
