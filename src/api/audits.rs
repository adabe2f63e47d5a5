//! Audit endpoints (jobs of kind `audit`) and the cost preview `POST /v1/plan`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{FromRequest, Request, State};
use axum::response::sse::{Event, Sse};
use axum::response::Response;
use axum::Json;
use futures::stream::Stream;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::admit::{admit, estimate};
use super::error::{parse_json, read_body, ApiError, ApiJson, ApiPath};
use super::job_routes::{cancel_job, get_job, job_stream, submit};
use super::store::{Job, JobKind, JobRequest};
use super::AppState;
use crate::audit::AuditRequest;
use crate::error::ErrorBody;
use crate::request::AttributeRequest;
use crate::run::Plan;

/// Start an audit in the background: every cell of the grid scored for every target, the
/// summary, and an attribution per cell when `method` is given. The request is checked first
/// (400/422 at once); the result is the job's `AuditResult`.
#[utoipa::path(
    post, path = "/v1/audits", tag = "audits",
    request_body = AuditRequest,
    responses(
        (status = 202, description = "Accepted; `Location` is the audit's URL", body = Job,
            headers(("Location" = String, description = "/v1/audits/{id}"))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, description = "A limit is exceeded", body = ErrorBody),
        (status = 429, description = "Too many jobs queued or running", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security((), ("bearer" = []), ("api_key" = []))
)]
pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<AuditRequest>,
) -> Result<Response, ApiError> {
    state.refuse_if_stopping()?;
    let request = JobRequest::Audit(request);
    admit(&state, request.clone()).await?;
    submit(&state, request, "/v1/audits").await
}

/// An audit's state, progress, and result once done.
#[utoipa::path(
    get, path = "/v1/audits/{id}", tag = "audits",
    params(("id" = String, Path, description = "Audit id")),
    responses((status = 200, body = Job), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security((), ("bearer" = []), ("api_key" = []))
)]
pub(crate) async fn get(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Job>, ApiError> {
    get_job(&state, &id, Some(JobKind::Audit)).await
}

/// Cancel an audit (no effect on a finished one).
#[utoipa::path(
    delete, path = "/v1/audits/{id}", tag = "audits",
    params(("id" = String, Path, description = "Audit id")),
    responses((status = 200, body = Job), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security((), ("bearer" = []), ("api_key" = []))
)]
pub(crate) async fn cancel(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Job>, ApiError> {
    cancel_job(&state, &id, Some(JobKind::Audit)).await
}

/// An audit's progress (sequences scored) and result as server-sent events, as for jobs.
#[utoipa::path(
    get, path = "/v1/audits/{id}/events", tag = "audits",
    params(("id" = String, Path, description = "Audit id")),
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
    job_stream(&state, &id, Some(JobKind::Audit)).await
}

/// The body of `/v1/plan`: an audit request when it has `sweep`, else an attribute request.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum PlanRequest {
    Audit(AuditRequest),
    Attribute(AttributeRequest),
}

impl<S: Send + Sync> FromRequest<S> for PlanRequest {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        #[derive(Deserialize)]
        struct Probe {
            sweep: Option<serde::de::IgnoredAny>,
        }
        let bytes = read_body(req, state).await?;
        let audit = serde_json::from_slice::<Probe>(&bytes).is_ok_and(|p| p.sweep.is_some());
        if audit {
            parse_json(&bytes).map(PlanRequest::Audit)
        } else {
            parse_json(&bytes).map(PlanRequest::Attribute)
        }
    }
}

/// Cost preview: what an attribute or audit request would score, counted without scoring,
/// and the seconds it would take at the server's measured throughput.
#[utoipa::path(
    post, path = "/v1/plan", tag = "attribution",
    request_body(content = PlanRequest,
        description = "An AttributeRequest, or an AuditRequest (recognized by `sweep`)"),
    responses(
        (status = 200, description = "Counts and estimate", body = Plan),
        (status = 400, description = "Invalid request (as the real request would get)", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, description = "A limit is exceeded", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security((), ("bearer" = []), ("api_key" = []))
)]
pub(crate) async fn plan(
    State(state): State<Arc<AppState>>,
    request: PlanRequest,
) -> Result<Json<Plan>, ApiError> {
    let request = match request {
        PlanRequest::Audit(r) => JobRequest::Audit(r),
        PlanRequest::Attribute(r) => JobRequest::Attribution(r),
    };
    estimate(&state, request).await.map(Json)
}
