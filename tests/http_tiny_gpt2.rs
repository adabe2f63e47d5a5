//! The real server on 127.0.0.1 with tiny-gpt2, driven over HTTP: every endpoint, jobs with
//! SSE, cancellation (DELETE and a dropped client), a full queue, batching across requests.

mod http_util;

use std::time::Duration;

use http_util::*;
use llm_attr::request::{AttributeRequest, AttributeResponse};
use serde_json::{json, Value};

/// A request that keeps tiny-gpt2 busy for a while under a one-sequence batch budget.
fn long_request() -> Value {
    json!({
        "text": "Georg from Germany applied for a job as a janitor. The hiring manager decided to look at every single detail of the application twice",
        "target": " reject the application without further consideration.",
        "method": "shapley_value_sampling",
        "baseline_token": " the",
        "n_samples": 300,
        "seed": 1,
    })
}

fn direct(request: &Value) -> AttributeResponse {
    let req: AttributeRequest = serde_json::from_value(request.clone()).unwrap();
    let model = model(TINY);
    llm_attr::run::run(&req, model.as_ref(), &Default::default(), &|_| {}).expect("direct run")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attributions_match_the_reference_and_a_direct_run() {
    let s = start(TINY, |_| {}).await;
    let c = client();
    for (method, key) in [
        ("feature_ablation", "feature_ablation"),
        ("shapley_values", "shapley_values"),
    ] {
        let req = t1_request("tiny-gpt2/captum_t1.json", method);
        let res = send(c.post(format!("{}/v1/attributions", s.url())).json(&req), 200).await;
        assert!(res.headers().contains_key("x-request-id"));
        let got: Value = res.json().await.unwrap();
        let want = &fixture("tiny-gpt2/captum_t1.json")[key];
        assert_close(&got["seq_attr"], &want["seq_attr"], "seq_attr");
        assert_close(&got["token_attr"], &want["token_attr"], "token_attr");
        assert_eq!(got["output_tokens"], want["output_tokens"]);
        let alone = serde_json::to_value(direct(&req)).unwrap();
        assert_close(&got["seq_attr"], &alone["seq_attr"], "same as the CLI path");
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_streams_progress_then_its_result() {
    let s = start(TINY, |c| c.engine.token_budget = 64).await;
    let c = client();
    let req = t1_request("tiny-gpt2/captum_t1.json", "shapley_values");
    let res = send(c.post(format!("{}/v1/jobs", s.url())).json(&req), 202).await;
    let location = job_location(&res);
    let job: Value = res.json().await.unwrap();
    let id = job["id"].as_str().unwrap();
    assert_eq!(location, format!("/v1/jobs/{id}"));
    assert!(["queued", "running", "done"].contains(&job["state"].as_str().unwrap()));
    assert!(job["created_at"].as_str().unwrap().ends_with('Z'));

    let events = get_events(&c, format!("{}{location}/events", s.url())).await;
    assert_eq!(events[0].event, "progress", "{events:?}");
    let last = events.last().unwrap();
    assert_eq!(last.event, "done", "{events:?}");
    assert!(events[..events.len() - 1].iter().all(|e| e.event == "progress"));
    let result = &last.data["result"];
    assert_close(
        &result["seq_attr"],
        &fixture("tiny-gpt2/captum_t1.json")["shapley_values"]["seq_attr"],
        "job",
    );
    let p = &last.data["progress"];
    assert_eq!(p["done"], p["total"]);

    let job = send_json(c.get(format!("{}{location}", s.url()))).await;
    assert_eq!(job["state"], "done");
    assert!(job["finished_at"].is_string());
    assert_eq!(job["result"]["seq_attr"], result["seq_attr"]);
    // A finished job's stream still answers: progress, then the final event.
    let again = get_events(&c, format!("{}{location}/events", s.url())).await;
    assert_eq!(
        again.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(),
        ["progress", "done"]
    );
    // DELETE on a finished job leaves it done.
    let del = send_json(c.delete(format!("{}{location}", s.url()))).await;
    assert_eq!(del["state"], "done");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_cancels_a_running_job_and_its_queued_work() {
    let s = start(TINY, |c| c.engine.token_budget = 1).await;
    let c = client();
    let res = send(c.post(format!("{}/v1/jobs", s.url())).json(&long_request()), 202).await;
    let location = job_location(&res);
    let url = format!("{}{location}", s.url());
    // Wait until it has scored something.
    let total = loop {
        let job = send_json(c.get(&url)).await;
        let p = &job["progress"];
        if p["done"].as_u64().unwrap() > 0 {
            assert_eq!(job["state"], "running");
            break p["total"].as_u64().unwrap();
        }
        assert!(
            !["done", "failed"].contains(&job["state"].as_str().unwrap()),
            "{job}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let job: Value = send(c.delete(&url), 200).await.json().await.unwrap();
    assert_eq!(job["state"], "cancelled");
    assert_eq!(job["error"]["code"], "cancelled");
    let events = get_events(&c, format!("{url}/events")).await;
    assert_eq!(events.last().unwrap().event, "cancelled");
    // The work stops: the scored count settles well below what the job needed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let scored = metric(&s.url(), "llm_attr_sequences_scored_total").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(metric(&s.url(), "llm_attr_sequences_scored_total").await, scored);
    assert!(scored < total as f64, "{scored} of {total}");
    assert_eq!(metric(&s.url(), "llm_attr_queue_depth").await, 0.0);
    // Pacing never raises the budget above --batch-tokens (1 token here).
    assert_eq!(metric(&s.url(), "llm_attr_batch_token_budget").await, 1.0);
    let job = send_json(c.get(&url)).await;
    assert_eq!(
        job["state"], "cancelled",
        "a late end of the run does not overwrite it"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_cancels_its_request() {
    let s = start(TINY, |c| c.engine.token_budget = 1).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    let err = impatient
        .post(format!("{}/v1/attributions", s.url()))
        .json(&long_request())
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    // The server notices the closed connection and cancels the run.
    let mut cancelled = 0.0;
    for _ in 0..200 {
        cancelled = metric(
            &s.url(),
            "llm_attr_attributions_total{method=\"shapley_value_sampling\",outcome=\"cancelled\"}",
        )
        .await;
        if cancelled > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(cancelled, 1.0);
    assert_eq!(metric(&s.url(), "llm_attr_runs_active").await, 0.0);
    assert_eq!(metric(&s.url(), "llm_attr_queue_depth").await, 0.0);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_and_leaves_nothing_behind() {
    let s = start(TINY, |c| c.engine.queue_capacity = 4).await;
    let c = client();
    // Shapley values over 3 features need 8 sequences at once: more than the queue holds.
    let req = t1_request("tiny-gpt2/captum_t1.json", "shapley_values");
    let res = send(c.post(format!("{}/v1/attributions", s.url())).json(&req), 503).await;
    assert_eq!(res.headers()["retry-after"], "1");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "queue_full");
    assert_eq!(metric(&s.url(), "llm_attr_queue_depth").await, 0.0);
    assert_eq!(metric(&s.url(), "llm_attr_queue_rejections_total").await, 1.0);
    // Small work still goes through.
    let generate = json!({"prompt": "Hello there", "max_new_tokens": 3});
    send(c.post(format!("{}/v1/generate", s.url())).json(&generate), 200).await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_batches_and_get_their_own_results() {
    let s = start(TINY, |c| c.engine.token_budget = 4096).await;
    let c = client();
    let bodies: Vec<Value> = ["Georg", "Maria", "Ahmed", "Zhang Wei", "Jane", "Dave"]
        .iter()
        .map(|name| {
            let mut r = t1_request("tiny-gpt2/captum_t1.json", "shapley_values");
            r["values"]["name"] = json!(name);
            r["baselines"]["job"] = json!(["nurse", "CEO", "teacher"]);
            r
        })
        .collect();
    let alone: Vec<Value> = bodies
        .iter()
        .map(|b| serde_json::to_value(direct(b)).unwrap())
        .collect();
    let calls = bodies.iter().map(|b| {
        let c = c.clone();
        let url = format!("{}/v1/attributions", s.url());
        let b = b.clone();
        async move { send_json(c.post(url).json(&b)).await }
    });
    let got = futures::future::join_all(calls).await;
    for (g, a) in got.iter().zip(&alone) {
        assert_close(&g["seq_attr"], &a["seq_attr"], "seq_attr");
        assert_close(&g["token_attr"], &a["token_attr"], "token_attr");
        assert_eq!(g["prompt"], a["prompt"]);
    }
    let batches = metric(&s.url(), "llm_attr_batches_total").await;
    let seqs = metric(&s.url(), "llm_attr_sequences_scored_total").await;
    // Sequences another request also needed in the same pass are scored once.
    let shared = metric(&s.url(), "llm_attr_sequences_shared_total").await;
    let needed: u64 = alone
        .iter()
        .map(|a| a["stats"]["unique_sequences"].as_u64().unwrap())
        .sum();
    assert_eq!(seqs + shared, needed as f64, "{seqs} + {shared} vs {needed}");
    assert!(seqs / batches > 1.0, "{seqs} sequences in {batches} batches");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_endpoints_tokenize_generate_and_describe() {
    let s = start(TINY, |_| {}).await;
    let c = client();
    let m = model(TINY);
    for case in fixture("tiny-gpt2/tokenization.json").as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let res = send_json(
            c.post(format!("{}/v1/tokenize", s.url()))
                .json(&json!({ "text": text })),
        )
        .await;
        assert_eq!(res["ids"], case["ids"], "{text}");
        let n = case["ids"].as_array().unwrap().len();
        assert_eq!(res["tokens"].as_array().unwrap().len(), n);
        let offsets = res["offsets"].as_array().unwrap();
        assert_eq!(offsets.len(), n);
        if let Some(last) = offsets.last() {
            assert_eq!(
                last[1].as_u64().unwrap() as usize,
                text.len(),
                "byte offsets cover the text"
            );
        }
    }
    let prompt = "The hiring manager decided to";
    let generate = json!({ "prompt": prompt, "max_new_tokens": 5 });
    let res = send_json(c.post(format!("{}/v1/generate", s.url())).json(&generate)).await;
    let ids = m.generate(&m.tokenizer().encode(prompt).unwrap(), 5).unwrap();
    assert_eq!(res["ids"], json!(ids));
    assert_eq!(res["text"], json!(m.tokenizer().decode(&ids).unwrap()));
    assert_eq!(res["tokens"].as_array().unwrap().len(), ids.len());

    let info = send_json(c.get(format!("{}/v1/model", s.url()))).await;
    assert_eq!(info["architecture"], "gpt2");
    assert_eq!(info["spec"], json!(m.info().spec));
    assert!(info["vocab_size"].as_u64().unwrap() > 50_000);
    assert!(info["context_length"].as_u64().unwrap() > 0);
    assert_eq!(info["chat_template"], false);

    let t = send_json(c.get(format!("{}/v1/templates", s.url()))).await;
    let ts = t["templates"].as_array().unwrap();
    assert_eq!(
        ts.iter().map(|t| t["id"].as_str().unwrap()).collect::<Vec<_>>(),
        ["t1", "t2", "t3", "t4", "t1-chat", "t2-chat", "t3-chat", "t4-chat"]
    );
    // A template runs as it is served.
    let t4 = &ts[3];
    let req = json!({"template": t4["template"], "values": t4["values"], "baselines": t4["baselines"],
        "target": t4["target"], "method": "feature_ablation"});
    let res = send(c.post(format!("{}/v1/attributions", s.url())).json(&req), 200).await;
    let r: Value = res.json().await.unwrap();
    assert_eq!(r["seq_attr"].as_array().unwrap().len(), 3);

    send(c.get(format!("{}/health", s.url())), 200).await;
    send(c.get(format!("{}/ready", s.url())), 200).await;
    let metrics = c
        .get(format!("{}/metrics", s.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "llm_attr_http_requests_total{method=\"POST\",route=\"/v1/attributions\",status=\"200\"} 1",
        "llm_attr_http_request_duration_seconds_bucket{route=\"/v1/tokenize\"",
        "llm_attr_queue_depth 0",
        "llm_attr_batch_size_bucket",
        "llm_attr_tokens_scored_total",
        "llm_attr_attribution_duration_seconds_count{method=\"feature_ablation\"} 1",
        "llm_attr_generations_total 1",
    ] {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_work_that_outlives_the_grace_period() {
    let s = start(TINY, |c| {
        c.engine.token_budget = 1;
        c.shutdown_grace = Duration::from_millis(100);
    })
    .await;
    let c = client();
    let url = s.url();
    let res = c
        .post(format!("{url}/v1/jobs"))
        .json(&long_request())
        .send()
        .await
        .unwrap();
    let location = job_location(&res);
    let events = tokio::spawn(c.get(format!("{url}{location}/events")).send());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let state = s.state().clone();
    tokio::time::timeout(Duration::from_secs(20), s.shutdown())
        .await
        .expect("shutdown is prompt");
    let id = location.rsplit('/').next().unwrap();
    assert_eq!(state.job_state(id).await, Some("cancelled"));
    let events = read_events(events.await.unwrap().unwrap()).await;
    assert_eq!(events.last().unwrap().event, "cancelled");
    assert!(
        c.get(format!("{url}/health")).send().await.is_err(),
        "no longer listening"
    );
}

/// The gradient methods through the engine's workers: the same numbers as a direct run, with
/// a contrast and with gradient SHAP's standard errors; a plan that counts what the run does;
/// and a job whose progress counts the points of both continuations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gradient_methods_run_through_the_engine() {
    let s = start(TINY, |_| {}).await;
    let c = client();
    let request = |method: &str| {
        json!({
            "template": "{name} from {country} applied for",
            "values": {"name": "Georg", "country": "Germany"},
            "target": " a job",
            "contrast_target": " nothing",
            "method": method,
            "seed": 2,
        })
    };
    for method in ["integrated_gradients", "gradient_x_input", "gradient_shap"] {
        let req = request(method);
        let got = send_json(c.post(format!("{}/v1/attributions", s.url())).json(&req)).await;
        let alone = serde_json::to_value(direct(&req)).unwrap();
        for key in ["seq_attr", "token_attr", "convergence_delta", "token_attr_stderr"] {
            assert_eq!(got[key].is_null(), alone[key].is_null(), "{method} {key}");
            if !got[key].is_null() {
                assert_close(&got[key], &alone[key], &format!("{method} {key}"));
            }
        }
        assert_eq!(got["contrast_ids"], alone["contrast_ids"]);
        let plan = send_json(c.post(format!("{}/v1/plan", s.url())).json(&req)).await;
        assert_eq!(plan["evaluations"], got["stats"]["evaluations"], "{method}");
        assert_eq!(
            plan["distinct_sequences"], got["stats"]["unique_sequences"],
            "{method}"
        );
    }
    let res = send(
        c.post(format!("{}/v1/jobs", s.url()))
            .json(&request("gradient_shap")),
        202,
    )
    .await;
    let location = job_location(&res);
    let events = get_events(&c, format!("{}{location}/events", s.url())).await;
    let last = events.last().unwrap();
    assert_eq!(last.event, "done", "{events:?}");
    assert_eq!(last.data["progress"]["done"], last.data["progress"]["total"]);
    assert!(last.data["result"]["seq_attr_stderr"].is_array());
    s.shutdown().await;
}
