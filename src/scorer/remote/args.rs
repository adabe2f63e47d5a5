//! The flags of a remote model (`--model http(s)://...`), shared by `serve`, `attribute`,
//! `audit` and `bench`, each with its env var. The server's URL is an operator setting: no
//! request field chooses one.

use std::time::Duration;

use super::{Protocol, RemoteSettings};

/// An API key: parsed from a flag or env var, never printed.
#[derive(Clone)]
pub struct ApiKey(pub String);

impl std::str::FromStr for ApiKey {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(ApiKey(s.to_string()))
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, clap::Args)]
/// The `--remote-*` flags: how to reach a model that an inference server serves.
pub struct RemoteArgs {
    /// With --model URL: the served model's name. Default: the only one /v1/models lists.
    #[arg(long, env = "LLM_ATTR_REMOTE_MODEL")]
    pub remote_model: Option<String>,
    /// With --model URL: a local model spec (hf:ORG/NAME, a directory, a .gguf) whose
    /// tokenizer and chat template are used. Default: hf:<served model name> (or the served
    /// name itself where it is a local path).
    #[arg(long, env = "LLM_ATTR_TOKENIZER")]
    pub tokenizer: Option<String>,
    /// With --model URL: how to ask for prompt log-probs; auto probes the server once at start.
    #[arg(long, env = "LLM_ATTR_REMOTE_PROTOCOL", value_enum, default_value = "auto")]
    pub remote_protocol: Protocol,
    /// With --model URL: requests in flight at once.
    #[arg(long, env = "LLM_ATTR_REMOTE_CONCURRENCY", default_value_t = 8)]
    pub remote_concurrency: usize,
    /// With --model URL: prompts per request, where the protocol takes lists (vLLM, SGLang).
    #[arg(long, env = "LLM_ATTR_REMOTE_BATCH", default_value_t = 16)]
    pub remote_batch: usize,
    /// With --model URL: seconds one request may take, retries of connection errors, 429 and
    /// 5xx included; then it fails with 502 or 503.
    #[arg(long, env = "LLM_ATTR_REMOTE_TIMEOUT", default_value_t = 120.0)]
    pub remote_timeout: f64,
    /// With --model URL: the server's API key (sent as a bearer token; never logged).
    #[arg(long, env = "LLM_ATTR_REMOTE_API_KEY", hide_env_values = true)]
    pub remote_api_key: Option<ApiKey>,
    /// With --model URL: start even when the server cannot be reached yet (`serve` is not
    /// ready until it is); without it an unreachable server fails the start.
    #[arg(long, env = "LLM_ATTR_REMOTE_LAZY")]
    pub remote_lazy: bool,
    /// With --model URL: a local model spec (the same weights) to compare the server's
    /// log-probs with at start; a server that disagrees beyond --verify-tolerance is refused.
    #[arg(long, env = "LLM_ATTR_VERIFY_WITH")]
    pub verify_with: Option<String>,
    /// Largest log-prob difference (nats) --verify-with accepts.
    #[arg(long, env = "LLM_ATTR_VERIFY_TOLERANCE", default_value_t = 0.1)]
    pub verify_tolerance: f64,
}

impl RemoteArgs {
    /// The settings of the server at `url`.
    pub fn settings(&self, url: &str) -> anyhow::Result<RemoteSettings> {
        let timeout = Duration::try_from_secs_f64(self.remote_timeout)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "--remote-timeout: {} is not a positive number of seconds",
                    self.remote_timeout
                )
            })?;
        anyhow::ensure!(
            self.remote_concurrency > 0,
            "--remote-concurrency: must be at least 1"
        );
        anyhow::ensure!(self.remote_batch > 0, "--remote-batch: must be at least 1");
        anyhow::ensure!(
            self.verify_tolerance.is_finite() && self.verify_tolerance >= 0.0,
            "--verify-tolerance: must be a number of nats, at least 0"
        );
        super::client::root_of(url).map_err(|e| anyhow::anyhow!("--{e}"))?;
        Ok(RemoteSettings {
            url: url.trim().to_string(),
            model: self.remote_model.clone().filter(|m| !m.is_empty()),
            tokenizer: self.tokenizer.clone().filter(|t| !t.is_empty()),
            protocol: self.remote_protocol,
            concurrency: self.remote_concurrency,
            batch: self.remote_batch,
            timeout,
            api_key: self.remote_api_key.clone().map(|k| k.0).filter(|k| !k.is_empty()),
            lazy: self.remote_lazy,
            verify_with: self.verify_with.clone().filter(|v| !v.is_empty()),
            verify_tolerance: self.verify_tolerance,
        })
    }
}
