//! The HTTP service: routes, auth, limits, CORS, request ids, tracing, metrics, static files,
//! OpenAPI/Swagger UI, and a [`Server`] that starts it in-process and shuts it down gracefully.
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! use llm_attr::api::{Config, ModelSource, Server};
//! let server = Server::start(Config::new(ModelSource::Spec("models/x.gguf".into()))).await?;
//! server.ready().await?; // the model is loaded
//! println!("listening on {}", server.url());
//! server.shutdown().await;
//! # Ok(()) }
//! ```

pub(crate) mod admit;
pub(crate) mod assets;
pub(crate) mod audits;
pub(crate) mod chain;
pub(crate) mod config;
pub(crate) mod conn;
pub(crate) mod encoding;
pub(crate) mod error;
pub(crate) mod fair;
pub(crate) mod guard;
pub(crate) mod handlers;
pub(crate) mod job_routes;
pub(crate) mod jobs;
pub(crate) mod metrics;
pub(crate) mod openapi;
pub(crate) mod request_id;
pub(crate) mod store;
pub(crate) mod templates;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::{watch, Semaphore};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use utoipa_swagger_ui::SwaggerUi;

pub use assets::FILES;
pub use config::{Config, ModelSource, ServeArgs};
pub use conn::Timeouts;
pub use error::{parse_json, ApiError};
use metrics::Metrics;
pub use openapi::openapi_json;
use store::memory::MemoryStore;
use store::redis::{RedisSettings, RedisStore};
use store::{JobStore, Replicas};

use crate::engine::served::Served;
use crate::engine::Engine;
use crate::error::ErrorDetail;
use crate::model::Model;
use crate::score_cache::ScoreCache;
use crate::scorer::remote::RemoteModel;
use crate::scorer::Scorer;

/// The model (loaded here, or served by an inference server), the engine around it and the
/// score cache, once loaded.
pub struct Ready {
    /// The model: loaded here, or served by an inference server.
    pub model: Arc<Served>,
    /// The batching engine that scores through it.
    pub engine: Engine<Served>,
    pub(crate) cache: Arc<ScoreCache>,
}

/// Everything the handlers share.
pub struct AppState {
    /// The configuration the server started with.
    pub config: Config,
    /// Set once the model has loaded.
    pub ready: OnceLock<Arc<Ready>>,
    /// Why the model failed to load, once it has failed.
    pub load_error: OnceLock<String>,
    pub(crate) jobs: Arc<dyn JobStore>,
    /// What replicas sharing the Redis store add (shared scores, chunk workers, the fan-out);
    /// `None` with the in-memory store.
    pub(crate) replicas: Option<Arc<dyn Replicas>>,
    /// Jobs this process runs now.
    pub running_jobs: jobs::Running,
    pub(crate) metrics: Metrics,
    /// One permit per attribute request allowed to run at once.
    pub run_slots: Arc<Semaphore>,
    /// Each client's share of the run slots.
    pub shares: fair::Shares,
    /// Attribute runs executing in this process now.
    pub active_runs: AtomicUsize,
    stopping: AtomicBool,
}

