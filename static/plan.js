// Cost preview before a run (POST /v1/plan): coalitions, distinct prompts, tokens and the time
// expected from the server's measured throughput. Counted by the server without scoring.

import { api } from "./api.js";
import { el } from "./dom.js";
import { METHODS } from "./request.js";

const SLOW_SECONDS = 30;
const plans = new Map(); // JSON of a request -> its plan (the latest few)
let unsupported = false;

const rates = {}; // method kind -> seconds per unit of work, measured by this page's own runs
const shown = new Map(); // preview box -> the body it shows

/** The kind of work a request is: gradient passes, or scoring prompts (perturbations, audits). */
function kindOf(body) {
  return METHODS[body.method]?.gradient ? "gradient" : body.sweep ? "audit" : "scoring";
}

/** A plan's work in the units its kind is timed in: gradients × their length, or tokens scored. */
function units(plan, kind) {
  if (kind !== "gradient") return plan.tokens;
  return plan.evaluations * (plan.tokens / Math.max(1, plan.distinct_sequences));
}

/**
 * Expected seconds of `body` under `plan`. Gradient methods: the page's own measured rate for
 * gradients, else the plan's estimate (the server's, from its measured gradient costs); other
 * requests: the plan's estimate, else the page's rate for their kind. Null: unknown.
 */
function estimate(body, plan) {
  const kind = kindOf(body);
  const own = rates[kind] != null && plan ? rates[kind] * units(plan, kind) : null;
  const server = plan?.estimated_seconds ?? null;
  return kind === "gradient" ? own ?? server : server ?? own;
}

/** The preview's estimated seconds for `request`, if it was previewed. */
export function lastEstimate(request) {
  const plan = plans.get(JSON.stringify(request));
  return plan ? estimate(request, plan) : null;
}

/** A finished run of `request` took `seconds`: the page's rate for its kind, and previews redrawn. */
export function recordRun(request, seconds) {
  const plan = plans.get(JSON.stringify(request));
  const kind = kindOf(request);
  if (!plan || !(seconds > 0) || !(units(plan, kind) > 0)) return;
  rates[kind] = seconds / units(plan, kind);
  for (const [box, body] of shown) previewInto(box, body);
}

const number = (n) => Number(n).toLocaleString("en-US");

function seconds(s) {
  if (s == null) return "time unknown";
  if (s < 1) return "under a second";
  if (s < 90) return `about ${Math.round(s)} s`;
  return `about ${Math.round(s / 60)} min`;
}

/** " (N to compute)" when shared-prefix reuse leaves fewer tokens than the prompts hold. */
function afterReuse(plan) {
  const left = plan.tokens_after_reuse;
  return left != null && left < plan.tokens ? ` (${number(left)} to compute)` : "";
}

/** An audit's grid: the product of its swept lists. */
function cells(audit) {
  return Object.values(audit.sweep).reduce((n, values) => n * values.length, 1);
}

/** What makes `body` cheaper, for a slow preview: never the choice already made. */
function faster(body) {
  if (body.sweep) return "fewer values or contexts";
  const m = METHODS[body.method] || {};
  if (m.steps) return "fewer steps or a shorter target";
  if (m.gradient) return m.sampled ? "fewer samples or a shorter target" : "a shorter target";
  if (m.sampled) return "fewer samples or fewer features";
  return "a sampling method (Shapley value sampling, Kernel SHAP) or fewer features";
}

/** Asks for the plan of `body` and writes it into `box`; the newest call wins. */
export async function previewInto(box, body) {
  if (unsupported) return;
  const key = JSON.stringify(body);
  box.dataset.pending = key;
  // A plan made before the server measured its throughput is asked again, for its time.
  let plan = plans.get(key);
  if (!plan || plan.estimated_seconds == null) {
    try {
      plan = await api("POST", "/v1/plan", body);
    } catch (err) {
      if (box.dataset.pending !== key) return;
      if (err.status === 404 || err.status === 405) {
        unsupported = true;
        box.replaceChildren("Cost preview: this server does not offer one yet.");
        return;
      }
      box.className = "plan plan-error";
      delete box.dataset.plan;
      box.replaceChildren(el("strong", { text: "Cannot run as it is: " }), err.message);
      return;
    }
    if (plans.size > 20) plans.delete(plans.keys().next().value);
    plans.set(key, plan);
  }
  if (box.dataset.pending !== key) return;
  shown.set(box, body);
  const expected = estimate(body, plan);
  const slow = expected != null && expected > SLOW_SECONDS;
  box.className = slow ? "plan plan-slow" : "plan";
  box.dataset.plan = JSON.stringify(plan);
  box.dataset.seconds = expected ?? "";
  box.replaceChildren(...[
    el("strong", { text: "Cost: " }),
    body.sweep ? `${number(cells(body))} cells × ${body.targets.length} target${body.targets.length === 1 ? "" : "s"} · ` : "",
    plan.coalitions ? `${number(plan.features)} feature${plan.features === 1 ? "" : "s"} · ${number(plan.coalitions)} coalitions · ` : "",
    el("span", { class: "plan-prompts", text: `${number(plan.distinct_sequences)} distinct prompts` }),
    ` · ${number(plan.tokens)} tokens${afterReuse(plan)} · `,
    el("span", { class: "plan-seconds", text: seconds(expected) }),
    plan.target_generated ? el("span", { class: "plan-hint", text: " (at most: the target is generated first)" }) : null,
    slow ? el("span", { class: "plan-hint", text: ` — ${faster(body)} is faster.` }) : null,
  ].filter(Boolean));
}
