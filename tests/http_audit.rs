//! Audits and the cost preview over HTTP, on the real server with tiny-gpt2: the audit job and
//! its events, every cell equal to its request run alone, plans equal to what the runs score,
//! and errors that name their field.

mod http_util;

use http_util::*;
use serde_json::{json, Value};

const T1: &str = "{name} from {country} applied for a job as a {job}. The hiring manager decided to";

fn audit_request() -> Value {
    json!({
        "template": T1,
        "values": {"name": "Georg", "country": "Germany", "job": "janitor"},
        "sweep": {"name": ["Emily", "Jamal"], "country": ["Germany", "Togo"]},
        "targets": [" hire", " reject"],
        "baselines": {"job": ["nurse", "janitor"]},
        "contexts": "average",
        "method": "feature_ablation",
    })
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_job_streams_progress_then_cells_equal_to_requests_run_alone() {
    let s = start(TINY, |c| c.engine.token_budget = 64).await;
    let c = client();
    let res = send(
        c.post(format!("{}/v1/audits", s.url())).json(&audit_request()),
        202,
    )
    .await;
    let location = job_location(&res);
    let job: Value = res.json().await.unwrap();
    assert_eq!(job["kind"], "audit");
    assert_eq!(location, format!("/v1/audits/{}", job["id"].as_str().unwrap()));

    let events = get_events(&c, format!("{}{location}/events", s.url())).await;
    let last = events.last().unwrap();
    assert_eq!(last.event, "done", "{events:?}");
    let result = &last.data["result"];
    let total = result["stats"]["distinct_sequences"].as_u64().unwrap();
    for e in &events[..events.len() - 1] {
        assert_eq!(e.event, "progress");
        let t = e.data["total"].as_u64().unwrap();
        assert!(
            t == 0 || t == total,
            "progress counts the audit's sequences: {e:?}"
        );
    }
    assert_eq!(result["swept"], json!(["name", "country"]));
    assert_eq!(result["n_contexts"], 2);
    assert_eq!(result["cells"].as_array().unwrap().len(), 4);

    // Every cell in every context equals the same request run alone.
    for cell in result["cells"].as_array().unwrap() {
        for target in [" hire", " reject"] {
            let mut per_job = Vec::new();
            for job in ["nurse", "janitor"] {
                let mut values = cell["values"].clone();
                values["job"] = json!(job);
                let alone = json!({"template": T1, "values": values, "target": target,
                    "method": "feature_ablation"});
                let r = send_json(c.post(format!("{}/v1/attributions", s.url())).json(&alone)).await;
                per_job.push(num(&r["target_log_prob"]));
            }
            let mean = per_job.iter().sum::<f64>() / 2.0;
            let got = num(&cell["log_prob"][target]);
            assert!((got - mean).abs() < 1e-4, "{cell}: {got} vs {mean}");
        }
        let a = &cell["attribution"];
        assert_eq!(a["target"], " hire");
        assert_eq!(a["contrast_target"], " reject");
        assert_eq!(a["seq_attr"].as_array().unwrap().len(), 3);
    }
    let rows = result["summary"]["name"].as_array().unwrap();
    let ranks: Vec<u64> = rows.iter().map(|r| r["rank"].as_u64().unwrap()).collect();
    assert!(ranks.contains(&1) && ranks.contains(&2));
    assert!(rows[0]["contrast_ci"].is_array());

    // The job is also a job; an audit URL does not serve other jobs.
    let id = location.rsplit('/').next().unwrap();
    let as_job = send_json(c.get(format!("{}/v1/jobs/{id}", s.url()))).await;
    assert_eq!(as_job["kind"], "audit");
    let res = send(
        c.post(format!("{}/v1/jobs", s.url()))
            .json(&t1_request("tiny-gpt2/captum_t1.json", "fa")),
        202,
    )
    .await;
    let other = job_location(&res).rsplit('/').next().unwrap().to_string();
    send(c.get(format!("{}/v1/audits/{other}", s.url())), 404).await;
    send(c.delete(format!("{}/v1/audits/{other}", s.url())), 404).await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_count_what_runs_score_and_estimate_from_measured_throughput() {
    let s = start(TINY, |_| {}).await;
    let c = client();
    let mut req = t1_request("tiny-gpt2/captum_t1.json", "shapley_values");
    req["contrast_target"] = json!(" hire");
    let plan = send_json(c.post(format!("{}/v1/plan", s.url())).json(&req)).await;
    assert_eq!(plan["features"], 3);
    assert_eq!(plan["coalitions"], 8);
    assert_eq!(plan["distinct_sequences"], 16, "8 prompts x 2 continuations");
    assert!(
        plan["tokens_per_second"].is_null() && plan["estimated_seconds"].is_null(),
        "{plan}"
    );

    let done = send_json(c.post(format!("{}/v1/attributions", s.url())).json(&req)).await;
    assert_eq!(plan["distinct_sequences"], done["stats"]["unique_sequences"]);
    assert_eq!(plan["tokens"], done["stats"]["tokens_scored"]);
    assert_eq!(plan["evaluations"], done["stats"]["evaluations"]);
    // Each prompt's two continuations share it, so reuse leaves fewer tokens to compute, and
    // the engine (its prefix cache empty before this run) computes no fewer than that.
    let after_reuse = num(&plan["tokens_after_reuse"]);
    assert!(after_reuse > 0.0 && after_reuse < num(&plan["tokens"]), "{plan}");
    assert!(
        after_reuse <= num(&done["stats"]["tokens_computed"]),
        "{plan} {done}"
    );

    let plan = send_json(c.post(format!("{}/v1/plan", s.url())).json(&audit_request())).await;
    let tps = num(&plan["tokens_per_second"]);
    assert!(tps > 0.0, "measured after the first run: {plan}");
    let after_reuse = num(&plan["tokens_after_reuse"]);
    assert!(after_reuse > 0.0 && after_reuse < num(&plan["tokens"]), "{plan}");
    let expected = after_reuse / tps;
    assert!(
        (num(&plan["estimated_seconds"]) - expected).abs() < 1e-9,
        "{plan}"
    );
    let res = send(
        c.post(format!("{}/v1/audits", s.url())).json(&audit_request()),
        202,
    )
    .await;
    let events = get_events(&c, format!("{}{}/events", s.url(), job_location(&res))).await;
    let stats = &events.last().unwrap().data["result"]["stats"];
    assert_eq!(plan["distinct_sequences"], stats["distinct_sequences"]);
    assert_eq!(plan["tokens"], stats["tokens"]);
    s.shutdown().await;
}

/// A gradient method's plan counts its passes, a forward pass and a backward pass per target
/// token over every point (issue 18: a 200-token target was estimated at its forward tokens
/// alone, 100 times too fast), and times them at the measured gradient rate once there is one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gradient_plans_count_a_backward_pass_per_target_token() {
    let s = start(TINY, |_| {}).await;
    let c = client();
    let req = json!({"text": "Bob is a nurse from", "target": " Germany and he".repeat(5),
                     "method": "gxi"});
    let score = |body: &Value| c.post(format!("{}/v1/attributions", s.url())).json(body);
    let plan_of = |body: &Value| c.post(format!("{}/v1/plan", s.url())).json(body);
    // A scoring run first: the scoring rate stands in for the gradient rate until a gradient run.
    send(score(&t1_request("tiny-gpt2/captum_t1.json", "fa")), 200).await;
    let plan = send_json(plan_of(&req)).await;
    let done = send_json(score(&req)).await;
    let k = done["target_ids"].as_array().unwrap().len();
    let prompt = done["features"].as_array().unwrap().len();
    let forward = prompt + k - 1;
    assert_eq!(plan["gradient_tokens"], forward * (1 + k), "{plan}");
    let tps = num(&plan["tokens_per_second"]);
    assert_eq!(num(&plan["gradient_tokens_per_second"]), tps, "{plan}");
    let scored = (num(&plan["tokens_after_reuse"]) - forward as f64) / tps;
    let expected = scored + (forward * (1 + k)) as f64 / tps;
    assert!(
        (num(&plan["estimated_seconds"]) - expected).abs() < 1e-9,
        "{plan}"
    );

    let plan = send_json(plan_of(&req)).await;
    let gtps = num(&plan["gradient_tokens_per_second"]);
    assert!(
        gtps > 0.0 && gtps != tps,
        "measured after the gradient run: {plan}"
    );
    let tps = num(&plan["tokens_per_second"]);
    let scored = (num(&plan["tokens_after_reuse"]) - forward as f64) / tps;
    let expected = scored + (forward * (1 + k)) as f64 / gtps;
    assert!(
        (num(&plan["estimated_seconds"]) - expected).abs() < 1e-9,
        "{plan}"
    );
    println!(
        "gxi, {k} target tokens: estimated {:.3} s, took {:.3} s",
        num(&plan["estimated_seconds"]),
        num(&done["stats"]["seconds"])
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_audits_and_plans_get_errors_naming_the_field() {
    let s = start(TINY, |_| {}).await;
    let c = client();
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"sweep": {"religion": ["a"]}}),
            "sweep.religion",
            "unknown placeholder",
        ),
        (json!({"sweep": {"name": []}}), "sweep.name", "empty"),
        (json!({"targets": []}), "targets", "at least one"),
        (json!({"contexts": "sometimes"}), "contexts", ""),
    ];
    for (edit, field, words) in cases {
        let mut body = audit_request();
        for (k, v) in edit.as_object().unwrap() {
            body[k] = v.clone();
        }
        for path in ["/v1/audits", "/v1/plan"] {
            let res = send(c.post(format!("{}{path}", s.url())).json(&body), 400).await;
            let e: Value = res.json().await.unwrap();
            assert_eq!(e["error"]["field"], field, "{path}: {e}");
            assert!(e["error"]["message"].as_str().unwrap().contains(words), "{e}");
        }
    }
    // A grid over the limit says how many cells.
    let mut body = audit_request();
    body["sweep"]["job"] = json!((0..300).map(|i| format!("job {i}")).collect::<Vec<_>>());
    body.as_object_mut().unwrap().remove("baselines");
    body["contexts"] = json!("single");
    let e = send_json(c.post(format!("{}/v1/audits", s.url())).json(&body)).await;
    assert_eq!(e["error"]["field"], "sweep");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("1200 cells"),
        "{e}"
    );
    // An attribute request's plan fails as the request would.
    let mut req = t1_request("tiny-gpt2/captum_t1.json", "fa");
    req["contrast_target"] = req["target"].clone();
    for path in ["/v1/plan", "/v1/attributions"] {
        let e = send_json(c.post(format!("{}{path}", s.url())).json(&req)).await;
        assert_eq!(e["error"]["field"], "contrast_target", "{path}: {e}");
    }
    s.shutdown().await;
}
