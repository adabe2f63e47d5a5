//! What a request is checked against before any work: its plan (the same errors the run
//! would meet, counted without scoring) and `--max-request-seconds` against the plan's time.

use std::sync::Arc;

use super::error::ApiError;
use super::handlers::blocking;
use super::store::JobRequest;
use super::AppState;
use crate::engine::stats::Stats;
use crate::error::Error;
use crate::run::Plan;

/// The plan of `request`, its time estimated at the server's measured throughput.
pub(crate) async fn estimate(state: &Arc<AppState>, request: JobRequest) -> Result<Plan, ApiError> {
    let ready = state.ready()?;
    let limits = state.config.limits.clone();
    let scorer = ready.clone();
    let plan = blocking(move || request.plan(scorer.model.as_ref(), &limits)).await?;
    let (stats, workers) = (ready.engine.stats(), ready.engine.config().workers);
    let reuse = ready.model.local().is_some();
    Ok(plan.at_throughput(
        throughput(stats, workers),
        gradient_throughput(stats, workers),
        reuse,
    ))
}

/// Checks `request` as its run would, and refuses it (422) when its estimated time exceeds
/// `--max-request-seconds` (no estimate before the server has measured its throughput).
pub(crate) async fn admit(state: &Arc<AppState>, request: JobRequest) -> Result<Plan, ApiError> {
    let plan = estimate(state, request).await?;
    over_time(&plan, state.config.max_request_seconds)?;
    Ok(plan)
}

/// A 422 when `plan` is estimated to take longer than `limit` seconds.
fn over_time(plan: &Plan, limit: Option<f64>) -> Result<(), Error> {
    match (plan.estimated_seconds, limit) {
        (Some(estimate), Some(limit)) if estimate > limit => Err(Error::too_large(
            "body",
            format!(
                "the request is estimated to take {estimate:.1} s, over the limit of {limit} s \
                 (--max-request-seconds): ask for less work (fewer samples, features, steps or \
                 targets)"
            ),
        )),
        _ => Ok(()),
    }
}

/// Tokens the engine computes per second (those reused from a shared prefix not counted),
/// measured over every forward pass so far (each worker runs passes in parallel); None before
/// the first.
fn throughput(stats: &Stats, workers: usize) -> Option<f64> {
    let computed = Stats::get(&stats.tokens).saturating_sub(Stats::get(&stats.reused_tokens));
    rate(computed, stats.batch_seconds.sum(), workers)
}

/// The engine's measured gradient throughput ([`crate::run::Plan::gradient_tokens`] per
/// second, all workers together); `None` before its first gradient run.
fn gradient_throughput(stats: &Stats, workers: usize) -> Option<f64> {
    rate(
        Stats::get(&stats.gradient_tokens),
        stats.gradient_seconds.sum(),
        workers,
    )
}

fn rate(work: u64, busy: f64, workers: usize) -> Option<f64> {
    (busy > 0.0 && work > 0).then(|| work as f64 / busy * workers.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_estimate_over_the_limit_is_refused() {
        let plan = |s: Option<f64>| Plan {
            estimated_seconds: s,
            ..Plan::default()
        };
        assert!(over_time(&plan(Some(5.0)), None).is_ok());
        assert!(over_time(&plan(None), Some(1.0)).is_ok());
        assert!(over_time(&plan(Some(1.0)), Some(1.0)).is_ok());
        let e = over_time(&plan(Some(2.5)), Some(1.0)).unwrap_err();
        assert_eq!(e.code(), "limit_exceeded");
        assert!(
            e.to_string().contains("2.5 s") && e.to_string().contains("1 s"),
            "{e}"
        );
    }
}
