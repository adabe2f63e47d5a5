//! Request handlers (except jobs, see `events.rs`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::chain::Chain;
use super::error::{ApiError, ApiJson};
use super::fair::{Client, Slot};
use super::store::JobRequest;
use super::AppState;
use crate::engine::CancelToken;
use crate::error::{Error, ErrorBody};
use crate::model::ModelInfo;
use crate::request::{AttributeRequest, AttributeResponse};
use crate::run::{Limits, Progress};
use crate::scorer::Scorer;

/// Cancels a request's work when its handler is dropped (the client went away) unless disarmed.
pub(crate) struct CancelOnDrop(pub Option<CancelToken>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            if !c.is_cancelled() {
                tracing::info!("client gone: cancelling its remaining work");
                c.cancel();
            }
        }
    }
}

/// The metrics label of an attribute request: its method's wire name.
pub(crate) fn method_label(request: &AttributeRequest) -> String {
    serde_json::to_value(request.method)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The run of one attribute request, reporting `progress`.
pub(crate) fn attribute_work(
    request: AttributeRequest,
    progress: impl Fn(Progress) + Send + Sync + 'static,
) -> impl FnOnce(&dyn Scorer, &Limits) -> Result<AttributeResponse, Error> + Send + 'static {
    move |scorer, limits| crate::run::run(&request, scorer, limits, &progress)
}

/// A run slot now, counted against the client's share: 429 + Retry-After when the client
/// holds all of its share, 503 + Retry-After when all slots are taken (a synchronous request
/// does not wait out its timeout in line; jobs wait for a slot).
fn try_slot(state: &AppState) -> Result<Slot, ApiError> {
    // A full server first: then every client is told to retry later (503), whatever its share.
    let run = state.run_slots.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!(
                "all {} run slots are busy (--max-concurrent-jobs): retry later, or submit a job \
                 (POST /v1/jobs), which waits for a slot",
                state.config.max_concurrent_jobs.max(1)
            ),
        )
    })?;
    let share = match Client::current() {
        Some(client) => Some(state.shares.try_take(&client).ok_or_else(|| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "client_busy",
                format!(
                    "this client already holds its share of {} run slots (--max-client-slots): \
                     retry when one of its requests or jobs ends, or submit a job (POST \
                     /v1/jobs), which waits its turn",
                    state.shares.per_client()
                ),
            )
        })?),
        None => None,
    };
    Ok(Slot::new(run, share))
}

/// Runs `work` in the run slot it holds, counted in the metrics under `label`. Its scorer is
/// the one [`super::chain::scorer`] builds for `chain`. The run
/// owns its slot and its bookkeeping: if the client goes away the handler is dropped, but the
/// run still ends (cancelled) and is counted.
pub(crate) async fn run_in_slot<T: Send + 'static>(
    state: &Arc<AppState>,
    slot: Slot,
    label: String,
    cancel: CancelToken,
    work: impl FnOnce(&dyn Scorer, &Limits) -> Result<T, Error> + Send + 'static,
    chain: Chain,
) -> Result<T, ApiError> {
    let ready = state.ready()?;
    let limits = state.config.limits.clone();
    let st = state.clone();
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let _active = ActiveRun::new(st.clone());
        let started = Instant::now();
        let scorer = super::chain::scorer(&ready, &cancel, chain);
        let out = work(&scorer, &limits);
        // Whatever a run that was cancelled ran into last, it ended because it was cancelled.
        let outcome = match &out {
            _ if cancel.is_cancelled() => "cancelled",
            Ok(_) => "ok",
            Err(e) => e.code(),
        };
        st.metrics
            .record_attribution(&label, outcome, started.elapsed().as_secs_f64());
        out
    })
    .await
    .map_err(|e| ApiError::from(Error::Internal(format!("the attribution task failed: {e}"))))?
    .map_err(ApiError::from)
}

struct ActiveRun(Arc<AppState>);

