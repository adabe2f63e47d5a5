//! Runs one attribute request end to end: input -> method -> evaluator -> scorer.

use crate::error::{Error, Result};
use crate::request::{AttributeRequest, AttributeResponse};
use crate::scorer::Scorer;

/// Per-request limits; the server maps its flags onto these.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Features of one request (exact methods may allow fewer).
    pub max_features: usize,
    /// Distinct sequences one request may send to the model.
    pub max_sequences: usize,
    /// Tokens of one sequence (prompt + target).
    pub max_tokens_per_sequence: usize,
    pub max_n_samples: usize,
    pub max_num_trials: usize,
    pub max_new_tokens: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_features: 64,
            max_sequences: 20_000,
            max_tokens_per_sequence: 1024,
            max_n_samples: 2_000,
            max_num_trials: 20,
            max_new_tokens: 100,
        }
    }
}

/// Work done so far, in sequences scored out of the total the request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
}

/// Runs `request` against `scorer`. `progress` is called as sequences are scored.
pub fn run(
    request: &AttributeRequest,
    scorer: &dyn Scorer,
    limits: &Limits,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<AttributeResponse> {
    let _ = (request, scorer, limits, progress);
    Err(Error::Internal("not implemented yet".into()))
}
