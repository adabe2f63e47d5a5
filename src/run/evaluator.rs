//! Turns coalitions into prompts and prompts into values through a [`Scorer`].
//!
//! An absent feature's slots take their baselines. With `exact` baseline sampling a coalition's
//! value is the mean over the whole product of the absent slots' baseline lists; with `sample`
//! every evaluation draws one baseline per slot (Captum's ProductBaselines). Identical prompts
//! are scored once per request.
//!
//! With a contrast, every prompt is scored with both continuations in the same call, and a
//! coalition's value is the target's minus the contrast's (log-probs, or probabilities).

use std::collections::{HashMap, HashSet};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::progress::Progress;
use crate::attribution::{Coalition, Evaluator};
use crate::error::{Error, Result};
use crate::input::Input;
use crate::model::ScoreItem;
use crate::request::{AttrTarget, BaselineSampling, Stats};
use crate::scorer::Scorer;

pub(crate) struct SequenceEvaluator<'a> {
    input: &'a Input,
    scorer: &'a dyn Scorer,
    target: Vec<u32>,
    /// Continuation whose value is subtracted from the target's.
    contrast: Option<Vec<u32>>,
    attr_target: AttrTarget,
    sampling: BaselineSampling,
    rng: ChaCha8Rng,
    /// Prompt ids -> log p of every target token, then of every contrast token.
    cache: HashMap<Vec<u32>, Vec<f32>>,
    full: Vec<u32>,
    max_sequences: usize,
    max_tokens: usize,
    /// What to name when the sequence limit is hit.
    limit_field: String,
    /// Distinct coalitions asked for so far -> most distinct prompts they can need; their sum
    /// (times the continuations per prompt) bounds the request's distinct sequences before
    /// any prompt is built.
    planned: HashMap<Coalition, usize>,
    /// The sum of `planned`, plus the unperturbed prompt.
    planned_total: usize,
    progress: &'a (dyn Fn(Progress) + Sync),
    pub stats: Stats,
}

/// Prompts built (or coalitions looked at) between two looks at the cancel flag.
const CANCEL_EVERY: usize = 32;

/// Number of prompts `exact` sampling needs for `coalition` (product of the absent slots'
/// baseline counts), saturating.
pub(crate) fn exact_count(input: &Input, coalition: &[bool]) -> usize {
    input
        .slots
        .iter()
        .filter(|s| !coalition[s.feature])
        .fold(1usize, |acc, s| acc.saturating_mul(s.n_baselines))
}

