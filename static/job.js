// Jobs on the server (attribution jobs under /v1/jobs, audits under /v1/audits): start one,
// follow its event stream (falling back to polling) until it ends, cancel it. No page logic.

import { api, readEvents } from "./api.js";

const ENDED = ["done", "failed", "cancelled"];

/** Starts a job: POST `base` with `body`; resolves to the Job. */
export function startJob(base, body) {
  return api("POST", base, body);
}

/**
 * Follows job `job` under `base` until it ends; calls onProgress(progress) on the way.
 * Resolves to the final Job, or null when `signal` aborted first.
 */
export async function followJob(base, job, signal, onProgress) {
  const path = `${base}/${encodeURIComponent(job.id)}`;
  let final = null;
  try {
    await readEvents(`${path}/events`, signal, (name, data) => {
      if (name === "progress") onProgress(data);
      else if (ENDED.includes(name)) {
        final = data;
        return false;
      }
      return true;
    });
  } catch (err) {
    if (err.name === "AbortError") return null;
  }
  while (!final && !signal.aborted) {
    try {
      const j = await api("GET", path, undefined, signal);
      onProgress(j.progress);
      if (ENDED.includes(j.state)) final = j;
      else await new Promise((r) => setTimeout(r, 500));
    } catch (err) {
      if (err.name === "AbortError") return null;
      final = { state: "failed", error: { message: err.message, field: err.field } };
    }
  }
  return final;
}

/** Asks the server to cancel a job; resolves to the Job it answers with. */
export function cancelJob(base, id) {
  return api("DELETE", `${base}/${encodeURIComponent(id)}`);
}

/** Reads a job once (a shared link may name one). */
export function getJob(base, id) {
  return api("GET", `${base}/${encodeURIComponent(id)}`);
}
