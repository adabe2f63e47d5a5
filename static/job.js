// Running a request as a job: progress, cancel, reopening a shared job.

import { api, readEvents } from "./api.js";
import { $ } from "./dom.js";
import { clearErrors, showError } from "./errors.js";
import { buildRequest, saveState } from "./request.js";
import { showResult } from "./results.js";
import { state } from "./state.js";

const ENDED = ["done", "failed", "cancelled"];

function setRunning(running) {
  $("#run").disabled = running;
  $("#cancel").disabled = !running;
  $("#run-box").classList.toggle("busy", running);
}

function setProgress(p, label) {
  const bar = $("#progress");
  if (p && p.total > 0) {
    bar.max = p.total;
    bar.value = Math.min(p.done, p.total);
    const pct = Math.floor((100 * Math.min(p.done, p.total)) / p.total);
    bar.dataset.percent = String(pct);
    $("#progress-text").textContent = label || `Scored ${p.done} of ${p.total} prompts (${pct}%).`;
  } else {
    bar.removeAttribute("value");
    $("#progress-text").textContent = label || "Working…";
  }
}

export async function runJob(event) {
  event?.preventDefault();
  if (state.abort) return;
  clearErrors($("#probe"));
  const request = buildRequest();
  setRunning(true);
  $("#progress").value = 0;
  $("#progress").dataset.percent = "0";
  setProgress(null, "Sending…");
  let job;
  try {
    job = await api("POST", "/v1/jobs", request);
  } catch (err) {
    setRunning(false);
    setProgress({ done: 0, total: 1 }, "Not started: see the message below the field.");
    showError(err);
    return;
  }
  state.jobId = job.id;
  saveState();
  await followJob(job, request);
}

/** Follows a job over its event stream (falls back to polling) until it ends. */
async function followJob(job, request) {
  const abort = new AbortController();
  state.abort = abort;
  setRunning(true);
  setProgress(job.progress, job.state === "queued" ? "Waiting in the queue…" : undefined);
  let final = null;
  try {
    await readEvents(`/v1/jobs/${job.id}/events`, abort.signal, (name, data) => {
      if (name === "progress") setProgress(data);
      else if (ENDED.includes(name)) {
        final = data;
        return false;
      }
      return true;
    });
  } catch (err) {
    if (err.name === "AbortError" && state.abort !== abort) return;
  }
  while (!final && !abort.signal.aborted) {
    try {
      const j = await api("GET", `/v1/jobs/${job.id}`, undefined, abort.signal);
      setProgress(j.progress);
      if (ENDED.includes(j.state)) final = j;
      else await new Promise((r) => setTimeout(r, 500));
    } catch (err) {
      if (err.name === "AbortError") break;
      final = { state: "failed", error: { message: err.message, field: err.field } };
    }
  }
  if (state.abort === abort) state.abort = null;
  setRunning(false);
  if (!final) return;
  finishJob(final, request);
}

function finishJob(job, request) {
  saveState();
  if (job.progress) setProgress(job.progress);
  if (job.state === "done" && job.result) {
    setProgress(job.progress, `Done: ${job.result.stats.unique_sequences} prompts scored in ${job.result.stats.seconds.toFixed(1)} s.`);
    showResult(request, job.result);
  } else if (job.state === "failed") {
    setProgress(job.progress, "Failed.");
    showError(job.error || { message: "The job failed." });
  } else if (job.state === "cancelled") {
    setProgress(job.progress, "Cancelled.");
  }
}

/** Stops reading a job's events (the job itself may go on). */
function stopFollowing(abort) {
  abort.abort();
  state.abort = null;
  setRunning(false);
}

export async function cancelJob() {
  const id = state.jobId;
  const abort = state.abort;
  if (!id || !abort) return;
  $("#cancel").disabled = true;
  setProgress(null, "Cancelling…");
  try {
    const job = await api("DELETE", `/v1/jobs/${id}`);
    if (job.state !== "done") {
      stopFollowing(abort);
      finishJob(job, null);
    }
  } catch (err) {
    stopFollowing(abort);
    showError(err);
  }
}

/** A shared link may name a job: show its result if the server still has it. */
export async function reopenJob(id, request) {
  try {
    const job = await api("GET", `/v1/jobs/${encodeURIComponent(id)}`);
    state.jobId = job.id;
    if (job.state === "queued" || job.state === "running") await followJob(job, request);
    else finishJob(job, request);
  } catch {
    state.jobId = null;
    saveState();
  }
}
