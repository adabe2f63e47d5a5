//! Turns coalitions into prompts and prompts into values through a [`Scorer`].
//!
//! An absent feature's slots take their baselines. With `exact` baseline sampling a coalition's
//! value is the mean over the whole product of the absent slots' baseline lists; with `sample`
//! every evaluation draws one baseline per slot (Captum's ProductBaselines). Identical prompts
//! are scored once per request.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::progress::Progress;
use crate::attribution::{Coalition, Evaluator};
use crate::error::{Error, Result};
use crate::input::Input;
use crate::model::ScoreItem;
use crate::request::{AttrTarget, BaselineSampling, Stats};
use crate::scorer::Scorer;

pub struct SequenceEvaluator<'a> {
    input: &'a Input,
    scorer: &'a dyn Scorer,
    target: Vec<u32>,
    attr_target: AttrTarget,
    sampling: BaselineSampling,
    rng: ChaCha8Rng,
    /// Prompt ids -> log p of every target token.
    cache: HashMap<Vec<u32>, Vec<f32>>,
    full: Vec<u32>,
    max_sequences: usize,
    max_tokens: usize,
    /// What to name when the sequence limit is hit.
    limit_field: String,
    /// Distinct coalitions asked for so far -> most distinct prompts they can need; their sum
    /// bounds the request's distinct sequences before any prompt is built.
    planned: HashMap<Coalition, usize>,
    /// The sum of `planned`, plus the unperturbed prompt.
    planned_total: usize,
    progress: &'a (dyn Fn(Progress) + Sync),
    pub stats: Stats,
}

/// Number of prompts `exact` sampling needs for `coalition` (product of the absent slots'
/// baseline counts), saturating.
/// Prompts built (or coalitions looked at) between two looks at the cancel flag.
const CANCEL_EVERY: usize = 32;

pub fn exact_count(input: &Input, coalition: &[bool]) -> usize {
    input
        .slots
        .iter()
        .filter(|s| !coalition[s.feature])
        .fold(1usize, |acc, s| acc.saturating_mul(s.n_baselines))
}

