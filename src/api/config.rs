//! Server configuration: `llm-attr serve` flags (each with an env var) and the `Config` they
//! build, which tests also fill in directly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::EngineConfig;
use crate::input::chat::sandbox::Sandbox;
use crate::model::{DeviceArgs, LoadOptions, Model};
use crate::run::Limits;
use crate::scorer::remote::args::RemoteArgs;
use crate::scorer::remote::{is_remote, RemoteSettings};

/// Where the model comes from.
#[derive(Clone)]
pub enum ModelSource {
    /// A spec (`hf:ORG/NAME[@REV]`, a directory, a `.gguf` file), loaded in the background
    /// after the server starts listening (`/ready` is 503 until then).
    Spec(String),
    /// An already loaded model (tests, embedding).
    Loaded(Arc<Model>),
    /// A model an inference server serves (`--model http(s)://...`), reached in the
    /// background like a spec is loaded.
    Remote(RemoteSettings),
}

/// Everything the server runs with; built from [`ServeArgs`], or filled in by tests.
#[derive(Clone)]
pub struct Config {
    /// The model to serve.
    pub model: ModelSource,
    /// Device and dtype a `ModelSource::Spec` is loaded with.
    pub load: LoadOptions,
    /// Address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// The scoring engine: workers, queue size and batch sizes.
    pub engine: EngineConfig,
    /// Per-request limits (features, sequences, tokens, samples, ...).
    pub limits: Limits,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Attribute requests (sync or jobs) running at once; more wait their turn (jobs: `queued`).
    pub max_concurrent_jobs: usize,
    /// Run slots one client (its address) may hold at once; its further synchronous requests
    /// get 429 and its jobs stay queued. 0: half of `max_concurrent_jobs` (at least 1).
    pub max_client_slots: usize,
    /// Jobs queued or running at once; more are refused with 429.
    pub max_pending_jobs: usize,
    /// Longest a synchronous request (attributions, generate) may take before it is cancelled.
    pub request_timeout: Duration,
    /// Attributions, jobs and audits whose plan is estimated to take longer are refused
    /// (422) before any work; None: no limit.
    pub max_request_seconds: Option<f64>,
    /// How long finished jobs are kept.
    pub job_ttl: Duration,
    /// How many finished jobs are kept at most.
    pub max_finished_jobs: usize,
    /// Required on /v1/* and /metrics when set (`Authorization: Bearer KEY` or `X-Api-Key: KEY`).
    pub api_key: Option<String>,
    /// With an API key, leave /metrics open (for a scraper without the key).
    pub public_metrics: bool,
    /// Without an API key, `Host` values answered besides loopback names: exact names,
    /// `.example.com` for a domain and its subdomains, or `*` for any.
    pub allowed_hosts: Vec<String>,
    /// Connection timeouts: reading a request's headers and body, and idle keep-alive.
    pub timeouts: super::conn::Timeouts,
    /// Allowed CORS origins; `*` allows any; empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// Serve the web page from this directory instead of the copy compiled into the binary.
    pub static_dir: Option<PathBuf>,
    /// On shutdown, how long in-flight work may finish before it is cancelled. With the
    /// connection drain after it, shutdown stays inside docker's default 10 s stop timeout.
    pub shutdown_grace: Duration,
    /// Keep jobs (and share work and scores) in this Redis; None: in this process.
    pub redis_url: Option<String>,
    /// A job or chunk claimed from Redis whose replica sent no heartbeat for this long is
    /// taken over by another replica.
    pub lease: Duration,
    /// Longest a job may run (from its start, across replicas); None: no limit.
    pub job_time_limit: Option<Duration>,
    /// How long a job's sequences wait for room in a full scoring queue before the job fails
    /// with `queue_full`.
    pub job_queue_wait: Duration,
    /// Bytes of scores the in-process cache keeps (0: none).
    pub score_cache_bytes: usize,
    /// With Redis: sequences per fan-out chunk (0: no fan-out).
    pub fanout_chunk: usize,
    /// With Redis: chunks this replica scores at once.
    pub chunk_workers: usize,
}

