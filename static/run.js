// Explain: run the form's request as a job, with progress in view, cancel, and reopening a
// shared job.

import { $ } from "./dom.js";
import { clearErrors, showError } from "./errors.js";
import { showGenerated } from "./form.js";
import { cancelJob, followJob, getJob, startJob } from "./job.js";
import { saveState } from "./link.js";
import { lastEstimate, recordRun } from "./plan.js";
import { ProgressView, setBusy } from "./progress.js";
import { buildRequest, emptyValueProblem, targetText } from "./request.js";
import { showResult } from "./results.js";
import { state } from "./state.js";

const JOBS = "/v1/jobs";
let view = null;

function progress() {
  // The run box may sit below the fold: the results column shows the same progress while it runs.
  view ||= new ProgressView([$("#progress"), $("#live-progress")], [$("#progress-text"), $("#live-text")]);
  return view;
}

let ended = false; // the status line tells of a run that failed, was cancelled or did not start

function setRunning(running) {
  setBusy($("#run"), $("#cancel"), $("#run-box"), running);
  $("#live").hidden = !running;
}

/** Where the results start below the top half of the screen (a phone), brings them into view: the progress at their
 * top while the job runs, the result when it is done. */
function showResultsColumn() {
  const r = $("#results").getBoundingClientRect();
  if (r.top > window.innerHeight * 0.5) $("#results").scrollIntoView({ block: "start" });
}

/** An input changed: a status line about an earlier failed run no longer applies. */
export function forgetEnded() {
  if (!ended || state.abort) return;
  ended = false;
  progress().idle("Ready.");
}

function say(text) {
  ended = true;
  progress().idle(text);
}

export async function runJob(event) {
  event?.preventDefault();
  if (state.abort) return;
  clearErrors($("#probe"));
  const empty = emptyValueProblem();
  if (empty) {
    say("Not started: see the message next to the field.");
    return showError(empty);
  }
  const request = buildRequest();
  ended = false;
  setRunning(true);
  progress().start("Sending…", lastEstimate(request));
  showResultsColumn();
  let job;
  try {
    job = await startJob(JOBS, request);
  } catch (err) {
    setRunning(false);
    say("Not started: see the message below the field.");
    showError(err);
    return;
  }
  state.jobId = job.id;
  saveState();
  await follow(job, request);
}

async function follow(job, request) {
  const abort = new AbortController();
  state.abort = abort;
  setRunning(true);
  progress().update(job.progress, job.state === "queued" ? "Waiting in the queue…" : undefined);
  const final = await followJob(JOBS, job, abort.signal, (p) => progress().update(p));
  if (state.abort === abort) state.abort = null;
  setRunning(false);
  if (final) finishJob(final, request);
}

function finishJob(job, request) {
  saveState();
  if (job.state === "done" && job.result) {
    const s = job.result.stats;
    progress().finish(job.progress, `Done: ${s.unique_sequences} prompts scored in ${s.seconds.toFixed(1)} s.`);
    if (request) recordRun(request, s.seconds);
    showResult(request, job.result);
    showResultsColumn();
    if (job.result.generated_target && targetText() === undefined) {
      showGenerated(job.result.target, "The model's greedy continuation, explained below.");
    }
  } else if (job.state === "failed") {
    progress().finish(job.progress, "Failed.");
    ended = true;
    showError(job.error || { message: "The job failed." });
  } else if (job.state === "cancelled") {
    progress().finish(job.progress, "Cancelled.");
    ended = true;
  }
}

export async function cancelRun() {
  const id = state.jobId;
  const abort = state.abort;
  if (!id || !abort) return;
  $("#cancel").disabled = true;
  $("#run").disabled = false;
  $("#run").focus({ preventScroll: true });
  progress().update(undefined, "Cancelling…");
  try {
    const job = await cancelJob(JOBS, id);
    if (job.state !== "done") {
      abort.abort();
      finishJob(job, null);
    }
  } catch (err) {
    abort.abort();
    progress().idle("");
    showError(err);
  }
}

/** A shared link may name a job: show its result if the server still has it. */
export async function reopenJob(id, request) {
  try {
    const job = await getJob(JOBS, id);
    state.jobId = job.id;
    if (job.state === "queued" || job.state === "running") {
      progress().start("Reopening…");
      await follow(job, request);
    } else finishJob(job, request);
  } catch {
    state.jobId = null;
    saveState();
  }
}
