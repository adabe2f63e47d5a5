//! How big the next batch may be, so that work arriving behind a running batch waits about
//! one batch duration, not minutes.
//!
//! A forward pass cannot be interrupted, so whatever arrives while one runs waits for it to
//! end. The round-robin in [`super::queue`] then gives the newcomer its share of the next
//! batch; this module bounds how long "the running batch" can be. It keeps an estimate of
//! the seconds one padded token costs (from the batches already run) and caps the token
//! budget at what fits the target duration. On a CPU, where a batch of 8 sequences scores
//! nearly as many tokens per second as one of 64, that cap costs little throughput and turns
//! a 6 s batch into a 1 s one; on a GPU the estimate is so small that the configured budget
//! stays the limit.
//!
//! The estimate is stable: a batch of B tokens costs about `a + b * B` (a fixed overhead `a`
//! per pass), so the cap settles at `(target - a) / b`, which stays large while the overhead
//! is small beside the target.

/// What `llm-attr serve` aims for unless told otherwise (`--batch-seconds`).
pub(crate) const DEFAULT_BATCH_SECONDS: f64 = 1.0;

/// The cap never goes below this many padded tokens (or the configured budget, if smaller):
/// one-sequence batches would give up most of a CPU's throughput for latency nobody gains.
pub(crate) const MIN_PACED_TOKENS: usize = 256;

/// Weight of the newest batch in the running estimate.
const SMOOTHING: f64 = 0.3;

#[derive(Debug, Clone)]
pub(crate) struct Pace {
    /// Seconds one batch should take; `None`: batches fill the configured budget.
    target: Option<f64>,
    /// Running estimate of the seconds per padded token; `None` until a batch ran.
    seconds_per_token: Option<f64>,
}

impl Pace {
    pub(crate) fn new(target_seconds: Option<f64>) -> Self {
        Pace {
            target: target_seconds.filter(|t| t.is_finite() && *t > 0.0),
            seconds_per_token: None,
        }
    }

    /// The padded-token budget of the next batch: `max`, or less when batches of that size
    /// would take longer than the target.
    pub(crate) fn budget(&self, max: usize) -> usize {
        let (Some(target), Some(cost)) = (self.target, self.seconds_per_token) else {
            return max;
        };
        if cost <= 0.0 {
            return max;
        }
        let fits = (target / cost).min(max as f64) as usize;
        fits.clamp(MIN_PACED_TOKENS.min(max), max)
    }

    /// Records that a batch of `padded_tokens` took `seconds`.
    pub(crate) fn observe(&mut self, padded_tokens: usize, seconds: f64) {
        if padded_tokens == 0 || !seconds.is_finite() || seconds < 0.0 {
            return;
        }
        let cost = seconds / padded_tokens as f64;
        self.seconds_per_token = Some(match self.seconds_per_token {
            None => cost,
            Some(old) => old + SMOOTHING * (cost - old),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_target_or_a_measurement_the_budget_is_the_maximum() {
        let mut off = Pace::new(None);
        off.observe(1000, 10.0);
        assert_eq!(off.budget(2048), 2048);
        assert_eq!(Pace::new(Some(1.0)).budget(2048), 2048);
        assert_eq!(Pace::new(Some(0.0)).budget(2048), 2048);
        assert_eq!(Pace::new(Some(f64::NAN)).budget(2048), 2048);
    }

    #[test]
    fn the_budget_is_what_fits_the_target() {
        let mut p = Pace::new(Some(1.0));
        // 3 ms per token: 1 s holds 333 tokens.
        p.observe(2000, 6.0);
        assert_eq!(p.budget(2048), 333);
        // A fast device: the configured budget is the limit.
        let mut gpu = Pace::new(Some(1.0));
        gpu.observe(16_384, 0.05);
        assert_eq!(gpu.budget(16_384), 16_384);
    }

    #[test]
    fn the_budget_has_a_floor_but_never_exceeds_the_maximum() {
        let mut slow = Pace::new(Some(1.0));
        slow.observe(100, 10.0);
        assert_eq!(slow.budget(2048), MIN_PACED_TOKENS);
        assert_eq!(slow.budget(100), 100);
    }

    #[test]
    fn the_estimate_follows_new_batches_smoothly() {
        let mut p = Pace::new(Some(1.0));
        p.observe(1000, 1.0); // 1 ms per token
        p.observe(1000, 2.0); // 2 ms: the estimate moves 30% of the way
        assert_eq!(p.budget(10_000), (1.0 / 0.0013) as usize);
        for _ in 0..50 {
            p.observe(500, 1.0);
        }
        let settled = p.budget(10_000);
        assert!((499..=500).contains(&settled), "{settled}");
        // Nonsense observations are ignored.
        p.observe(0, 1.0);
        p.observe(10, f64::INFINITY);
        p.observe(10, -1.0);
        assert_eq!(p.budget(10_000), settled);
    }

    #[test]
    fn a_fixed_overhead_per_pass_does_not_shrink_the_cap_to_nothing() {
        // Each pass costs 50 ms plus 2 ms per token; the cap settles at (1 - 0.05) / 0.002.
        let mut p = Pace::new(Some(1.0));
        let mut budget = 16_384;
        for _ in 0..200 {
            p.observe(budget, 0.05 + 0.002 * budget as f64);
            budget = p.budget(16_384);
        }
        assert!((470..=480).contains(&budget), "settled at {budget}");
    }
}
