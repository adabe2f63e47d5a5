//! Jobs under limits, in process with tiny-gpt2: a job over its time limit ends with its own
//! error and frees its run; a repeated request is answered by the score cache. (Waiting for
//! room in a full scoring queue is tested on the job scorer itself, in `api::jobs`.)

mod http_util;

use std::time::Duration;

use http_util::*;
use serde_json::{json, Value};

/// `words` words, each its own feature.
fn words(n: usize, stem: &str) -> String {
    (0..n).map(|i| format!("{stem}{i}")).collect::<Vec<_>>().join(" ")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_over_its_time_limit_fails_with_its_own_error() {
    let s = start(TINY, |c| {
        c.engine.token_budget = 1;
        c.job_time_limit = Some(Duration::from_millis(50));
    })
    .await;
    let c = client();
    // LIME with 2,000 samples of 20 features: about 2,000 sequences, one per batch; far more
    // than 50 ms of work.
    let req = json!({
        "text": words(20, "z"),
        "target": " and so on",
        "method": "lime",
        "n_samples": 2000,
    });
    let res = send(c.post(format!("{}/v1/jobs", s.url())).json(&req), 202).await;
    let job = wait_end(&c, &format!("{}{}", s.url(), job_location(&res))).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "time_limit_exceeded");
    assert_eq!(job["error"]["field"], "job_time_limit");
    assert!(
        job["error"]["message"].as_str().unwrap().contains("0.05 s"),
        "{job}"
    );
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
    let req = json!({
        "text": words(8, "w"),
        "target": " and so on",
        "method": "feature_ablation",
    });
    let first: Value = send_json(c.post(format!("{url}/v1/attributions")).json(&req)).await;
    let scored = metric(&url, "llm_attr_sequences_scored_total").await;
    assert!(scored > 0.0);
    let res = send(c.post(format!("{url}/v1/jobs")).json(&req), 202).await;
    let job = wait_end(&c, &format!("{url}{}", job_location(&res))).await;
    assert_eq!(job["result"]["seq_attr"], first["seq_attr"]);
    assert_eq!(
        metric(&url, "llm_attr_sequences_scored_total").await,
        scored,
        "all from the cache"
    );
    assert!(metric(&url, "llm_attr_score_cache_hit_ratio").await >= 0.5);
    s.shutdown().await;
}
