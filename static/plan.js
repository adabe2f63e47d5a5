// Cost preview before a run (POST /v1/plan): coalitions, distinct prompts, tokens and the time
// expected from the server's measured throughput. Counted by the server without scoring.

import { api } from "./api.js";
import { el } from "./dom.js";

const SLOW_SECONDS = 30;
const plans = new Map(); // JSON of a request -> its plan (the latest few)
let unsupported = false;

/** The preview's estimated seconds for `request`, if it was previewed. */
export function lastEstimate(request) {
  return plans.get(JSON.stringify(request))?.estimated_seconds ?? null;
}

const number = (n) => Number(n).toLocaleString("en-US");

function seconds(s) {
  if (s == null) return "time unknown until the server has scored something";
  if (s < 1) return "under a second";
  if (s < 90) return `about ${Math.round(s)} s`;
  return `about ${Math.round(s / 60)} min`;
}

/** An audit's grid: the product of its swept lists. */
function cells(audit) {
  return Object.values(audit.sweep).reduce((n, values) => n * values.length, 1);
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
  const slow = plan.estimated_seconds != null && plan.estimated_seconds > SLOW_SECONDS;
  box.className = slow ? "plan plan-slow" : "plan";
  box.dataset.plan = JSON.stringify(plan);
  box.replaceChildren(...[
    el("strong", { text: "Cost: " }),
    body.sweep ? `${number(cells(body))} cells × ${body.targets.length} target${body.targets.length === 1 ? "" : "s"} · ` : "",
    plan.coalitions ? `${number(plan.features)} feature${plan.features === 1 ? "" : "s"} · ${number(plan.coalitions)} coalitions · ` : "",
    el("span", { class: "plan-prompts", text: `${number(plan.distinct_sequences)} distinct prompts` }),
    ` · ${number(plan.tokens)} tokens · `,
    el("span", { class: "plan-seconds", text: seconds(plan.estimated_seconds) }),
    plan.target_generated ? el("span", { class: "plan-hint", text: " (at most: the target is generated first)" }) : null,
    slow ? el("span", { class: "plan-hint", text: body.sweep ? " — fewer values or contexts is faster." : " — a sampling method or fewer features is faster." }) : null,
  ].filter(Boolean));
}