impl Config {
    /// Run slots one client may hold: `max_client_slots`, or half of all (at least 1).
    pub(crate) fn client_slots(&self) -> usize {
        let all = self.max_concurrent_jobs.max(1);
        match self.max_client_slots {
            0 => (all / 2).max(1),
            n => n.min(all),
        }
    }

    /// Defaults for `model`, listening on 127.0.0.1:0 (any free port).
    pub fn new(model: ModelSource) -> Self {
        Config {
            model,
            load: LoadOptions::default(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            engine: EngineConfig {
                batch_seconds: Some(crate::engine::pace::DEFAULT_BATCH_SECONDS),
                ..EngineConfig::default()
            },
            limits: Limits::default(),
            max_body_bytes: 1 << 20,
            max_concurrent_jobs: 64,
            max_client_slots: 0,
            max_pending_jobs: 256,
            request_timeout: Duration::from_secs(300),
            max_request_seconds: None,
            job_ttl: Duration::from_secs(3600),
            max_finished_jobs: 1000,
            api_key: None,
            public_metrics: false,
            allowed_hosts: Vec::new(),
            timeouts: super::conn::Timeouts {
                header: Duration::from_secs(30),
                keep_alive: Duration::from_secs(60),
                body: Duration::from_secs(30),
                body_idle: Duration::from_secs(10),
            },
            cors_origins: Vec::new(),
            static_dir: None,
            shutdown_grace: Duration::from_secs(6),
            redis_url: None,
            lease: Duration::from_secs(30),
            job_time_limit: None,
            job_queue_wait: Duration::from_secs(120),
            score_cache_bytes: 64 << 20,
            fanout_chunk: 256,
            chunk_workers: 2,
        }
    }
}

/// `llm-attr serve`
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Model spec: hf:ORG/NAME[@REV], a directory, a .gguf file, or the http(s):// URL of an
    /// inference server (vLLM, SGLang, TGI, llama.cpp; see the --remote-* flags).
    #[arg(long, env = "LLM_ATTR_MODEL", default_value = "hf:distilbert/distilgpt2")]
    pub model: String,
    #[command(flatten)]
    /// How to reach a model served by an inference server (with `--model http(s)://...`).
    pub remote: RemoteArgs,
    /// Address to listen on (0.0.0.0 or :: for every interface).
    #[arg(long, env = "LLM_ATTR_HOST", default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// Port to listen on.
    #[arg(long, env = "LLM_ATTR_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Threads inside one forward pass (0: all cores).
    #[arg(long, env = "LLM_ATTR_THREADS", default_value_t = 0)]
    pub threads: usize,
    /// Where the model runs and in which data type (`--device`, `--dtype`, `--gradient-passes`).
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Worker threads running forward passes; they share one copy of the model. Default: 1
    /// (one per GPU; on the CPU each pass already uses every core).
    #[arg(long, env = "LLM_ATTR_WORKERS")]
    pub workers: Option<usize>,
    /// Sequences the scoring queue holds; beyond it requests get 503 + Retry-After.
    #[arg(long, env = "LLM_ATTR_QUEUE_SIZE", default_value_t = 65_536)]
    pub queue_size: usize,
    /// Padded tokens (sequences x longest) of one forward pass. Default: 2048 on the CPU,
    /// 16384 on a GPU.
    #[arg(long, env = "LLM_ATTR_BATCH_TOKENS")]
    pub batch_tokens: Option<usize>,
    /// Seconds one forward pass should take at most: batches shrink below --batch-tokens
    /// when the device is too slow for that, so work that arrives while one runs (a small
    /// request behind a big job) waits about this long. 0 turns it off.
    #[arg(long, env = "LLM_ATTR_BATCH_SECONDS", default_value_t = crate::engine::pace::DEFAULT_BATCH_SECONDS)]
    pub batch_seconds: f64,
    /// Allowed CORS origins, comma separated; `*` allows any.
    #[arg(long, env = "LLM_ATTR_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// API key required on /v1/* and /metrics (Authorization: Bearer KEY or X-Api-Key: KEY).
    /// Without one, only loopback Host names and --allowed-hosts are answered.
    #[arg(long, env = "LLM_ATTR_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// With --api-key, leave /metrics open (e.g. for a scraper without the key).
    #[arg(long, env = "LLM_ATTR_PUBLIC_METRICS")]
    pub public_metrics: bool,
    /// Without --api-key, Host names answered besides loopback ones, comma separated:
    /// `name`, `.domain` (it and its subdomains), or `*` (any).
    #[arg(long, env = "LLM_ATTR_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Seconds a client has to send a request's headers (from connecting, or from its first byte).
    #[arg(long, env = "LLM_ATTR_HEADER_TIMEOUT", default_value_t = 30.0)]
    pub header_timeout: f64,
    /// Seconds an idle keep-alive connection stays open between requests.
    #[arg(long, env = "LLM_ATTR_KEEP_ALIVE_TIMEOUT", default_value_t = 60.0)]
    pub keep_alive_timeout: f64,
    /// Seconds a request's whole body has to arrive after its headers (408 otherwise).
    #[arg(long, env = "LLM_ATTR_BODY_TIMEOUT", default_value_t = 30.0)]
    pub body_timeout: f64,
    /// Longest gap in seconds between two pieces of a request's body (408 otherwise).
    #[arg(long, env = "LLM_ATTR_BODY_IDLE_TIMEOUT", default_value_t = 10.0)]
    pub body_idle_timeout: f64,
    /// Serve the web page from this directory instead of the compiled-in copy.
    #[arg(long, env = "LLM_ATTR_STATIC_DIR")]
    pub static_dir: Option<PathBuf>,
    /// Largest request body, bytes.
    #[arg(long, env = "LLM_ATTR_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Features per request.
    #[arg(long, env = "LLM_ATTR_MAX_FEATURES", default_value_t = Limits::default().max_features)]
    pub max_features: usize,
    /// Distinct sequences one request may send to the model.
    #[arg(long, env = "LLM_ATTR_MAX_SEQUENCES", default_value_t = Limits::default().max_sequences)]
    pub max_sequences: usize,
    /// Tokens per sequence (prompt + target).
    #[arg(long, env = "LLM_ATTR_MAX_TOKENS", default_value_t = Limits::default().max_tokens_per_sequence)]
    pub max_tokens: usize,
    /// Largest n_samples of a request.
    #[arg(long, env = "LLM_ATTR_MAX_N_SAMPLES", default_value_t = Limits::default().max_n_samples)]
    pub max_n_samples: usize,
    /// Largest num_trials of a request.
    #[arg(long, env = "LLM_ATTR_MAX_NUM_TRIALS", default_value_t = Limits::default().max_num_trials)]
    pub max_num_trials: usize,
    /// Largest max_new_tokens of a request (tokens of a generated target).
    #[arg(long, env = "LLM_ATTR_MAX_NEW_TOKENS", default_value_t = Limits::default().max_new_tokens)]
    pub max_new_tokens: usize,
    /// Interpolation steps of integrated_gradients (`n_steps`).
    #[arg(long, env = "LLM_ATTR_MAX_N_STEPS", default_value_t = Limits::default().max_n_steps)]
    pub max_n_steps: usize,
    /// Cells of one audit (the product of its sweep lists).
    #[arg(long, env = "LLM_ATTR_MAX_AUDIT_CELLS", default_value_t = Limits::default().max_audit_cells)]
    pub max_audit_cells: usize,
    /// Run chat templates given in requests (`chat_template`), each in a worker process capped
    /// at 64 MB of memory, 4 MB of output and 2 s. Off: such requests get 400, and chat input
    /// uses the model's own template.
    #[arg(long, env = "LLM_ATTR_ALLOW_REQUEST_TEMPLATES")]
    pub allow_request_templates: bool,
    /// Attribute requests running at once; more wait their turn.
    #[arg(long, env = "LLM_ATTR_MAX_CONCURRENT_JOBS", default_value_t = 64)]
    pub max_concurrent_jobs: usize,
    /// Run slots one client (by address) may hold at once; its further synchronous requests
    /// get 429 and its jobs wait queued, while other clients use the free slots. 0: half of
    /// --max-concurrent-jobs (at least 1).
    #[arg(long, env = "LLM_ATTR_MAX_CLIENT_SLOTS", default_value_t = 0)]
    pub max_client_slots: usize,
    /// Jobs queued or running at once; more get 429.
    #[arg(long, env = "LLM_ATTR_MAX_PENDING_JOBS", default_value_t = 256)]
    pub max_pending_jobs: usize,
    /// Seconds a synchronous request may take before it is cancelled (504).
    #[arg(long, env = "LLM_ATTR_REQUEST_TIMEOUT", default_value_t = 300.0)]
    pub request_timeout: f64,
    /// Refuse (422, before any work) an attribution, job or audit whose plan is estimated to
    /// take longer than this many seconds at the measured throughput; 0: no limit.
    #[arg(long, env = "LLM_ATTR_MAX_REQUEST_SECONDS", default_value_t = 0.0)]
    pub max_request_seconds: f64,
    /// Seconds finished jobs are kept.
    #[arg(long, env = "LLM_ATTR_JOB_TTL", default_value_t = 3600.0)]
    pub job_ttl: f64,
    /// Finished jobs kept at most.
    #[arg(long, env = "LLM_ATTR_MAX_FINISHED_JOBS", default_value_t = 1000)]
    pub max_finished_jobs: usize,
    /// Seconds in-flight work may finish on shutdown before it is cancelled (plus up to 2 s
    /// for open connections: inside docker's default 10 s stop timeout). With --redis-url,
    /// running jobs are handed to another replica at once instead.
    #[arg(long, env = "LLM_ATTR_SHUTDOWN_GRACE", default_value_t = 6.0)]
    pub shutdown_grace: f64,
    /// Keep jobs in Redis (redis://[:PASSWORD@]HOST:PORT[/DB]): every replica answers for every
    /// job, shares the work and the score cache, and takes over the jobs of a replica that dies.
    #[arg(long, env = "LLM_ATTR_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// With --redis-url: seconds without a heartbeat after which a replica's job is taken over.
    #[arg(long, env = "LLM_ATTR_LEASE_SECONDS", default_value_t = 30.0)]
    pub lease_seconds: f64,
    /// Seconds a job may run (from its start) before it fails with time_limit_exceeded; 0: none.
    #[arg(long, env = "LLM_ATTR_JOB_TIME_LIMIT", default_value_t = 0.0)]
    pub job_time_limit: f64,
    /// Seconds a job waits for room in a full scoring queue before it fails with queue_full.
    #[arg(long, env = "LLM_ATTR_JOB_QUEUE_WAIT", default_value_t = 120.0)]
    pub job_queue_wait: f64,
    /// Megabytes of scores kept in this process's cache (0: none).
    #[arg(long, env = "LLM_ATTR_SCORE_CACHE_MB", default_value_t = 64)]
    pub score_cache_mb: usize,
    /// With --redis-url: sequences per fan-out chunk; a job's scoring call of two chunks or
    /// more is split so every replica helps (0: never).
    #[arg(long, env = "LLM_ATTR_FANOUT_CHUNK", default_value_t = 256)]
    pub fanout_chunk: usize,
    /// With --redis-url: fan-out chunks this replica scores at once.
    #[arg(long, env = "LLM_ATTR_CHUNK_WORKERS", default_value_t = 2)]
    pub chunk_workers: usize,
    /// Log as JSON lines.
    #[arg(long, env = "LLM_ATTR_LOG_JSON")]
    pub log_json: bool,
}

