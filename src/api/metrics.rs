//! Prometheus metrics: HTTP requests and latency by route, attributions by method and outcome,
//! jobs by state, and the engine's queue, batches, sequences and tokens.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use crate::engine::{Histogram, Stats};
use crate::score_cache::ScoreCache;

#[derive(Default)]
pub(crate) struct Metrics {
    /// (method, route, status) -> count
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    /// route -> latency
    latency: Mutex<BTreeMap<String, Arc<Histogram>>>,
    /// (method, outcome) -> count
    attributions: Mutex<BTreeMap<(String, String), u64>>,
    attribution_seconds: Mutex<BTreeMap<String, Arc<Histogram>>>,
}

impl Metrics {
    pub(crate) fn record_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        *lock(&self.requests)
            .entry((method.to_string(), route.to_string(), status))
            .or_default() += 1;
        let h = lock(&self.latency)
            .entry(route.to_string())
            .or_insert_with(|| Arc::new(Histogram::seconds()))
            .clone();
        h.observe(seconds);
    }

    /// One attribute request finished (`outcome`: ok or an error code).
    pub(crate) fn record_attribution(&self, method: &str, outcome: &str, seconds: f64) {
        *lock(&self.attributions)
            .entry((method.to_string(), outcome.to_string()))
            .or_default() += 1;
        if outcome == "ok" {
            let h = lock(&self.attribution_seconds)
                .entry(method.to_string())
                .or_insert_with(|| Arc::new(Histogram::seconds()))
                .clone();
            h.observe(seconds);
        }
    }

    pub(crate) fn render(&self, state: &AppState) -> String {
        let mut out = String::new();
        let o = &mut out;
        header(
            o,
            "llm_attr_http_requests_total",
            "counter",
            "HTTP requests by method, route and status.",
        );
        for ((m, r, s), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                o,
                "llm_attr_http_requests_total{{method=\"{m}\",route=\"{}\",status=\"{s}\"}} {n}",
                esc(r)
            );
        }
        header(
            o,
            "llm_attr_http_request_duration_seconds",
            "histogram",
            "HTTP request latency by route.",
        );
        for (r, h) in lock(&self.latency).iter() {
            h.render(
                o,
                "llm_attr_http_request_duration_seconds",
                &format!("route=\"{}\"", esc(r)),
            );
        }
        header(
            o,
            "llm_attr_attributions_total",
            "counter",
            "Attribute requests by method and outcome.",
        );
        for ((m, outcome), n) in lock(&self.attributions).iter() {
            let _ = writeln!(
                o,
                "llm_attr_attributions_total{{method=\"{m}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        header(
            o,
            "llm_attr_attribution_duration_seconds",
            "histogram",
            "Time to run an attribute request, by method.",
        );
        for (m, h) in lock(&self.attribution_seconds).iter() {
            h.render(
                o,
                "llm_attr_attribution_duration_seconds",
                &format!("method=\"{m}\""),
            );
        }
        header(
            o,
            "llm_attr_jobs",
            "gauge",
            "Jobs held, by state (with Redis: the jobs running on this replica).",
        );
        for (s, n) in state.jobs.counts() {
            let _ = writeln!(o, "llm_attr_jobs{{state=\"{}\"}} {n}", s.as_str());
        }
        single(
            o,
            "llm_attr_runs_active",
            "gauge",
            "Attribute requests running now.",
            state.active_runs.load(Ordering::Relaxed),
        );
        single(
            o,
            "llm_attr_store_available",
            "gauge",
            "1 when the job store answers (always, in memory; Redis when reachable).",
            u8::from(state.jobs.available()),
        );
        single(
            o,
            "llm_attr_model_ready",
            "gauge",
            "1 when the model is loaded.",
            u8::from(state.ready.get().is_some()),
        );
        if let Some(r) = state.ready.get() {
            let e = &r.engine;
            let st: &Stats = e.stats();
            single(
                o,
                "llm_attr_queue_depth",
                "gauge",
                "Sequences waiting in the scoring queue.",
                e.queue_depth(),
            );
            single(
                o,
                "llm_attr_queue_capacity",
                "gauge",
                "Sequences the scoring queue holds at most.",
                e.config().queue_capacity,
            );
            single(
                o,
                "llm_attr_batches_running",
                "gauge",
                "Forward passes running now.",
                e.running(),
            );
            single(
                o,
                "llm_attr_batch_token_budget",
                "gauge",
                "Padded tokens the next forward pass may take: --batch-tokens, or less while \
                 passes are paced to --batch-seconds.",
                e.batch_budget(),
            );
            let counters = [
                ("llm_attr_batches_total", "Forward passes run.", &st.batches),
                (
                    "llm_attr_sequences_scored_total",
                    "Sequences scored.",
                    &st.sequences,
                ),
                (
                    "llm_attr_tokens_scored_total",
                    "Input tokens scored (without padding).",
                    &st.tokens,
                ),
                (
                    "llm_attr_padded_tokens_total",
                    "Tokens fed to the model including padding.",
                    &st.padded_tokens,
                ),
                (
                    "llm_attr_tokens_reused_total",
                    "Of the tokens scored, those whose keys and values came from a prefix computed \
                     once for several sequences or kept in the prefix cache.",
                    &st.reused_tokens,
                ),
                (
                    "llm_attr_prefix_cache_lookups_total",
                    "Prefix-cache lookups (one per group of sequences sharing a prefix).",
                    &st.prefix_lookups,
                ),
                (
                    "llm_attr_prefix_cache_hits_total",
                    "Prefix-cache lookups that found a cached prefix the pass used.",
                    &st.prefix_hits,
                ),
                (
                    "llm_attr_sequences_shared_total",
                    "Sequences answered by an identical sequence of another request in the same pass.",
                    &st.shared,
                ),
                (
                    "llm_attr_sequences_skipped_total",
                    "Queued sequences dropped because their request was cancelled.",
                    &st.skipped,
                ),
                (
                    "llm_attr_queue_rejections_total",
                    "Submissions refused because the queue was full.",
                    &st.rejected,
                ),
                (
                    "llm_attr_generations_total",
                    "Greedy generations run.",
                    &st.generations,
                ),
                (
                    "llm_attr_gradient_jobs_total",
                    "Gradient attributions run (gradient methods).",
                    &st.gradients,
                ),
            ];
            for (name, help, c) in counters {
                single(o, name, "counter", help, Stats::get(c));
            }
            single(
                o,
                "llm_attr_prefix_cache_hit_ratio",
                "gauge",
                "Share of the prefix-cache lookups that found a cached prefix (0 before any).",
                st.prefix_hit_rate(),
            );
            single(
                o,
                "llm_attr_prefix_cache_bytes",
                "gauge",
                "Bytes of prefix keys and values the prefix cache holds.",
                e.backend().local().map_or(0, |m| m.prefix_cache_bytes()),
            );
            if let Some(remote) = e.backend().remote() {
                single(
                    o,
                    "llm_attr_remote_requests_total",
                    "counter",
                    "HTTP requests sent to the inference server (every try, probes included).",
                    remote.requests_sent(),
                );
            }
            render_cache(o, &r.cache);
            header(
                o,
                "llm_attr_batch_size",
                "histogram",
                "Sequences per forward pass.",
            );
            st.batch_size.render(o, "llm_attr_batch_size", "");
            header(
                o,
                "llm_attr_batch_duration_seconds",
                "histogram",
                "Time per forward pass.",
            );
            st.batch_seconds.render(o, "llm_attr_batch_duration_seconds", "");
        }
        out
    }
}

