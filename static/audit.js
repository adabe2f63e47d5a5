// Audit: sweep one or two placeholders over lists of values, score every target in every cell
// (POST /v1/audits, a job), and draw the values sorted, with the targets named.

import { drawAuditGrid, drawAuditSummary } from "./auditview.js";
import { $, el } from "./dom.js";
import { clearErrors, showError } from "./errors.js";
import { cancelJob, followJob, startJob } from "./job.js";
import { saveState } from "./link.js";
import { lastEstimate } from "./plan.js";
import { ProgressView, setBusy } from "./progress.js";
import { auditSweep, auditTargets, buildAudit, contrastText, emptyValueProblem, inputNames, targetText } from "./request.js";
import { state, rowFor } from "./state.js";

const AUDITS = "/v1/audits";
let view = null;

function progress() {
  view ||= new ProgressView($("#audit-progress"), $("#audit-status"), "prompts");
  return view;
}

/** Keeps the placeholder lists, default values and default targets in step with the form. */
export function refreshAuditControls() {
  const usable = state.mode !== "tokens";
  $("#audit-needs-template").hidden = usable;
  for (const id of ["audit-ph1", "audit-ph2", "audit-values1", "audit-values2", "audit-targets", "audit-average", "audit-run"]) {
    $(`#${id}`).disabled = !usable || (id === "audit-run" && Boolean(state.auditAbort));
  }
  if (!usable) return;
  const names = inputNames().names;
  fillSelect($("#audit-ph1"), names, null);
  fillSelect($("#audit-ph2"), names.filter((n) => n !== $("#audit-ph1").value), "nothing else");
  for (const k of [1, 2]) fillValues(k, false);
  const targets = $("#audit-targets");
  // The form's contrast is the audit's second target: the audit's Δ log p is then the form's difference.
  if (!targets.dataset.edited) targets.value = [targetText(), contrastText()].filter((t) => t !== undefined).join("\n");
}

function fillSelect(sel, names, none) {
  const keep = sel.value;
  const opts = [...(none ? [el("option", { value: "", text: none })] : []), ...names.map((n) => el("option", { value: n, text: `{${n}}` }))];
  const same = opts.length === sel.options.length && opts.every((o, i) => o.value === sel.options[i].value);
  if (!same) sel.replaceChildren(...opts);
  if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
}

/** Default values of a swept placeholder: its value, then its baselines (until edited). */
export function fillValues(k, force) {
  const area = $(`#audit-values${k}`);
  const name = $(`#audit-ph${k}`).value;
  area.disabled = !name;
  if (!name) {
    area.value = "";
    delete area.dataset.edited;
    return;
  }
  if (!force && area.dataset.edited && area.dataset.name === name) return;
  const row = rowFor(name);
  const values = [...new Set([row.value, ...row.baselines].filter((v) => v.trim() !== ""))];
  area.value = values.join("\n");
  area.rows = Math.max(3, Math.min(8, values.length));
  area.dataset.name = name;
  delete area.dataset.edited;
}

/** Puts an audit (from a link) into the audit card. */
export function applyAudit(req) {
  const sweep = Object.entries(req.sweep || {});
  refreshAuditControls();
  for (const k of [1, 2]) {
    const [name, values] = sweep[k - 1] || ["", []];
    $(`#audit-ph${k}`).value = name;
    if (k === 1) fillSelect($("#audit-ph2"), inputNames().names.filter((n) => n !== name), "nothing else");
    const area = $(`#audit-values${k}`);
    area.value = values.join("\n");
    area.disabled = !name;
    area.dataset.name = name;
    if (name) area.dataset.edited = "1";
  }
  $("#audit-targets").value = (req.targets || []).join("\n");
  $("#audit-targets").dataset.edited = "1";
  $("#audit-average").checked = req.contexts === "average";
}

function check() {
  const sweep = auditSweep();
  if (!sweep.length) return { message: "Choose a placeholder to sweep." };
  for (const [name, values] of sweep) if (values.length < 2) return { message: `Give at least two values of {${name}}, one per line.` };
  if (!auditTargets().length) {
    return { field: "targets", message: "Give at least one target, one per line: say “ hire” on one line and “ reject” on the next (with their leading spaces)." };
  }
  return emptyValueProblem(sweep.map(([name]) => name));
}

/** What the status line says when a run ends without a new chart. */
function kept(what) {
  return state.audit?.result ? `${what} The chart below is from the last finished audit; its exports still work.` : what;
}

export async function runAudit() {
  if (state.auditAbort || state.mode === "tokens") return;
  clearErrors($("#audit-card"));
  clearErrors($("#probe"));
  const problem = check();
  if (problem) return showError(problem, "#err-audit");
  const request = buildAudit();
  const abort = new AbortController();
  state.auditAbort = abort;
  state.auditCancel = false;
  setBusy($("#audit-run"), $("#audit-cancel"), null, true);
  progress().start("Sending…", lastEstimate(request));
  try {
    // The last finished audit (its chart and exports) stays until this one finishes.
    const job = await startJob(AUDITS, request);
    state.auditJob = job.id;
    if (state.auditCancel) await cancelJob(AUDITS, job.id);
    const final = await followJob(AUDITS, job, abort.signal, (p) => progress().update(p));
    if (!final) return progress().finish(null, kept("Stopped."));
    if (final.state === "done" && final.result) {
      const s = final.result.stats;
      progress().finish(final.progress, `Done: ${s.cells} cells, ${s.distinct_sequences} distinct prompts in ${s.seconds.toFixed(1)} s.`);
      showAudit(request, final.result);
    } else if (final.state === "cancelled") progress().finish(final.progress, kept("Cancelled."));
    else {
      progress().finish(final.progress, kept("Failed."));
      showError(final.error || { message: "The audit failed." }, "#err-audit");
    }
  } catch (err) {
    progress().idle(kept("Not started."));
    showError(err.status === 404 ? { message: "This server does not run audits (POST /v1/audits: 404)." } : err, "#err-audit");
  } finally {
    state.auditAbort = null;
    state.auditJob = null;
    setBusy($("#audit-run"), $("#audit-cancel"), null, false);
    markAuditStale(buildAudit());
    saveState();
  }
}

export async function cancelAudit() {
  if (!state.auditAbort) return;
  progress().update(undefined, "Cancelling…");
  // Pressed before the server named the job: cancelled as soon as it does.
  if (!state.auditJob) return void (state.auditCancel = true);
  try {
    await cancelJob(AUDITS, state.auditJob);
  } catch (err) {
    state.auditAbort?.abort();
    showError(err, "#err-audit");
  }
}

function showAudit(request, result) {
  state.audit = { request, result };
  $("#audit-exports").hidden = false;
  drawAudit();
  markAuditStale(request);
}

export function drawAudit() {
  const a = state.audit;
  if (!a?.result) return;
  const box = $("#audit-chart");
  box.replaceChildren();
  if (a.result.swept.length === 2) drawAuditGrid(box, a.result, a.request.sweep);
  for (const name of a.result.swept) drawAuditSummary(box, a.result, name);
}

/** Marks the audit's charts out of date when the audit the form describes is another one. */
export function markAuditStale(request) {
  const stale = Boolean(state.audit?.result) && JSON.stringify(request) !== JSON.stringify(state.audit.request);
  $("#audit-chart").classList.toggle("stale", stale);
  $("#audit-stale").hidden = !stale;
}
