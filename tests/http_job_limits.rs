//! Jobs under pressure, in process with tiny-gpt2: a job that meets a full scoring queue waits
//! (bounded) for room instead of failing at once; a job over its time limit ends with its own
//! error; a repeated request is answered by the score cache.

mod http_util;

use std::time::Duration;

use http_util::*;
use serde_json::{json, Value};

/// Feature ablation over every token of `words` words: one prompt per token, plus the full one.
fn ablation(words: usize, seed_word: &str) -> Value {
    let text: Vec<String> = (0..words).map(|i| format!("{seed_word}{i}")).collect();
    json!({
        "text": text.join(" "),
        "target": " and so on",
        "method": "feature_ablation",
    })
}

async fn wait_end(c: &reqwest::Client, url: &str) -> Value {
    loop {
        let j = send_json(c.get(url)).await;
        if j["state"] != "queued" && j["state"] != "running" {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A slow synchronous request fills most of a small queue; a job then meets a full queue.
async fn job_behind_a_full_queue(queue_wait: Duration) -> (Value, f64) {
    let s = start(TINY, |c| {
        c.engine.token_budget = 1;
        c.engine.queue_capacity = 48;
        c.job_queue_wait = queue_wait;
    })
    .await;
    let c = client();
    let url = s.url();
    let sync = tokio::spawn({
        let (c, url) = (c.clone(), url.clone());
        async move { c.post(format!("{url}/v1/attributions")).json(&ablation(40, "x")).send().await }
    });
    // The sync request's sequences are queued once the engine is busy.
    while metric(&url, "llm_attr_queue_depth").await < 20.0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let res = send(c.post(format!("{url}/v1/jobs")).json(&ablation(30, "y")), 202).await;
    let location = job_location(&res);
    let job = wait_end(&c, &format!("{url}{location}")).await;
    let rejected = metric(&url, "llm_attr_queue_rejections_total").await;
    assert_eq!(sync.await.unwrap().unwrap().status(), 200);
    s.shutdown().await;
    (job, rejected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waits_for_room_in_a_full_queue() {
    let (job, rejected) = job_behind_a_full_queue(Duration::from_secs(120)).await;
    assert!(rejected >= 1.0, "the job met a full queue");
    assert_eq!(job["state"], "done", "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_stops_waiting_for_room_after_its_bound() {
    let (job, rejected) = job_behind_a_full_queue(Duration::ZERO).await;
    assert!(rejected >= 1.0);
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "queue_full");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_over_its_time_limit_fails_with_its_own_error() {
    let s = start(TINY, |c| {
        c.engine.token_budget = 1;
        c.job_time_limit = Some(Duration::from_millis(200));
    })
    .await;
    let c = client();
    let res = send(c.post(format!("{}/v1/jobs", s.url())).json(&ablation(60, "z")), 202).await;
    let job = wait_end(&c, &format!("{}{}", s.url(), job_location(&res))).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "time_limit_exceeded");
    assert_eq!(job["error"]["field"], "job_time_limit");
    assert!(job["error"]["message"].as_str().unwrap().contains("0.2 s"));
    // Its work stops too.
    while metric(&s.url(), "llm_attr_runs_active").await > 0.0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_request_scores_nothing_new() {
    let s = start(TINY, |_| {}).await;
    let c = client();
    let url = s.url();
    let req = ablation(8, "w");
    let first: Value = send_json(c.post(format!("{url}/v1/attributions")).json(&req)).await;
    let scored = metric(&url, "llm_attr_sequences_scored_total").await;
    assert!(scored > 0.0);
    let res = send(c.post(format!("{url}/v1/jobs")).json(&req), 202).await;
    let job = wait_end(&c, &format!("{url}{}", job_location(&res))).await;
    assert_eq!(job["result"]["seq_attr"], first["seq_attr"]);
    assert_eq!(metric(&url, "llm_attr_sequences_scored_total").await, scored, "all from the cache");
    assert!(metric(&url, "llm_attr_score_cache_hit_ratio").await >= 0.5);
    s.shutdown().await;
}