impl ActiveRun {
    fn new(state: Arc<AppState>) -> Self {
        state.active_runs.fetch_add(1, Ordering::SeqCst);
        ActiveRun(state)
    }
}

impl Drop for ActiveRun {
    fn drop(&mut self) {
        self.0.active_runs.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs `f` on a blocking thread with the request timeout; a dropped client or the timeout
/// cancels it.
async fn with_timeout<T>(
    state: &Arc<AppState>,
    cancel: CancelToken,
    fut: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let mut guard = CancelOnDrop(Some(cancel.clone()));
    let limit = state.config.request_timeout;
    let out = match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => {
            cancel.cancel();
            Err(ApiError::timeout(limit.as_secs_f64()))
        }
    };
    guard.0 = None;
    out
}

/// Runs `f` on a blocking thread; a panic there is an internal error.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::from(Error::Internal(e.to_string())))?
        .map_err(ApiError::from)
}

/// Attribute: waits for the result.
#[utoipa::path(
    post, path = "/v1/attributions", tag = "attribution",
    request_body = AttributeRequest,
    responses(
        (status = 200, description = "Attribution result", body = AttributeResponse),
        (status = 400, description = "Malformed JSON or invalid request", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "The body is not sent as application/json", body = ErrorBody),
        (status = 422, description = "A limit is exceeded", body = ErrorBody),
        (status = 503, description = "All run slots busy, queue full, or model not loaded (Retry-After)", body = ErrorBody),
        (status = 504, description = "Request timeout", body = ErrorBody),
    ),
    security((), ("bearer" = []), ("api_key" = []))
)]
pub(crate) async fn attributions(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<AttributeRequest>,
) -> Result<Json<AttributeResponse>, ApiError> {
    state.refuse_if_stopping()?;
    state.ready()?;
    if state.config.max_request_seconds.is_some() {
        super::admit::admit(&state, JobRequest::Attribution(request.clone())).await?;
    }
    let slot = try_slot(&state)?;
    let cancel = CancelToken::new();
    let label = method_label(&request);
    let work = attribute_work(request, |_| {});
    let fut = run_in_slot(&state, slot, label, cancel.clone(), work, Chain::Request);
    with_timeout(&state, cancel, fut).await.map(Json)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenizeRequest {
    pub text: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct TokenizeResponse {
    pub ids: Vec<u32>,
    /// Each token as a person reads it.
    pub tokens: Vec<String>,
    /// Byte range `[start, end)` of `text` each token came from.
    pub offsets: Vec<[usize; 2]>,
}

/// Tokenize text (no special tokens added).
#[utoipa::path(
    post, path = "/v1/tokenize", tag = "model",
    request_body = TokenizeRequest,
    responses(
        (status = 200, body = TokenizeResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody),
    ),
    security((), ("bearer" = []), ("api_key" = []))
)]
pub(crate) async fn tokenize(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<TokenizeRequest>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    let ready = state.ready()?;
    let out = blocking(move || {
        let tok = ready.model.tokenizer();
        let (ids, offsets) = tok.encode_with_offsets(&req.text)?;
        Ok(TokenizeResponse {
            tokens: tok.pretty_tokens(&ids),
            offsets: offsets.into_iter().map(|(a, b)| [a, b]).collect(),
            ids,
        })
    })
    .await?;
    Ok(Json(out))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct GenerateRequest {
    pub prompt: String,
    /// Default 25.
    #[serde(default)]
    pub max_new_tokens: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct GenerateResponse {
    /// The continuation (without the prompt).
    pub text: String,
    pub ids: Vec<u32>,
    pub tokens: Vec<String>,
}

/// Greedy continuation of a prompt.
#[utoipa::path(
    post, path = "/v1/generate", tag = "model",
    request_body = GenerateRequest,
    responses(
        (status = 200, body = GenerateResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody),
    ),
    security((), ("bearer" = []), ("api_key" = []))
)]
pub(crate) async fn generate(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<GenerateRequest>,
) -> Result<Json<GenerateResponse>, ApiError> {
    state.refuse_if_stopping()?;
    let ready = state.ready()?;
    let limits = &state.config.limits;
    let max_new = req.max_new_tokens.unwrap_or(25);
    if max_new == 0 {
        return Err(Error::invalid("max_new_tokens", "must be at least 1").into());
    }
    if max_new > limits.max_new_tokens {
        return Err(Error::too_large(
            "max_new_tokens",
            format!(
                "{max_new} exceeds the limit of {} (--max-new-tokens)",
                limits.max_new_tokens
            ),
        )
        .into());
    }
    let max_tokens = limits.max_tokens_per_sequence;
    let cancel = CancelToken::new();
    let c = cancel.clone();
    let fut = blocking(move || {
        let tok = ready.model.tokenizer();
        let prompt = tok.encode(&req.prompt)?;
        if prompt.is_empty() {
            return Err(Error::invalid("prompt", "the prompt is empty"));
        }
        if prompt.len() + max_new > max_tokens {
            return Err(Error::too_large(
                "prompt",
                format!(
                    "{} prompt tokens + {max_new} new tokens exceed the limit of {max_tokens} (--max-tokens)",
                    prompt.len()
                ),
            ));
        }
        let ids = ready.engine.handle(c).generate_ids(&prompt, max_new)?;
        Ok(GenerateResponse {
            text: tok.decode(&ids)?,
            tokens: tok.pretty_tokens(&ids),
            ids,
        })
    });
    with_timeout(&state, cancel, fut).await.map(Json)
}

