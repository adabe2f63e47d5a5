//! Cost preview: what a request would score, counted by running it against a scorer that
//! scores nothing. The counts are the real run's, because they come from the same code: the
//! same checks, the same coalitions and the same distinct sequences.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{run, Limits};
use crate::error::Result;
use crate::model::prefix::{self, distinct_prefix_tokens};
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
    /// Of `tokens`, the fewest left to compute when every prefix that the sequences share is
    /// computed once: what the local engine's shared-prefix reuse computes at best (a prefix
    /// that an earlier request left in its cache lowers it). A remote server computes what its
    /// own caching leaves.
    #[serde(default)]
    pub tokens_after_reuse: usize,
    /// True when the target is generated: its length is taken as `max_new_tokens`, so the
    /// counts are upper bounds (and the generation itself is not counted).
    #[serde(default)]
    pub target_generated: bool,
    /// The gradient methods' work: tokens times the passes over them, the forward pass and
    /// one backward pass per target token (`points x sequence x (1 + target tokens)`); 0 for
    /// the perturbation methods.
    #[serde(default)]
    pub gradient_tokens: usize,
    /// The server's measured scoring throughput, in tokens computed per second (tokens reused
    /// from a shared prefix are free); null before it has scored anything.
    pub tokens_per_second: Option<f64>,
    /// The server's measured gradient throughput (`gradient_tokens` per second); before its
    /// first gradient run, the scoring throughput stands in for it.
    #[serde(default)]
    pub gradient_tokens_per_second: Option<f64>,
    /// The tokens to compute (`tokens_after_reuse` on a local model, `tokens` on a remote one)
    /// at `tokens_per_second`, plus `gradient_tokens` at `gradient_tokens_per_second`; null
    /// without a measured throughput.
    pub estimated_seconds: Option<f64>,
    /// The part of `tokens` that the gradient passes feed (timed with `gradient_tokens`).
    #[serde(skip)]
    #[schema(ignore)]
    pub(crate) gradient_forward: usize,
}

impl Plan {
    /// Adds another request's work (an audit cell's attribution).
    pub fn add(&mut self, other: &Plan) {
        self.coalitions += other.coalitions;
        self.evaluations += other.evaluations;
        self.distinct_sequences += other.distinct_sequences;
        self.tokens += other.tokens;
        self.tokens_after_reuse += other.tokens_after_reuse;
        self.target_generated |= other.target_generated;
        self.gradient_tokens += other.gradient_tokens;
        self.gradient_forward += other.gradient_forward;
    }

    /// The plan with its time estimated at the measured throughputs: the tokens to compute at
    /// `tokens_per_second` (with `reuse`, those left after shared-prefix reuse), gradient work
    /// at `gradient_tokens_per_second` (or, before any gradient run, at the scoring rate).
    pub(crate) fn at_throughput(
        mut self,
        tokens_per_second: Option<f64>,
        gradient_tokens_per_second: Option<f64>,
        reuse: bool,
    ) -> Plan {
        let rate = |r: Option<f64>| r.filter(|t| t.is_finite() && *t > 0.0);
        let tps = rate(tokens_per_second);
        let gtps = rate(gradient_tokens_per_second).or(tps);
        self.tokens_per_second = tps;
        self.gradient_tokens_per_second = gtps;
        let fed = if reuse {
            self.tokens_after_reuse
        } else {
            self.tokens
        };
        let scored = fed.saturating_sub(self.gradient_forward) as f64;
        self.estimated_seconds = tps.zip(gtps).map(|(t, g)| {
            let gradients = if self.gradient_tokens > 0 {
                self.gradient_tokens as f64 / g
            } else {
                0.0
            };
            scored / t + gradients
        });
        self
    }
}

/// Knows what the real scorer knows (tokenizer, model facts) but scores nothing: every
/// log-prob is 0, and a generated target is `max_new_tokens` long. It counts the gradient
/// work it is asked for and keeps the input tokens of what it is asked to score.
pub(crate) struct DryScorer<'a> {
    inner: &'a dyn Scorer,
    /// [`GradientJob::work`] summed over the jobs asked for.
    gradients: Mutex<(usize, usize)>,
    /// The input tokens of every item scored.
    inputs: Mutex<Vec<Vec<u32>>>,
}

impl<'a> DryScorer<'a> {
    pub(crate) fn new(inner: &'a dyn Scorer) -> Self {
        DryScorer {
            inner,
            gradients: Mutex::new((0, 0)),
            inputs: Mutex::new(Vec::new()),
        }
    }

    fn gradient_work(&self) -> (usize, usize) {
        self.gradients.lock().map_or((0, 0), |g| *g)
    }

    /// The fewest input tokens left to compute after prefix reuse: the scored items' distinct
    /// prefixes, and the gradient passes' forward tokens.
    pub(crate) fn after_reuse(self) -> usize {
        let forward = self.gradient_work().1;
        let inputs = self.inputs.into_inner().unwrap_or_else(|e| e.into_inner());
        distinct_prefix_tokens(inputs) + forward
    }
}

impl Scorer for DryScorer<'_> {
    crate::scorer_facts_from!(inner);

    fn is_cancelled(&self) -> bool {
        self.inner.is_cancelled()
    }

    fn score(&self, items: Vec<ScoreItem>, _: &(dyn Fn(usize, usize) + Sync)) -> Result<Vec<Vec<f32>>> {
        if let Ok(mut inputs) = self.inputs.lock() {
            inputs.extend(items.iter().map(prefix::input));
        }
        Ok(items.iter().map(|i| vec![0.0; i.target.len()]).collect())
    }

    fn generate(&self, _: &[u32], max_new_tokens: usize) -> Result<Vec<u32>> {
        let filler = self.tokenizer().eos_ids().first().copied().unwrap_or(0);
        Ok(vec![filler; max_new_tokens])
    }

    fn gradients(&self, job: GradientJob, progress: &(dyn Fn(usize, usize) + Sync)) -> Result<Vec<Vec<f64>>> {
        let _ = progress;
        let (work, forward) = job.work();
        if let Ok(mut g) = self.gradients.lock() {
            g.0 += work;
            g.1 += forward;
        }
        Ok(vec![vec![0.0; job.prompt.len()]; job.n_rows()])
    }
}

/// Counts what `request` would score, without scoring: the same errors as the real request,
/// and its exact coalitions, distinct sequences and tokens.
pub fn plan(request: &AttributeRequest, scorer: &dyn Scorer, limits: &Limits) -> Result<Plan> {
    let dry = DryScorer::new(scorer);
    let r = run(request, &dry, limits, &|_| {})?;
    let (gradient_tokens, gradient_forward) = dry.gradient_work();
    let tokens_after_reuse = dry.after_reuse();
    Ok(Plan {
        features: r.features.len(),
        coalitions: r.stats.coalitions,
        evaluations: r.stats.evaluations,
        distinct_sequences: r.stats.unique_sequences,
        tokens: r.stats.tokens_scored,
        tokens_after_reuse,
        target_generated: r.generated_target,
        gradient_tokens,
        gradient_forward,
        ..Plan::default()
    })
}
