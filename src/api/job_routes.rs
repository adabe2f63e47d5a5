//! Job endpoints: create, get, cancel, and the server-sent event stream of a job.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, BoxStream, Stream, StreamExt};

use super::admit::admit;
use super::error::{ApiError, ApiJson, ApiPath};
use super::fair::Client;
use super::store::{Job, JobKind, JobRequest};
use super::AppState;
use crate::error::ErrorBody;
use crate::request::AttributeRequest;
use crate::run::Progress;

/// Start an attribution in the background. The request is checked first, as
/// `/v1/attributions` checks it (400/422 at once).
#[utoipa::path(
    post, path = "/v1/jobs", tag = "jobs",
    request_body = AttributeRequest,
    responses(
        (status = 202, description = "Accepted; `Location` is the job's URL", body = Job,
            headers(("Location" = String, description = "/v1/jobs/{id}"))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, description = "A limit is exceeded", body = ErrorBody),
        (status = 429, description = "Too many jobs queued or running", body = ErrorBody),
        (status = 503, description = "Model not loaded, shutting down, or the job store (Redis) unreachable", body = ErrorBody),
    ),
    security((), ("bearer" = []), ("api_key" = []))
)]
pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<AttributeRequest>,
) -> Result<Response, ApiError> {
    state.refuse_if_stopping()?;
    let request = JobRequest::Attribution(request);
    admit(&state, request.clone()).await?;
    submit(&state, request, "/v1/jobs").await
}

/// Puts `request` in line as a job; answers 202 with the job and its URL under `base`.
pub(crate) async fn submit(
    state: &Arc<AppState>,
    request: JobRequest,
    base: &str,
) -> Result<Response, ApiError> {
    state.refuse_if_stopping()?;
    state.ready()?;
    let job = state.jobs.create_for(&request, Client::current()).await?;
    let location = format!("{base}/{}", job.id);
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(job)).into_response())
}

/// `job`, when it exists and (with `kind`) is of that kind; 404 otherwise.
fn found(id: &str, kind: Option<JobKind>, job: Option<Job>) -> Result<Job, ApiError> {
    job.filter(|j| kind.is_none_or(|k| j.kind == k))
        .ok_or_else(|| ApiError::not_found(format!("job {id}")).with_field("id"))
}

/// A job's snapshot (`GET`); with `kind`, only a job of that kind.
pub(crate) async fn get_job(
    state: &AppState,
    id: &str,
    kind: Option<JobKind>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(found(id, kind, state.jobs.get(id).await?)?))
}

/// Cancels a job (`DELETE`; no effect on a finished one); with `kind`, only a job of that kind.
pub(crate) async fn cancel_job(
    state: &AppState,
    id: &str,
    kind: Option<JobKind>,
) -> Result<Json<Job>, ApiError> {
    if kind.is_some() {
        found(id, kind, state.jobs.get(id).await?)?;
    }
    Ok(Json(found(id, None, state.jobs.cancel(id).await?)?))
}

/// A job's event stream; with `kind`, only a job of that kind.
pub(crate) async fn job_stream(
    state: &AppState,
    id: &str,
    kind: Option<JobKind>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    if kind.is_some() {
        found(id, kind, state.jobs.get(id).await?)?;
    }
    let snapshots = state
        .jobs
        .watch(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job {id}")).with_field("id"))?;
    Ok(Sse::new(job_events(snapshots)).keep_alive(KeepAlive::default()))
}

/// A job's state, progress, and result once done.
#[utoipa::path(
    get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = Job), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security((), ("bearer" = []), ("api_key" = []))
)]
pub(crate) async fn get(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Job>, ApiError> {
    get_job(&state, &id, None).await
}

/// Cancel a job (no effect on a finished one).
#[utoipa::path(
    delete, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = Job), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security((), ("bearer" = []), ("api_key" = []))
)]
pub(crate) async fn cancel(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Job>, ApiError> {
    cancel_job(&state, &id, None).await
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
pub(crate) async fn events(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    job_stream(&state, &id, None).await
}

/// The event stream of one job from its snapshots: `progress` at once and whenever it
/// changes, then the end state.
fn job_events(snapshots: BoxStream<'static, Job>) -> impl Stream<Item = Result<Event, Infallible>> {
    let mut last: Option<Progress> = None;
    snapshots.flat_map(move |job| {
        let mut events = Vec::with_capacity(2);
        if last != Some(job.progress) && (last.is_none() || !job.state.is_finished()) {
            last = Some(job.progress);
            events.push(Ok(Event::default()
                .event("progress")
                .json_data(job.progress)
                .unwrap_or_else(|_| Event::default().event("progress"))));
        }
        if job.state.is_finished() {
            let name = job.state.as_str();
            events.push(Ok(Event::default()
                .event(name)
                .json_data(&job)
                .unwrap_or_else(|_| Event::default().event(name))));
        }
        stream::iter(events)
    })
}