impl<'a> SequenceEvaluator<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        input: &'a Input,
        scorer: &'a dyn Scorer,
        target: Vec<u32>,
        attr_target: AttrTarget,
        sampling: BaselineSampling,
        seed: u64,
        max_sequences: usize,
        max_tokens: usize,
        progress: &'a (dyn Fn(Progress) + Sync),
    ) -> Result<Self> {
        let full = input.render(scorer.tokenizer(), &vec![None; input.slots.len()])?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // Baseline draws use their own stream, so they never shift the method's samples.
        rng.set_stream(1);
        Ok(SequenceEvaluator {
            input,
            scorer,
            target,
            attr_target,
            sampling,
            rng,
            cache: HashMap::new(),
            full,
            max_sequences,
            max_tokens,
            limit_field: "n_samples".into(),
            planned: HashMap::new(),
            planned_total: 1,
            progress,
            stats: Stats::default(),
        })
    }

    /// Names the request field to blame when the sequence limit is hit.
    pub fn set_limit_field(&mut self, field: &str) {
        self.limit_field = field.to_string();
    }

    /// Token ids of the unperturbed prompt.
    pub fn prompt_ids(&self) -> &[u32] {
        &self.full
    }

    /// Log p of every target token given the unperturbed prompt (scored with the first batch).
    pub fn target_log_probs(&mut self) -> Result<Vec<f32>> {
        if !self.cache.contains_key(&self.full) {
            self.score(vec![self.full.clone()])?;
        }
        Ok(self.cache[&self.full].clone())
    }

    /// Prompts (as choices rendered to ids) that make up one evaluation of `coalition`.
    fn prompts(&mut self, coalition: &[bool]) -> Result<Vec<Vec<u32>>> {
        let tok = self.scorer.tokenizer();
        let slots = &self.input.slots;
        let absent: Vec<usize> = (0..slots.len())
            .filter(|&s| !coalition[slots[s].feature])
            .collect();
        let mut choice: Vec<Option<usize>> = vec![None; slots.len()];
        match self.sampling {
            BaselineSampling::Sample => {
                for &s in &absent {
                    choice[s] = Some(self.rng.random_range(0..slots[s].n_baselines));
                }
                Ok(vec![self.input.render(tok, &choice)?])
            }
            BaselineSampling::Exact => {
                let count = exact_count(self.input, coalition);
                if count > self.max_sequences {
                    return Err(self.too_many(&format!("{count} distinct sequences for one evaluation")));
                }
                for &s in &absent {
                    choice[s] = Some(0);
                }
                let mut out = Vec::with_capacity(count);
                loop {
                    if out.len() % CANCEL_EVERY == CANCEL_EVERY - 1 {
                        self.check_cancelled()?;
                    }
                    out.push(self.input.render(tok, &choice)?);
                    // Odometer over the absent slots' baseline indices.
                    let mut carried = true;
                    for &s in &absent {
                        let k = choice[s].unwrap_or(0) + 1;
                        if k < slots[s].n_baselines {
                            choice[s] = Some(k);
                            carried = false;
                            break;
                        }
                        choice[s] = Some(0);
                    }
                    if carried {
                        return Ok(out);
                    }
                }
            }
        }
    }

    fn check_cancelled(&self) -> Result<()> {
        if self.scorer.is_cancelled() {
            return Err(Error::Cancelled);
        }
        Ok(())
    }

    /// Before building any prompt for `coalitions`: counts the distinct sequences the request
    /// can need with them (each distinct coalition needs at most the product of its absent
    /// slots' baseline counts, and with `sample` at most one per evaluation) and refuses, with
    /// that count, what cannot fit the limit.
    fn plan(&mut self, coalitions: &[Coalition]) -> Result<()> {
        let n = self.input.n_features();
        let mut occurrences: HashMap<&Coalition, usize> = HashMap::new();
        for c in coalitions {
            if c.len() != n {
                return Err(Error::Internal("coalition of the wrong size".into()));
            }
            *occurrences.entry(c).or_default() += 1;
        }
        // Each coalition's new most, and how much the total grows.
        let mut updates = Vec::with_capacity(occurrences.len());
        let mut bound = self.planned_total;
        for (c, k) in occurrences {
            // All present is the unperturbed prompt, counted from the start.
            if c.iter().all(|&present| present) {
                continue;
            }
            let most = exact_count(self.input, c);
            let before = self.planned.get(c).copied().unwrap_or(0);
            let after = match self.sampling {
                BaselineSampling::Exact => most,
                BaselineSampling::Sample => most.min(before.saturating_add(k)),
            };
            bound = bound.saturating_add(after - before);
            updates.push((c, after));
        }
        if bound > self.max_sequences {
            let coalitions = self.planned.len()
                + updates
                    .iter()
                    .filter(|(c, _)| !self.planned.contains_key(*c))
                    .count();
            return Err(self.too_many(&format!(
                "up to {bound} distinct sequences ({coalitions} distinct perturbed coalitions)"
            )));
        }
        for (c, after) in updates {
            self.planned.insert(c.clone(), after);
        }
        self.planned_total = bound;
        Ok(())
    }

    fn too_many(&self, count: &str) -> Error {
        let hint = if self.sampling == BaselineSampling::Exact && !self.input.single_baselines() {
            "; use baseline_sampling \"sample\", fewer baselines or fewer samples".to_string()
        } else {
            "; use fewer samples or features".to_string()
        };
        Error::too_large(
            if self.sampling == BaselineSampling::Exact && !self.input.single_baselines() {
                "baseline_sampling".to_string()
            } else {
                self.limit_field.clone()
            },
            format!(
                "this request needs {count}, more than the limit of {}{hint}",
                self.max_sequences
            ),
        )
    }

    /// Scores the prompts not cached yet, all in one call to the scorer.
    fn score(&mut self, mut new: Vec<Vec<u32>>) -> Result<()> {
        if !self.cache.contains_key(&self.full) && !new.contains(&self.full) {
            new.insert(0, self.full.clone());
        }
        if new.is_empty() {
            return Ok(());
        }
        let unique = self.cache.len() + new.len();
        if unique > self.max_sequences {
            return Err(self.too_many(&format!("at least {unique} distinct sequences")));
        }
        self.check_cancelled()?;
        let ctx = self.scorer.context_length();
        let items: Vec<ScoreItem> = new
            .iter()
            .map(|p| ScoreItem {
                prompt: p.clone(),
                target: self.target.clone(),
            })
            .collect();
        for item in &items {
            let len = item.input_len();
            if len > self.max_tokens || len > ctx {
                return Err(Error::too_large(
                    self.input.features_field(),
                    format!(
                        "a sequence of {} prompt + {} target tokens exceeds the limit of {} tokens",
                        item.prompt.len(),
                        item.target.len(),
                        self.max_tokens.min(ctx)
                    ),
                ));
            }
        }
        let before = self.stats.unique_sequences;
        let started = std::time::Instant::now();
        let batch_tokens: usize = items.iter().map(ScoreItem::input_len).sum();
        let progress = self.progress;
        let items_len = items.len();
        let scores = self.scorer.score(items, &|done, total| {
            progress(Progress {
                done: before + done,
                total: before + total,
            })
        })?;
        tracing::debug!(
            sequences = items_len,
            tokens = batch_tokens,
            seconds = started.elapsed().as_secs_f64(),
            "scored"
        );
        if scores.len() != new.len() {
            return Err(Error::Internal(format!(
                "scorer returned {} results for {}",
                scores.len(),
                new.len()
            )));
        }
        for (p, s) in new.into_iter().zip(scores) {
            if s.len() != self.target.len() {
                return Err(Error::Internal(
                    "scorer returned the wrong number of log-probs".into(),
                ));
            }
            self.stats.unique_sequences += 1;
            self.stats.tokens_scored += p.len() + self.target.len() - 1;
            self.cache.insert(p, s);
        }
        Ok(())
    }

    fn value(&self, log_probs: &[f32]) -> Vec<f64> {
        let lp: Vec<f64> = log_probs.iter().map(|&v| f64::from(v)).collect();
        let total: f64 = lp.iter().sum();
        let mut v = Vec::with_capacity(lp.len() + 1);
        v.push(total);
        v.extend(lp);
        if self.attr_target == AttrTarget::Prob {
            v.iter_mut().for_each(|x| *x = x.exp());
        }
        v
    }
}

