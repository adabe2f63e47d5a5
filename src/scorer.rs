//! What attribution needs from a model: score sequences, generate a target, tokenize.
//! `Model` answers directly (CLI); the engine answers through its queue (HTTP).

use crate::error::Result;
use crate::model::{Model, ScoreItem};

/// Default padded-token budget of one forward pass.
pub const DEFAULT_TOKEN_BUDGET: usize = 2048;

pub trait Scorer: Send + Sync {
    /// The model behind it (tokenizer, info).
    fn model(&self) -> &Model;
    /// Log-probs of every target token of every item, in order. `progress(done, total)` is
    /// called as items finish. Fails with `Error::Cancelled` when the caller gave up.
    fn score(&self, items: Vec<ScoreItem>, progress: &(dyn Fn(usize, usize) + Sync))
        -> Result<Vec<Vec<f32>>>;
    /// Greedy continuation of `prompt`.
    fn generate(&self, prompt: &[u32], max_new_tokens: usize) -> Result<Vec<u32>>;
}

impl Scorer for Model {
    fn model(&self) -> &Model {
        self
    }

    fn score(
        &self,
        items: Vec<ScoreItem>,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Vec<Vec<f32>>> {
        let out = self.score_all(&items, DEFAULT_TOKEN_BUDGET)?;
        progress(items.len(), items.len());
        Ok(out)
    }

    fn generate(&self, prompt: &[u32], max_new_tokens: usize) -> Result<Vec<u32>> {
        Model::generate(self, prompt, max_new_tokens)
    }
}
