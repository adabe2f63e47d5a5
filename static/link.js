// The page state kept in the URL: the request, the seed, the audit, and a job worth reopening.

import { debounce } from "./dom.js";
import { buildAudit, buildRequest } from "./request.js";
import { state } from "./state.js";

export function pageState() {
  const params = new URLSearchParams();
  const req = JSON.stringify(buildRequest());
  params.set("req", req);
  const seed = document.querySelector("#seed-template").value;
  if (state.mode !== "tokens" && seed) params.set("seed", seed);
  if (state.mode !== "tokens" && auditTouched()) params.set("audit", JSON.stringify(buildAudit()));
  // An audit's result is reopened by running it again (identical prompts come from the score cache).
  if (state.audit?.result && state.audit.request && JSON.stringify(state.audit.request) === params.get("audit")) params.set("rerun", "1");
  // The job goes in the link only while it is running or its result matches the form.
  const running = Boolean(state.abort);
  const matches = state.result && JSON.stringify(state.result.request) === req;
  if (state.jobId && (running || matches)) params.set("job", state.jobId);
  return params.toString();
}

/** The audit goes in the link once it ran or its settings were edited. */
function auditTouched() {
  const edited = ["#audit-targets", "#audit-values1", "#audit-values2"].some((id) => document.querySelector(id).dataset.edited);
  return Boolean(state.audit) || edited || document.querySelector("#audit-average").checked;
}

export const saveState = debounce(() => {
  history.replaceState(null, "", `#${pageState()}`);
}, 250);

export function readHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  const out = {};
  for (const key of ["req", "audit"]) {
    if (!params.has(key)) continue;
    try {
      out[key] = JSON.parse(params.get(key));
    } catch {
      out.bad = true;
    }
  }
  out.seed = params.get("seed");
  out.job = params.get("job");
  out.rerun = params.get("rerun") === "1";
  return out;
}
