//! Job endpoints: create, get, cancel, and the server-sent event stream of a job.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, Stream};
use tokio::sync::watch;

use super::error::{ApiError, ApiJson};
use super::handlers::execute;
use super::jobs::{Job, JobEntry, JobKind, JobResult, JobState};
use super::AppState;
use crate::error::{Error, ErrorBody};
use crate::request::AttributeRequest;
use crate::run::Progress;

/// Start an attribution in the background.
#[utoipa::path(
    post, path = "/v1/jobs", tag = "jobs",
    request_body = AttributeRequest,
    responses(
        (status = 202, description = "Accepted; `Location` is the job's URL", body = Job,
            headers(("Location" = String, description = "/v1/jobs/{id}"))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 429, description = "Too many jobs queued or running", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security((), ("bearer" = []), ("api_key" = []))
)]
pub async fn create(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<AttributeRequest>,
) -> Result<Response, ApiError> {
    start_job(
        &state,
        JobKind::Attribution,
        "/v1/jobs",
        move |s, job| async move {
            let j = job.clone();
            execute(
                &s,
                request,
                job.cancel.clone(),
                move |p| j.progress(p),
                || job.start(),
            )
            .await
            .map(|r| JobResult::Attribution(Box::new(r)))
        },
    )
}

/// Creates a job of `kind` and runs `work` for it in the background; answers 202 with the job
/// and its URL under `base`. `work` gets the job to report progress and to start it.
pub fn start_job<F, Fut>(
    state: &Arc<AppState>,
    kind: JobKind,
    base: &str,
    work: F,
) -> Result<Response, ApiError>
where
    F: FnOnce(Arc<AppState>, Arc<JobEntry>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<JobResult, ApiError>> + Send,
{
    state.refuse_if_stopping()?;
    state.ready()?;
    let max = state.config.max_pending_jobs;
    let Some(job) = state.jobs.create(kind, max) else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "limit_exceeded",
            format!("{max} jobs are already queued or running (--max-pending-jobs)"),
        )
        .with_field("max_pending_jobs"));
    };
    let snapshot = job.snapshot();
    let s = state.clone();
    tokio::spawn(async move {
        let out = work(s, job.clone()).await;
        match out {
            Ok(r) => job.finish(JobState::Done, Some(r), None),
            Err(e) if e.code == "cancelled" || job.cancel.is_cancelled() => {
                job.finish(JobState::Cancelled, None, Some(e.body().error))
            }
            Err(e) => job.finish(JobState::Failed, None, Some(e.body().error)),
        };
    });
    let location = format!("{base}/{}", snapshot.id);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(snapshot),
    )
        .into_response())
}

/// The job `id`; with `kind`, only a job of that kind.
fn find(state: &AppState, id: &str, kind: Option<JobKind>) -> Result<Arc<JobEntry>, ApiError> {
    state
        .jobs
        .get(id)
        .filter(|j| kind.is_none_or(|k| j.snapshot().kind == k))
        .ok_or_else(|| ApiError::not_found(format!("job {id}")).with_field("id"))
}

/// A job's snapshot (`GET`).
pub fn get_job(state: &AppState, id: &str, kind: Option<JobKind>) -> Result<Json<Job>, ApiError> {
    Ok(Json(find(state, id, kind)?.snapshot()))
}

/// Cancels a job (`DELETE`; no effect on a finished one).
pub fn cancel_job(state: &AppState, id: &str, kind: Option<JobKind>) -> Result<Json<Job>, ApiError> {
    let job = find(state, id, kind)?;
    if !job.state().is_finished() {
        job.cancel.cancel();
        job.finish(JobState::Cancelled, None, Some(Error::Cancelled.body().error));
    }
    Ok(Json(job.snapshot()))
}

/// A job's event stream.
pub fn job_stream(
    state: &AppState,
    id: &str,
    kind: Option<JobKind>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let rx = find(state, id, kind)?.subscribe();
    Ok(Sse::new(job_events(rx)).keep_alive(KeepAlive::default()))
}

/// A job's state, progress, and result once done.
#[utoipa::path(
    get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = Job), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security((), ("bearer" = []), ("api_key" = []))
)]
pub async fn get(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Json<Job>, ApiError> {
    get_job(&state, &id, None)
}

/// Cancel a job (no effect on a finished one).
#[utoipa::path(
    delete, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = Job), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security((), ("bearer" = []), ("api_key" = []))
)]
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    cancel_job(&state, &id, None)
}

/// Progress and the result of a job as server-sent events: `progress` (`{"done","total"}`, at
/// once and as work advances), then one of `done`, `failed`, `cancelled` (the `Job`); the
/// stream ends after it.
#[utoipa::path(
    get, path = "/v1/jobs/{id}/events", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "Server-sent events", content_type = "text/event-stream", body = String),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
    security((), ("bearer" = []), ("api_key" = []))
)]
pub async fn events(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    job_stream(&state, &id, None)
}

enum Phase {
    Start,
    Watching,
    Ended,
}

/// The event stream of one job.
fn job_events(rx: watch::Receiver<Job>) -> impl Stream<Item = Result<Event, Infallible>> {
    let progress = |p: Progress| {
        Ok(Event::default()
            .event("progress")
            .json_data(p)
            .unwrap_or_else(|_| Event::default().event("progress")))
    };
    stream::unfold(
        (rx, Phase::Start, None),
        move |(mut rx, phase, last)| async move {
            match phase {
                Phase::Ended => None,
                Phase::Start => {
                    let p = rx.borrow_and_update().progress;
                    Some((progress(p), (rx, Phase::Watching, Some(p))))
                }
                Phase::Watching => loop {
                    let (finished, p) = {
                        let j = rx.borrow_and_update();
                        (j.state.is_finished(), j.progress)
                    };
                    if finished {
                        let job = rx.borrow().clone();
                        let name = job.state.as_str();
                        let event = Event::default()
                            .event(name)
                            .json_data(&job)
                            .unwrap_or_else(|_| Event::default().event(name));
                        return Some((Ok(event), (rx, Phase::Ended, last)));
                    }
                    if Some(p) != last {
                        return Some((progress(p), (rx, Phase::Watching, Some(p))));
                    }
                    if rx.changed().await.is_err() {
                        return None;
                    }
                },
            }
        },
    )
}