impl<'a> SequenceEvaluator<'a> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
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
            contrast: None,
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

    /// Attributes log p(target) - log p(`contrast`) (or the difference of probabilities):
    /// both continuations are scored after every prompt.
    pub(crate) fn set_contrast(&mut self, contrast: Vec<u32>) {
        self.contrast = Some(contrast);
    }

    /// The target, then the contrast if there is one.
    fn continuations(&self) -> impl Iterator<Item = &Vec<u32>> {
        std::iter::once(&self.target).chain(&self.contrast)
    }

    /// Names the request field to blame when the sequence limit is hit.
    pub(crate) fn set_limit_field(&mut self, field: &str) {
        self.limit_field = field.to_string();
    }

    /// Log p of every target token given the unperturbed prompt, then of every contrast token
    /// (scored with the first batch).
    pub(crate) fn target_log_probs(&mut self) -> Result<Vec<f32>> {
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
            let most = if c.iter().all(|&present| present) {
                0
            } else {
                exact_count(self.input, c)
            };
            let before = self.planned.get(c).copied().unwrap_or(0);
            let after = match self.sampling {
                BaselineSampling::Exact => most,
                BaselineSampling::Sample => most.min(before.saturating_add(k)),
            };
            bound = bound.saturating_add(after - before);
            updates.push((c, after));
        }
        let sequences = bound.saturating_mul(self.continuations().count());
        if sequences > self.max_sequences {
            let coalitions = self.planned.len()
                + updates
                    .iter()
                    .filter(|(c, _)| !self.planned.contains_key(*c))
                    .count();
            return Err(self.too_many(&format!(
                "up to {sequences} distinct sequences ({coalitions} distinct coalitions)"
            )));
        }
        for (c, after) in updates {
            self.planned.insert(c.clone(), after);
        }
        self.planned_total = bound;
        self.stats.coalitions = self.planned.len();
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
        let per_prompt = self.continuations().count();
        let unique = (self.cache.len() + new.len()).saturating_mul(per_prompt);
        if unique > self.max_sequences {
            return Err(self.too_many(&format!("at least {unique} distinct sequences")));
        }
        self.check_cancelled()?;
        let max_tokens = self.max_tokens.min(self.scorer.context_length());
        let mut items = Vec::with_capacity(new.len() * per_prompt);
        for p in &new {
            for c in self.continuations() {
                let item = ScoreItem {
                    prompt: p.clone(),
                    target: c.clone(),
                };
                check_sequence(&item, max_tokens, self.input.features_field())?;
                items.push(item);
            }
        }
        let before = self.stats.unique_sequences;
        let started = std::time::Instant::now();
        let batch_tokens: usize = items.iter().map(ScoreItem::input_len).sum();
        let progress = self.progress;
        let items_len = items.len();
        let work_before = self.scorer.tokens();
        let scores = self.scorer.score(items, &|done, total| {
            progress(Progress {
                done: before + done,
                total: before + total,
            })
        })?;
        match (self.scorer.tokens(), work_before) {
            (Some(after), Some(before)) => {
                let work = after.since(before);
                self.stats.tokens_computed += work.computed as usize;
                self.stats.tokens_reused += work.reused as usize;
            }
            _ => self.stats.tokens_computed += batch_tokens,
        }
        tracing::debug!(
            sequences = items_len,
            tokens = batch_tokens,
            seconds = started.elapsed().as_secs_f64(),
            "scored"
        );
        if scores.len() != items_len {
            return Err(Error::Internal(format!(
                "scorer returned {} results for {items_len}",
                scores.len(),
            )));
        }
        let lengths: Vec<usize> = self.continuations().map(Vec::len).collect();
        for (p, per) in new.into_iter().zip(scores.chunks(per_prompt)) {
            if per.iter().map(Vec::len).ne(lengths.iter().copied()) {
                return Err(Error::Internal(
                    "scorer returned the wrong number of log-probs".into(),
                ));
            }
            self.stats.unique_sequences += per_prompt;
            self.stats.tokens_scored += lengths.iter().map(|l| p.len() + l - 1).sum::<usize>();
            self.cache.insert(p, per.concat());
        }
        Ok(())
    }

    /// `[sequence value, one per target token, then minus one per contrast token]`, in
    /// log-probs or probabilities.
    fn value(&self, log_probs: &[f32]) -> Vec<f64> {
        let scale = |x: f64| self.attr_target.of(x);
        let (target, contrast) = log_probs.split_at(self.target.len());
        let total = |lp: &[f32]| lp.iter().map(|&v| f64::from(v)).sum::<f64>();
        let mut v = Vec::with_capacity(log_probs.len() + 1);
        let mut seq = scale(total(target));
        if self.contrast.is_some() {
            seq -= scale(total(contrast));
        }
        v.push(seq);
        v.extend(target.iter().map(|&x| scale(f64::from(x))));
        v.extend(contrast.iter().map(|&x| -scale(f64::from(x))));
        v
    }
}

/// Fails when `item` is longer than `max_tokens` (the request's limit or the model's context,
/// whichever is smaller), naming `field`.
pub(crate) fn check_sequence(item: &ScoreItem, max_tokens: usize, field: &str) -> Result<()> {
    if item.input_len() > max_tokens {
        return Err(Error::too_large(
            field,
            format!(
                "a sequence of {} prompt + {} target tokens exceeds the limit of {max_tokens} tokens by {}",
                item.prompt.len(),
                item.target.len(),
                item.input_len() - max_tokens,
            ),
        ));
    }
    Ok(())
}

impl Evaluator for SequenceEvaluator<'_> {
    fn n_features(&self) -> usize {
        self.input.n_features()
    }

    fn n_outputs(&self) -> usize {
        1 + self.continuations().map(Vec::len).sum::<usize>()
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
        let mut seen = HashSet::new();
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
