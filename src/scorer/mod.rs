//! What attribution needs from a model: its tokenizer and facts, scores of sequences, and a
//! generated target. `Model` answers directly (CLI); the engine answers through its queue (HTTP).
//! Nothing here hands out a `Model`, so a remote or GPU scorer need not hold one.

pub mod remote;

use crate::error::{Error, Result};
use crate::model::{GradientJob, Model, ModelInfo, ScoreItem, Tokenizer};

/// What attribution needs from a model: tokenizing, scoring, generating and gradients.
/// Implemented by [`Model`] and the engine's handle and their wrappers (caches, fan-out).
pub trait Scorer: Send + Sync {
    /// The tokenizer prompts and targets are encoded with.
    fn tokenizer(&self) -> &Tokenizer;
    /// What is loaded (spec, architecture, sizes).
    fn info(&self) -> &ModelInfo;
    /// Most tokens of one sequence (prompt + target) the model takes.
    fn context_length(&self) -> usize {
        self.info().arch.context_length
    }
    /// Log-probs of every target token of every item, in order. `progress(done, total)` is
    /// called as items finish. Fails with `Error::Cancelled` when the caller gave up.
    fn score(&self, items: Vec<ScoreItem>, progress: &(dyn Fn(usize, usize) + Sync))
        -> Result<Vec<Vec<f32>>>;
    /// Greedy continuation of `prompt`.
    fn generate(&self, prompt: &[u32], max_new_tokens: usize) -> Result<Vec<u32>>;
    /// The gradient methods' numbers (see [`GradientJob`]): one row per prompt position, per
    /// target token k (and point, as `job.combine` says). `progress(done, total)` counts the
    /// points of the path. A scorer
    /// without a differentiable model refuses.
    fn gradients(&self, job: GradientJob, progress: &(dyn Fn(usize, usize) + Sync)) -> Result<Vec<Vec<f64>>> {
        let _ = (job, progress);
        Err(no_gradients())
    }
    /// True once the caller gave up (client gone, job deleted, timeout): work that builds
    /// prompts looks here often and stops with `Error::Cancelled`.
    fn is_cancelled(&self) -> bool {
        false
    }
    /// The input tokens this scorer has had computed so far, and those it reused (from a
    /// prefix shared with other sequences or cached); `None` when it does not count them.
    fn tokens(&self) -> Option<TokenWork> {
        None
    }
}

/// Input tokens a scorer had computed, and those it reused instead (see [`Scorer::tokens`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenWork {
    /// Input tokens whose keys and values were computed.
    pub computed: u64,
    /// Input tokens whose keys and values were reused from a shared or cached prefix.
    pub reused: u64,
}

impl TokenWork {
    /// What was done between `before` and `self`.
    pub fn since(self, before: TokenWork) -> TokenWork {
        TokenWork {
            computed: self.computed.saturating_sub(before.computed),
            reused: self.reused.saturating_sub(before.reused),
        }
    }
}

/// The model facts of a scorer that wraps another (`self.$field`): its tokenizer, info and
/// context length are the inner scorer's, and so are its token counts unless the wrapper counts
/// its own (`scorer_facts_from!(inner, own tokens)`). Written once so a wrapper only states what
/// it changes.
#[macro_export]
macro_rules! scorer_facts_from {
    ($field:tt) => {
        $crate::scorer_facts_from!($field, own tokens);

        fn tokens(&self) -> Option<$crate::scorer::TokenWork> {
            self.$field.tokens()
        }
    };
    ($field:tt, own tokens) => {
        fn tokenizer(&self) -> &$crate::model::Tokenizer {
            self.$field.tokenizer()
        }

        fn info(&self) -> &$crate::model::ModelInfo {
            self.$field.info()
        }

        fn context_length(&self) -> usize {
            self.$field.context_length()
        }
    };
}

/// What a scorer without gradients answers.
pub(crate) fn no_gradients() -> Error {
    Error::invalid(
        "method",
        "this model cannot compute gradients here; use a perturbation method",
    )
}

impl Scorer for Model {
    fn tokenizer(&self) -> &Tokenizer {
        Model::tokenizer(self)
    }

    fn info(&self) -> &ModelInfo {
        Model::info(self)
    }

    fn context_length(&self) -> usize {
        Model::context_length(self)
    }

    fn score(
        &self,
        items: Vec<ScoreItem>,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Vec<Vec<f32>>> {
        let out = self.score_all(&items, self.token_budget())?;
        progress(items.len(), items.len());
        Ok(out)
    }

    fn generate(&self, prompt: &[u32], max_new_tokens: usize) -> Result<Vec<u32>> {
        Model::generate(self, prompt, max_new_tokens)
    }

    fn tokens(&self) -> Option<TokenWork> {
        let (computed, reused) = self.token_counts();
        Some(TokenWork { computed, reused })
    }

    fn gradients(&self, job: GradientJob, progress: &(dyn Fn(usize, usize) + Sync)) -> Result<Vec<Vec<f64>>> {
        Model::gradients(self, &job, &|done, total| {
            progress(done, total);
            Ok(())
        })
    }
}