fn secs(v: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| anyhow::anyhow!("--{flag}: {v} is not a valid number of seconds"))
}

fn positive_secs(v: f64, flag: &str) -> anyhow::Result<Duration> {
    let d = secs(v, flag)?;
    anyhow::ensure!(!d.is_zero(), "--{flag}: must be more than 0 seconds");
    Ok(d)
}

/// A comma-separated list flag, trimmed, without empty entries.
fn non_empty(list: &[String]) -> Vec<String> {
    list.iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

impl ServeArgs {
    /// The server configuration these flags describe; a bad value fails, naming its flag.
    pub fn config(&self) -> anyhow::Result<Config> {
        let source = if is_remote(&self.model) {
            ModelSource::Remote(self.remote.settings(&self.model)?)
        } else {
            ModelSource::Spec(self.model.clone())
        };
        let mut c = Config::new(source);
        c.load = self.device.load_options()?;
        let tuned = EngineConfig::for_device(&c.load.device);
        c.listen = SocketAddr::new(self.host, self.port);
        c.engine = EngineConfig {
            workers: self.workers.unwrap_or(tuned.workers).max(1),
            queue_capacity: self.queue_size.max(1),
            token_budget: self.batch_tokens.unwrap_or(tuned.token_budget).max(1),
            batch_seconds: Some(self.batch_seconds).filter(|s| *s > 0.0),
            ..EngineConfig::default()
        };
        c.limits = Limits {
            max_features: self.max_features,
            // A request can never need more room than the whole queue.
            max_sequences: self.max_sequences.min(self.queue_size.max(1)),
            max_tokens_per_sequence: self.max_tokens,
            max_n_samples: self.max_n_samples,
            max_num_trials: self.max_num_trials,
            max_new_tokens: self.max_new_tokens,
            max_n_steps: self.max_n_steps,
            max_audit_cells: self.max_audit_cells,
            request_templates: if self.allow_request_templates {
                let sandbox = Sandbox::current_exe().map_err(|e| {
                    anyhow::anyhow!(
                        "--allow-request-templates: cannot find this binary to run template workers: {e}"
                    )
                })?;
                Some(Arc::new(sandbox))
            } else {
                None
            },
        };
        c.max_body_bytes = self.max_body_bytes;
        c.max_concurrent_jobs = self.max_concurrent_jobs.max(1);
        c.max_client_slots = self.max_client_slots;
        c.max_pending_jobs = self.max_pending_jobs.max(1);
        c.request_timeout = secs(self.request_timeout, "request-timeout")?;
        let most = secs(self.max_request_seconds, "max-request-seconds")?;
        c.max_request_seconds = (!most.is_zero()).then_some(most.as_secs_f64());
        c.job_ttl = secs(self.job_ttl, "job-ttl")?;
        c.max_finished_jobs = self.max_finished_jobs;
        c.api_key = self.api_key.clone().filter(|k| !k.is_empty());
        c.public_metrics = self.public_metrics;
        c.allowed_hosts = non_empty(&self.allowed_hosts);
        c.timeouts = super::conn::Timeouts {
            header: positive_secs(self.header_timeout, "header-timeout")?,
            keep_alive: positive_secs(self.keep_alive_timeout, "keep-alive-timeout")?,
            body: positive_secs(self.body_timeout, "body-timeout")?,
            body_idle: positive_secs(self.body_idle_timeout, "body-idle-timeout")?,
        };
        c.cors_origins = non_empty(&self.cors_origins);
        c.static_dir = self.static_dir.clone();
        c.shutdown_grace = secs(self.shutdown_grace, "shutdown-grace")?;
        c.redis_url = self.redis_url.clone().filter(|u| !u.is_empty());
        c.lease = secs(self.lease_seconds, "lease-seconds")?;
        if c.lease < Duration::from_secs(1) {
            anyhow::bail!(
                "--lease-seconds: {} is too short (at least 1)",
                self.lease_seconds
            );
        }
        let limit = secs(self.job_time_limit, "job-time-limit")?;
        c.job_time_limit = (!limit.is_zero()).then_some(limit);
        c.job_queue_wait = secs(self.job_queue_wait, "job-queue-wait")?;
        c.score_cache_bytes = self.score_cache_mb.saturating_mul(1 << 20);
        c.fanout_chunk = self.fanout_chunk;
        c.chunk_workers = self.chunk_workers.max(1);
        Ok(c)
    }
}