impl Evaluator for SequenceEvaluator<'_> {
    fn n_features(&self) -> usize {
        self.input.n_features()
    }

    fn n_outputs(&self) -> usize {
        self.target.len() + 1
    }

    fn values(&mut self, coalitions: &[Coalition]) -> Result<Vec<Vec<f64>>> {
        self.stats.evaluations += coalitions.len();
        // Exact expansions are deterministic: expand each distinct coalition once.
        self.plan(coalitions)?;
        let mut memo: HashMap<&Coalition, usize> = HashMap::new();
        let mut expansions: Vec<Vec<Vec<u32>>> = Vec::new();
        let mut which = Vec::with_capacity(coalitions.len());
        for (i, c) in coalitions.iter().enumerate() {
            if i % CANCEL_EVERY == 0 {
                self.check_cancelled()?;
            }
            let reuse = self.sampling == BaselineSampling::Exact;
            if let Some(&k) = memo.get(c).filter(|_| reuse) {
                which.push(k);
                continue;
            }
            let prompts = self.prompts(c)?;
            memo.insert(c, expansions.len());
            which.push(expansions.len());
            expansions.push(prompts);
        }
        let mut new = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for p in expansions.iter().flatten() {
            if !self.cache.contains_key(p) && seen.insert(p) {
                new.push(p.clone());
            }
        }
        self.score(new)?;
        let mut expansion_values = Vec::with_capacity(expansions.len());
        for prompts in &expansions {
            let mut mean = vec![0.0; self.n_outputs()];
            for p in prompts {
                for (m, v) in mean.iter_mut().zip(self.value(&self.cache[p])) {
                    *m += v;
                }
            }
            let k = prompts.len() as f64;
            mean.iter_mut().for_each(|m| *m /= k);
            expansion_values.push(mean);
        }
        Ok(which.into_iter().map(|k| expansion_values[k].clone()).collect())
    }
}