/// The loaded model.
#[utoipa::path(
    get, path = "/v1/model", tag = "model",
    responses((status = 200, body = ModelInfo), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)),
    security((), ("bearer" = []), ("api_key" = []))
)]
pub(crate) async fn model(State(state): State<Arc<AppState>>) -> Result<Json<ModelInfo>, ApiError> {
    Ok(Json(state.ready()?.model.info().clone()))
}

/// The seed notebook's four templates, ready to run.
#[utoipa::path(
    get, path = "/v1/templates", tag = "attribution",
    responses((status = 200, body = super::templates::Templates), (status = 401, body = ErrorBody)),
    security((), ("bearer" = []), ("api_key" = []))
)]
pub(crate) async fn templates() -> Json<super::templates::Templates> {
    Json(super::templates::templates())
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Health {
    /// `ok`, `loading`, `failed`, `stopping` or `store_unavailable`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "ops", responses((status = 200, body = Health)))]
pub(crate) async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        error: None,
    })
}

/// Readiness: 200 once the model is loaded and the job store answers; 503 before, while
/// stopping, if loading failed, or while Redis (with `--redis-url`) cannot be reached.
#[utoipa::path(get, path = "/ready", tag = "ops",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub(crate) async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let store_up = state.jobs.available();
    if let Some(r) = state.ready.get().filter(|r| r.model.remote().is_some()).cloned() {
        let reachable = tokio::task::spawn_blocking(move || r.model.remote().is_some_and(|m| m.reachable()))
            .await
            .unwrap_or(false);
        if !reachable {
            let error = "the inference server cannot be reached".to_string();
            let body = Health {
                status: "remote_unreachable".into(),
                error: Some(error),
            };
            return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        }
    }
    if state.ready.get().is_some() && !state.stopping() && store_up {
        return Json(Health {
            status: "ok".into(),
            error: None,
        })
        .into_response();
    }
    let (status, error) = match state.load_error.get() {
        Some(e) => ("failed", Some(e.clone())),
        None if state.stopping() => ("stopping", None),
        None if !store_up => (
            "store_unavailable",
            Some("the job store (Redis) cannot be reached".to_string()),
        ),
        None => ("loading", None),
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(Health {
            status: status.into(),
            error,
        }),
    )
        .into_response()
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub(crate) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let body = state.metrics.render(&state);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
