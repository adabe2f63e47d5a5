// Explain: run the form's request as a job, with progress in view, cancel, and reopening a
// shared job.

import { $ } from "./dom.js";
import { clearErrors, showError } from "./errors.js";
import { showGenerated } from "./form.js";
import { cancelJob, followJob, getJob, startJob } from "./job.js";
import { saveState } from "./link.js";
import { lastEstimate } from "./plan.js";
import { ProgressView, setBusy } from "./progress.js";
import { buildRequest, targetText } from "./request.js";
import { showResult } from "./results.js";
import { state } from "./state.js";

const JOBS = "/v1/jobs";
let view = null;

function progress() {
  // The run box may sit below the fold: the results column shows the same progress while it runs.
  view ||= new ProgressView([$("#progress"), $("#live-progress")], [$("#progress-text"), $("#live-text")]);
  return view;
}

function setRunning(running) {
  setBusy($("#run"), $("#cancel"), $("#run-box"), running);
  $("#live").hidden = !running;
}

export async function runJob(event) {
  event?.preventDefault();
  if (state.abort) return;
  clearErrors($("#probe"));
  const request = buildRequest();
  setRunning(true);
  progress().start("Sending…", lastEstimate(request));
  let job;
  try {
    job = await startJob(JOBS, request);
  } catch (err) {
    setRunning(false);
    progress().idle("Not started: see the message below the field.");
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
    showResult(request, job.result);
    if (job.result.generated_target && targetText() === undefined) {
      showGenerated(job.result.target, "The model's greedy continuation, explained below.");
    }
  } else if (job.state === "failed") {
    progress().finish(job.progress, "Failed.");
    showError(job.error || { message: "The job failed." });
  } else if (job.state === "cancelled") {
    progress().finish(job.progress, "Cancelled.");
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