impl AppState {
    /// Job `id`'s state (`queued`, `running`, `done`, `failed`, `cancelled`), if the store has it.
    pub async fn job_state(&self, id: &str) -> Option<&'static str> {
        self.jobs.get(id).await.ok().flatten().map(|j| j.state.as_str())
    }

    /// How many jobs the store holds, in any state.
    pub fn job_count(&self) -> usize {
        self.jobs.counts().iter().map(|(_, n)| n).sum()
    }

    /// The state for `config`; with a Redis URL, the job store connects in the background
    /// (call inside a Tokio runtime).
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let (jobs, replicas): (Arc<dyn JobStore>, Option<Arc<dyn Replicas>>) = match &config.redis_url {
            Some(url) => {
                let store = Arc::new(RedisStore::connect(RedisSettings {
                    url: url.clone(),
                    lease: config.lease,
                    ttl: config.job_ttl,
                    max_pending: config.max_pending_jobs,
                    chunk_size: config.fanout_chunk,
                    chunk_workers: config.chunk_workers,
                    queue_wait: config.job_queue_wait,
                })?);
                (store.clone(), Some(store))
            }
            None => (
                Arc::new(MemoryStore::new(
                    config.job_ttl,
                    config.max_finished_jobs,
                    config.max_pending_jobs,
                )),
                None,
            ),
        };
        Ok(AppState {
            jobs,
            replicas,
            running_jobs: jobs::Running::default(),
            run_slots: Arc::new(Semaphore::new(config.max_concurrent_jobs.max(1))),
            shares: fair::Shares::new(config.client_slots()),
            config,
            ready: OnceLock::new(),
            load_error: OnceLock::new(),
            metrics: Metrics::default(),
            active_runs: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
        })
    }

    /// The loaded model, or 503 while it loads.
    pub fn ready(&self) -> Result<Arc<Ready>, ApiError> {
        if let Some(r) = self.ready.get() {
            return Ok(r.clone());
        }
        Err(match self.load_error.get() {
            Some(e) => ApiError::not_ready(format!("the model failed to load: {e}")),
            None => ApiError::not_ready("the model is still loading"),
        })
    }

    /// True once shutdown has begun; new work is then refused.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn refuse_if_stopping(&self) -> Result<(), ApiError> {
        if self.stopping() {
            return Err(ApiError::not_ready("the server is shutting down"));
        }
        Ok(())
    }

    /// Loads the model (blocking) and starts the engine.
    fn load(&self) -> Result<(), String> {
        let served = Arc::new(match &self.config.model {
            ModelSource::Loaded(m) => Served::Local(m.clone()),
            ModelSource::Spec(spec) => {
                Served::Local(Model::load(spec, &self.config.load).map_err(|e| e.to_string())?)
            }
            ModelSource::Remote(settings) => Served::Remote(Box::new(
                RemoteModel::connect_patiently(settings, None).map_err(|e| e.to_string())?,
            )),
        });
        let config = served.engine_config(self.config.engine.clone());
        let engine = Engine::new(served.clone(), config.clone()).map_err(|e| e.to_string())?;
        let digest = match &*served {
            Served::Local(m) => crate::score_cache::model_digest(m),
            Served::Remote(r) => crate::score_cache::remote_digest(r),
        };
        let cache = Arc::new(ScoreCache::new(
            digest,
            self.config.score_cache_bytes,
            self.replicas.as_ref().map(|r| r.shared_scores()),
        ));
        let info = served.info();
        tracing::info!(
            spec = %info.spec,
            architecture = %info.arch.architecture,
            parameters = info.arch.parameters,
            device = served.local().map_or_else(|| "remote".to_string(), |m| crate::model::device::name(m.device())),
            dtype = %info.arch.dtype,
            workers = config.workers,
            batch_tokens = config.token_budget,
            digest = cache.digest(),
            "model loaded"
        );
        let ready = Arc::new(Ready {
            model: served,
            engine,
            cache,
        });
        let _ = self.ready.set(ready);
        Ok(())
    }
}

/// Anything no route matched: the web page, or a JSON 404.
async fn fallback(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let not_found = || ApiError::not_found(format!("route {path}")).into_response();
    if path == "/v1" || path.starts_with("/v1/") {
        return not_found();
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return method_not_allowed(req).await;
    }
    let found = match &state.config.static_dir {
        Some(dir) => assets::serve_dir(dir, &path).await,
        None => assets::serve(&path),
    };
    found.unwrap_or_else(not_found)
}

/// 405 in the JSON error shape (the router adds the `Allow` header).
async fn method_not_allowed(req: Request) -> Response {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
    .into_response()
}

/// The application: every route and layer, around `state`.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let auth = || middleware::from_fn_with_state(state.clone(), guard::auth);
    let v1 = Router::new()
        .route("/v1/attributions", post(handlers::attributions))
        .route("/v1/jobs", post(job_routes::create))
        .route("/v1/jobs/{id}", get(job_routes::get).delete(job_routes::cancel))
        .route("/v1/jobs/{id}/events", get(job_routes::events))
        .route("/v1/audits", post(audits::create))
        .route("/v1/audits/{id}", get(audits::get).delete(audits::cancel))
        .route("/v1/audits/{id}/events", get(audits::events))
        .route("/v1/plan", post(audits::plan))
        .route("/v1/templates", get(handlers::templates))
        .route("/v1/tokenize", post(handlers::tokenize))
        .route("/v1/generate", post(handlers::generate))
        .route("/v1/model", get(handlers::model))
        .route_layer(auth());
    let metrics = if state.config.public_metrics {
        get(handlers::metrics)
    } else {
        get(handlers::metrics).route_layer(auth())
    };
    let request_id = HeaderName::from_static(request_id::HEADER);
    let mut app = Router::new()
        .merge(v1)
        .route("/health", get(handlers::health))
        .route("/ready", get(handlers::ready))
        .route("/metrics", metrics)
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi::openapi()))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(fallback)
        .layer(middleware::from_fn_with_state(state.clone(), encoding::decode))
        .layer(middleware::from_fn_with_state(state.clone(), guard::check_host))
        // Inside the metrics, so that its 413s and 408s are counted; outside everything that
        // reads the body.
        .layer(middleware::from_fn_with_state(state.clone(), conn::limit_body))
        .layer(middleware::from_fn_with_state(state.clone(), metrics::track))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(
            TraceLayer::new_for_http()
                // The path only: a query string may carry a secret (a key sent as `?api_key=`).
                .make_span_with(|req: &Request| {
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
                })
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .layer(middleware::map_request(request_id::sanitize));
    if let Some(cors) = cors(&state.config.cors_origins) {
        app = app.layer(cors);
    }
    app.layer(middleware::from_fn(conn::track)).with_state(state)
}

fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
            .allow_headers([
                header::CONTENT_TYPE,
                header::AUTHORIZATION,
                HeaderName::from_static("x-api-key"),
            ])
            .expose_headers([
                header::LOCATION,
                header::RETRY_AFTER,
                HeaderName::from_static("x-request-id"),
            ])
            .max_age(Duration::from_secs(3600)),
    )
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    state: Arc<AppState>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Binds `config.listen` and starts serving; the model loads in the background.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        Server::start_on(config, listener).await
    }

    /// Serves on an already bound listener.
    pub async fn start_on(config: Config, listener: tokio::net::TcpListener) -> anyhow::Result<Server> {
        let addr = listener.local_addr()?;
        let state = Arc::new(AppState::new(config)?);
        let loader = state.clone();
        tokio::spawn(async move {
            let l = loader.clone();
            let loaded = tokio::task::spawn_blocking(move || l.load())
                .await
                .unwrap_or_else(|e| Err(format!("the loading task failed: {e}")));
            match loaded {
                Ok(()) => {
                    if let (Some(r), Some(replicas)) = (loader.ready.get(), &loader.replicas) {
                        replicas.start(r);
                    }
                }
                Err(e) => {
                    tracing::error!("cannot load the model: {e}");
                    let _ = loader.load_error.set(e);
                }
            }
        });
        jobs::spawn_runner(&state);
        let sweeper = Arc::downgrade(&state);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                match sweeper.upgrade() {
                    Some(s) if !s.stopping() => s.jobs.sweep(),
                    _ => break,
                }
            }
        });
        let (stop, mut rx) = watch::channel(false);
        let listener = conn::TimeoutListener::new(listener, state.config.timeouts);
        let app = router(state.clone()).into_make_service_with_connect_info::<conn::Conn>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
        });
        tracing::info!(%addr, "listening");
        Ok(Server {
            addr,
            state,
            stop,
            task,
        })
    }

    /// The address the server listens on, with the port it got.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The state the handlers share.
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Waits until the model is loaded; fails if loading failed.
    pub async fn ready(&self) -> anyhow::Result<()> {
        loop {
            if self.state.ready.get().is_some() {
                return Ok(());
            }
            if let Some(e) = self.state.load_error.get() {
                anyhow::bail!("cannot load the model: {e}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Serves until `signal` resolves, then shuts down gracefully.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) {
        signal.await;
        tracing::info!("shutting down");
        self.shutdown().await;
    }

    /// Stops accepting connections and claiming jobs. Running jobs that another replica can
    /// continue (Redis) are handed over at once; other in-flight work may finish for up to
    /// the configured grace period, then what is left is cancelled. Then the workers stop and
    /// open connections get a short moment to close: the whole fits inside docker's default
    /// 10 s stop timeout with the default grace (6 s).
    pub async fn shutdown(self) {
        let state = self.state;
        state.stopping.store(true, Ordering::SeqCst);
        state.jobs.stop();
        let _ = self.stop.send(true);
        if state.jobs.shares_work() {
            state.running_jobs.hand_over_all();
        }
        let deadline = Instant::now() + state.config.shutdown_grace;
        let busy = |s: &AppState| {
            s.active_runs.load(Ordering::SeqCst) > 0
                || !s.running_jobs.is_empty()
                || (!s.jobs.shares_work()
                    && s.jobs.counts().iter().any(|(st, n)| !st.is_finished() && *n > 0))
        };
        while busy(&state) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        state.jobs.cancel_all(ErrorDetail {
            code: "cancelled".into(),
            message: "the server shut down before the job finished".into(),
            field: None,
        });
        state.run_slots.close();
        if let Some(r) = state.ready.get().cloned() {
            let _ = tokio::task::spawn_blocking(move || r.engine.shutdown()).await;
        }
        // Connections still open (a slow SSE reader, a keep-alive client) get a moment, then go.
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(2), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
        tracing::info!("stopped");
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
