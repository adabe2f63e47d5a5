//! Counters and histograms the engine keeps; the HTTP layer renders them for Prometheus.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::BatchScores;

/// A Prometheus histogram with fixed upper bounds (cumulative on render).
pub struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<AtomicU64>,
    sum_bits: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub(crate) fn new(bounds: &[f64]) -> Self {
        Histogram {
            bounds: bounds.to_vec(),
            counts: (0..bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_bits: AtomicU64::new(0f64.to_bits()),
            count: AtomicU64::new(0),
        }
    }

    /// Bounds 1, 2, 4, ... up to `max` (inclusive of the first power of two >= max).
    pub(crate) fn powers_of_two(max: usize) -> Self {
        let mut b = vec![1.0];
        while (*b.last().unwrap_or(&1.0) as usize) < max {
            let next = b[b.len() - 1] * 2.0;
            b.push(next);
        }
        Histogram::new(&b)
    }

    /// Latency buckets in seconds, 5 ms to 5 min.
    pub(crate) fn seconds() -> Self {
        Histogram::new(&[
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
        ])
    }

    pub(crate) fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut cur = self.sum_bits.load(Ordering::Relaxed);
        loop {
            let new = (f64::from_bits(cur) + v).to_bits();
            match self
                .sum_bits
                .compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(c) => cur = c,
            }
        }
    }

    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub(crate) fn sum(&self) -> f64 {
        f64::from_bits(self.sum_bits.load(Ordering::Relaxed))
    }

    /// Appends the `_bucket`, `_sum` and `_count` lines; `labels` like `method="POST"` or empty.
    pub(crate) fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count());
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum());
        let _ = writeln!(out, "{name}_count{braces} {}", self.count());
    }
}

/// What the engine has done since it started.
pub struct Stats {
    /// Forward passes run.
    pub batches: AtomicU64,
    /// Sequences scored.
    pub sequences: AtomicU64,
    /// Real (unpadded) input tokens scored.
    pub tokens: AtomicU64,
    /// Padded tokens (batch size x longest) fed to the model.
    pub padded_tokens: AtomicU64,
    /// Of the real tokens, those whose keys and values came from a prefix computed once for
    /// several sequences or kept in the prefix cache (the rest were computed).
    pub reused_tokens: AtomicU64,
    /// Prefix-cache lookups, and those that found a prefix the pass used.
    pub prefix_lookups: AtomicU64,
    /// Of the prefix-cache lookups, those that found a cached prefix.
    pub prefix_hits: AtomicU64,
    /// Sequences answered from another request's identical sequence in the same pass.
    pub shared: AtomicU64,
    /// Queued sequences dropped because their request was cancelled.
    pub skipped: AtomicU64,
    /// Submissions refused because the queue was full.
    pub rejected: AtomicU64,
    /// Greedy generations run.
    pub generations: AtomicU64,
    /// Gradient attributions run (gradient methods).
    pub gradients: AtomicU64,
    /// Their work ([`GradientJob::work`](crate::model::GradientJob::work): tokens times passes), and the seconds they
    /// took (turns given to other work left out).
    pub gradient_tokens: AtomicU64,
    /// Seconds per gradient attribution.
    pub gradient_seconds: Histogram,
    /// Sequences per forward pass.
    pub batch_size: Histogram,
    /// Seconds per forward pass.
    pub batch_seconds: Histogram,
}

impl Stats {
    /// All counters at zero; `token_budget` bounds the batch-size histogram.
    pub fn new(token_budget: usize) -> Self {
        Stats {
            batches: AtomicU64::new(0),
            sequences: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            padded_tokens: AtomicU64::new(0),
            reused_tokens: AtomicU64::new(0),
            prefix_lookups: AtomicU64::new(0),
            prefix_hits: AtomicU64::new(0),
            shared: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            generations: AtomicU64::new(0),
            gradients: AtomicU64::new(0),
            gradient_tokens: AtomicU64::new(0),
            gradient_seconds: Histogram::seconds(),
            batch_size: Histogram::powers_of_two(token_budget.max(1)),
            batch_seconds: Histogram::seconds(),
        }
    }

    /// A counter's current value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Counts what a pass over `real` tokens reused.
    pub(crate) fn record_reuse(&self, real: usize, scored: &BatchScores) {
        let reused = scored.reused.iter().sum::<usize>().min(real);
        self.reused_tokens.fetch_add(reused as u64, Ordering::Relaxed);
        self.prefix_lookups
            .fetch_add(scored.lookups as u64, Ordering::Relaxed);
        self.prefix_hits.fetch_add(scored.hits as u64, Ordering::Relaxed);
    }

    /// Of the prefix-cache lookups, the share that found a prefix (0 before any).
    pub fn prefix_hit_rate(&self) -> f64 {
        let lookups = Self::get(&self.prefix_lookups);
        match lookups {
            0 => 0.0,
            n => Self::get(&self.prefix_hits) as f64 / n as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let h = Histogram::new(&[1.0, 10.0]);
        for v in [0.5, 2.0, 3.0, 100.0] {
            h.observe(v);
        }
        let mut s = String::new();
        h.render(&mut s, "x", "a=\"b\"");
        assert!(s.contains("x_bucket{a=\"b\",le=\"1\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{a=\"b\",le=\"10\"} 3\n"), "{s}");
        assert!(s.contains("x_bucket{a=\"b\",le=\"+Inf\"} 4\n"), "{s}");
        assert!(s.contains("x_sum{a=\"b\"} 105.5\n"), "{s}");
        assert!(s.contains("x_count{a=\"b\"} 4\n"), "{s}");
    }

    #[test]
    fn powers_of_two_cover_the_max() {
        let h = Histogram::powers_of_two(100);
        assert_eq!(h.bounds, vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]);
    }
}