fn render_cache(o: &mut String, cache: &ScoreCache) {
    let st = &cache.stats;
    let (local, shared, misses) = (
        st.local_hits.load(Ordering::Relaxed),
        st.shared_hits.load(Ordering::Relaxed),
        st.misses.load(Ordering::Relaxed),
    );
    header(
        o,
        "llm_attr_score_cache_hits_total",
        "counter",
        "Sequences answered by the score cache, by layer (this process, or Redis).",
    );
    let _ = writeln!(o, "llm_attr_score_cache_hits_total{{layer=\"local\"}} {local}");
    let _ = writeln!(o, "llm_attr_score_cache_hits_total{{layer=\"shared\"}} {shared}");
    single(
        o,
        "llm_attr_score_cache_misses_total",
        "counter",
        "Sequences the score cache did not know.",
        misses,
    );
    let lookups = local + shared + misses;
    let ratio = if lookups == 0 {
        0.0
    } else {
        (local + shared) as f64 / lookups as f64
    };
    single(
        o,
        "llm_attr_score_cache_hit_ratio",
        "gauge",
        "Hits over lookups since the start (0 before any).",
        ratio,
    );
    let (entries, bytes) = cache.size();
    single(
        o,
        "llm_attr_score_cache_entries",
        "gauge",
        "Entries in this process's cache.",
        entries,
    );
    single(
        o,
        "llm_attr_score_cache_bytes",
        "gauge",
        "Bytes held by this process's cache.",
        bytes,
    );
}

/// A metric without labels: its HELP and TYPE lines and its value.
fn single(o: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    header(o, name, kind, help);
    let _ = writeln!(o, "{name} {value}");
}

fn header(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// HTTP methods counted under their own name; any other is `other`, so clients cannot add
/// series by inventing methods.
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

fn method_label(method: &axum::http::Method) -> &'static str {
    METHODS
        .iter()
        .find(|m| **m == method.as_str())
        .copied()
        .unwrap_or("other")
}

/// Middleware: counts every request and its latency under its route pattern.
pub(crate) async fn track(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let res = next.run(req).await;
    state.metrics.record_request(
        method,
        &route,
        res.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_a_fixed_set() {
        let m = |s: &str| axum::http::Method::from_bytes(s.as_bytes()).unwrap();
        assert_eq!(method_label(&m("GET")), "GET");
        assert_eq!(method_label(&m("DELETE")), "DELETE");
        assert_eq!(method_label(&m("FOO123")), "other");
        assert_eq!(method_label(&m("get")), "other");
    }
}
