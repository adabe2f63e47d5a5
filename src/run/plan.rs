//! Cost preview: what a request would score, counted by running it against a scorer that
//! scores nothing. The counts are the real run's, because they come from the same code: the
//! same checks, the same coalitions and the same distinct sequences.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{run, Limits};
use crate::error::Result;
use crate::model::{GradientJob, ScoreItem};
use crate::request::AttributeRequest;
use crate::scorer::Scorer;

/// What a request needs, counted without scoring.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Plan {
    /// Features attributed (of one cell, for an audit).
    pub features: usize,
    /// Distinct coalitions the method evaluates (summed over an audit's cells).
    pub coalitions: usize,
    /// Coalition evaluations, repeats and trials included.
    pub evaluations: usize,
    /// Distinct sequences (prompt + continuation) the model scores.
    pub distinct_sequences: usize,
    /// Tokens fed to the model.
    pub tokens: usize,
    /// True when the target is generated: its length is taken as `max_new_tokens`, so the
    /// counts are upper bounds (and the generation itself is not counted).
    #[serde(default)]
    pub target_generated: bool,
    /// The server's measured scoring throughput; null before it has scored anything.
    pub tokens_per_second: Option<f64>,
    /// `tokens / tokens_per_second`; null without a measured throughput.
    pub estimated_seconds: Option<f64>,
}

impl Plan {
    /// Adds another request's work (an audit cell's attribution).
    pub fn add(&mut self, other: &Plan) {
        self.coalitions += other.coalitions;
        self.evaluations += other.evaluations;
        self.distinct_sequences += other.distinct_sequences;
        self.tokens += other.tokens;
        self.target_generated |= other.target_generated;
    }

    /// The plan with its time estimated at `tokens_per_second`.
    pub fn at_throughput(mut self, tokens_per_second: Option<f64>) -> Plan {
        let tps = tokens_per_second.filter(|t| t.is_finite() && *t > 0.0);
        self.tokens_per_second = tps;
        self.estimated_seconds = tps.map(|t| self.tokens as f64 / t);
        self
    }
}

/// Knows what the real scorer knows (tokenizer, model facts) but scores nothing: every
/// log-prob is 0, and a generated target is `max_new_tokens` long.
pub struct DryScorer<'a>(pub &'a dyn Scorer);

impl Scorer for DryScorer<'_> {
    crate::scorer_facts_from!(0);

    fn is_cancelled(&self) -> bool {
        self.0.is_cancelled()
    }

    fn score(&self, items: Vec<ScoreItem>, _: &(dyn Fn(usize, usize) + Sync)) -> Result<Vec<Vec<f32>>> {
        Ok(items.iter().map(|i| vec![0.0; i.target.len()]).collect())
    }

    fn generate(&self, _: &[u32], max_new_tokens: usize) -> Result<Vec<u32>> {
        let filler = self.tokenizer().eos_ids().first().copied().unwrap_or(0);
        Ok(vec![filler; max_new_tokens])
    }

    fn gradients(&self, job: GradientJob, progress: &(dyn Fn(usize, usize) + Sync)) -> Result<Vec<Vec<f64>>> {
        let _ = progress;
        Ok(vec![vec![0.0; job.prompt.len()]; job.n_rows()])
    }
}

/// Counts what `request` would score, without scoring: the same errors as the real request,
/// and its exact coalitions, distinct sequences and tokens.
pub fn plan(request: &AttributeRequest, scorer: &dyn Scorer, limits: &Limits) -> Result<Plan> {
    let r = run(request, &DryScorer(scorer), limits, &|_| {})?;
    Ok(Plan {
        features: r.features.len(),
        coalitions: r.stats.coalitions,
        evaluations: r.stats.evaluations,
        distinct_sequences: r.stats.unique_sequences,
        tokens: r.stats.tokens_scored,
        target_generated: r.generated_target,
        tokens_per_second: None,
        estimated_seconds: None,
    })
}
