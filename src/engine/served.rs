//! What a server's engine runs: a model loaded in this process, or one an inference server
//! serves ([`RemoteModel`]). For a remote model a "forward pass" is one request of up to
//! `--remote-batch` prompts and the workers are the `--remote-concurrency` requests in flight,
//! so the queue, its turns, cancellation, progress and the measured throughput all apply.

use std::sync::Arc;

use super::{Backend, EngineConfig};
use crate::error::Result;
use crate::model::{GradientJob, Model, ModelInfo, ScoreItem, Tokenizer};
use crate::scorer::remote::RemoteModel;
use crate::scorer::{no_gradients, Scorer};

/// What the engine's workers run on: a model loaded here, or one an inference server serves.
/// One per process, so the size of the remote variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Served {
    Local(Arc<Model>),
    Remote(Box<RemoteModel>),
}

impl Served {
    /// The local model, if this is one.
    pub fn local(&self) -> Option<&Arc<Model>> {
        match self {
            Served::Local(m) => Some(m),
            Served::Remote(_) => None,
        }
    }

    /// The remote model, if this is one.
    pub fn remote(&self) -> Option<&RemoteModel> {
        match self {
            Served::Remote(r) => Some(r.as_ref()),
            Served::Local(_) => None,
        }
    }

    /// The engine settings for this backend: a remote model's batches are its requests
    /// (`batch` prompts, no token budget or pacing) and its workers the requests in flight.
    pub fn engine_config(&self, base: EngineConfig) -> EngineConfig {
        match self {
            Served::Local(_) => base,
            Served::Remote(r) => EngineConfig {
                workers: r.concurrency(),
                window: r.batch(),
                token_budget: r.batch().saturating_mul(r.context_length().max(1)),
                batch_seconds: None,
                ..base
            },
        }
    }
}

impl Backend for Served {
    fn score_batch(&self, batch: &[ScoreItem]) -> Result<Vec<Vec<f32>>> {
        match self {
            Served::Local(m) => Backend::score_batch(m.as_ref(), batch),
            Served::Remote(r) => r.score_batch(batch),
        }
    }

    fn generate(&self, prompt: &[u32], max_new_tokens: usize) -> Result<Vec<u32>> {
        match self {
            Served::Local(m) => Backend::generate(m.as_ref(), prompt, max_new_tokens),
            Served::Remote(r) => r.generate_ids(prompt, max_new_tokens),
        }
    }

    fn check(&self, item: &ScoreItem, field: &str) -> Result<()> {
        match self {
            Served::Local(m) => Backend::check(m.as_ref(), item, field),
            Served::Remote(r) => r.check(item, field),
        }
    }

    fn gradients(
        &self,
        job: &GradientJob,
        progress: &dyn Fn(usize, usize) -> Result<()>,
    ) -> Result<Vec<Vec<f64>>> {
        match self {
            Served::Local(m) => Backend::gradients(m.as_ref(), job, progress),
            Served::Remote(_) => Err(no_gradients()),
        }
    }
}

impl Scorer for Served {
    fn tokenizer(&self) -> &Tokenizer {
        match self {
            Served::Local(m) => Scorer::tokenizer(m.as_ref()),
            Served::Remote(r) => r.tokenizer(),
        }
    }

    fn info(&self) -> &ModelInfo {
        match self {
            Served::Local(m) => Scorer::info(m.as_ref()),
            Served::Remote(r) => r.info(),
        }
    }

    fn context_length(&self) -> usize {
        match self {
            Served::Local(m) => Scorer::context_length(m.as_ref()),
            Served::Remote(r) => r.context_length(),
        }
    }

    fn score(
        &self,
        items: Vec<ScoreItem>,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Vec<Vec<f32>>> {
        match self {
            Served::Local(m) => Scorer::score(m.as_ref(), items, progress),
            Served::Remote(r) => Scorer::score(r.as_ref(), items, progress),
        }
    }

    fn generate(&self, prompt: &[u32], max_new_tokens: usize) -> Result<Vec<u32>> {
        Backend::generate(self, prompt, max_new_tokens)
    }

    fn gradients(&self, job: GradientJob, progress: &(dyn Fn(usize, usize) + Sync)) -> Result<Vec<Vec<f64>>> {
        match self {
            Served::Local(m) => Scorer::gradients(m.as_ref(), job, progress),
            Served::Remote(_) => Err(no_gradients()),
        }
    }
}
