//! One scorer for all of an audit's work: each distinct sequence goes to the model once, what
//! the grid scored is reused by the cells' attributions (a cell's swept baselines are other
//! cells' prompts), and progress counts the sequences the model actually scores.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::model::{GradientJob, ScoreItem};
use crate::run::Progress;
use crate::scorer::Scorer;

pub(super) struct AuditScorer<'a> {
    inner: &'a dyn Scorer,
    cache: Mutex<HashMap<ScoreItem, Vec<f32>>>,
    /// Sequences sent to `inner`, and their tokens.
    scored: AtomicUsize,
    tokens: AtomicUsize,
    /// Sequences the whole audit will score, when known.
    total: usize,
    progress: &'a (dyn Fn(Progress) + Sync),
}

impl<'a> AuditScorer<'a> {
    pub(super) fn new(inner: &'a dyn Scorer, total: usize, progress: &'a (dyn Fn(Progress) + Sync)) -> Self {
        AuditScorer {
            inner,
            cache: Mutex::new(HashMap::new()),
            scored: AtomicUsize::new(0),
            tokens: AtomicUsize::new(0),
            total,
            progress,
        }
    }

    /// Distinct sequences scored so far.
    pub(super) fn sequences(&self) -> usize {
        self.scored.load(Ordering::Relaxed)
    }

    /// Tokens fed to the model so far.
    pub(super) fn tokens(&self) -> usize {
        self.tokens.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ScoreItem, Vec<f32>>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Scorer for AuditScorer<'_> {
    crate::scorer_facts_from!(inner);

    fn is_cancelled(&self) -> bool {
        self.inner.is_cancelled()
    }

    fn score(&self, items: Vec<ScoreItem>, _: &(dyn Fn(usize, usize) + Sync)) -> Result<Vec<Vec<f32>>> {
        let missing: Vec<ScoreItem> = {
            let cache = self.lock();
            let mut seen = std::collections::HashSet::new();
            items
                .iter()
                .filter(|i| !cache.contains_key(*i) && seen.insert(*i))
                .cloned()
                .collect()
        };
        if !missing.is_empty() {
            let before = self.sequences();
            let total = self.total.max(before + missing.len());
            let report = |done: usize, _| {
                (self.progress)(Progress {
                    done: before + done,
                    total,
                })
            };
            let scores = self.inner.score(missing.clone(), &report)?;
            if scores.len() != missing.len() {
                return Err(Error::Internal(format!(
                    "scorer returned {} results for {}",
                    scores.len(),
                    missing.len()
                )));
            }
            let tokens: usize = missing.iter().map(ScoreItem::input_len).sum();
            self.scored.fetch_add(missing.len(), Ordering::Relaxed);
            self.tokens.fetch_add(tokens, Ordering::Relaxed);
            self.lock().extend(missing.into_iter().zip(scores));
        }
        let cache = self.lock();
        Ok(items.iter().map(|i| cache[i].clone()).collect())
    }

    fn generate(&self, prompt: &[u32], max_new_tokens: usize) -> Result<Vec<u32>> {
        self.inner.generate(prompt, max_new_tokens)
    }

    fn gradients(&self, job: GradientJob, progress: &(dyn Fn(usize, usize) + Sync)) -> Result<Vec<Vec<f64>>> {
        self.inner.gradients(job, progress)
    }
}
