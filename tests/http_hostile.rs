//! A hostile client's second round (issue 18): jobs and audits are checked before 202, wrong
//! JSON types in choice fields name their field, every error is JSON, request ids are kept
//! clean, bodies are decoded or refused by their encoding, dotfiles stay hidden, and
//! `--max-request-seconds` refuses work by its estimated time.

mod http_util;

use std::io::Write;

use http_util::*;
use serde_json::{json, Value};

const KEY: &str = "k3y-for-tests";

/// Status, and the JSON error's code and field (fails if the body is not JSON).
async fn outcome(req: reqwest::RequestBuilder) -> (u16, String, Value) {
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    let body: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text}"));
    let code = body["error"]["code"].as_str().unwrap_or("").to_string();
    (status, code, body["error"]["field"].clone())
}

/// `{p0} {p1} ... is a` with a value for each of `n` placeholders.
fn many_placeholders(n: usize) -> (String, Value) {
    let template = (0..n).map(|i| format!("{{p{i}}}")).collect::<Vec<_>>().join(" ");
    let values: serde_json::Map<String, Value> = (0..n).map(|i| (format!("p{i}"), json!("x"))).collect();
    (format!("{template} is a"), Value::Object(values))
}

const LOOPING: &str =
    "{% for i in range(100000000) %}{% for j in range(100000000) %}x{% endfor %}{% endfor %}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_and_audits_are_checked_as_attributions_are_before_202() {
    let s = start(TINY, |c| c.limits.max_n_samples = 1000).await;
    let c = client();
    let post = |p: &str, body: &Value| c.post(format!("{}{p}", s.url())).json(body);
    let (twenty, twenty_values) = many_placeholders(20);
    let chat = |t: &str| json!([{"role": "user", "content": t}]);
    let attributions = [
        json!({"template": "{name is a", "values": {"name": "Bob"}, "target": " doctor"}),
        json!({"template": "{who} is a", "values": {"name": "Bob"}, "target": " doctor"}),
        json!({"template": "{name} is a", "values": {"name": "Bob"}, "target": " doctor",
               "method": "shapley_value_sampling", "n_samples": 999_999}),
        json!({"template": twenty, "values": twenty_values, "target": " doctor",
               "method": "shapley_values"}),
        json!({"messages": chat("{name} is a"), "values": {"name": "Bob"}, "target": " doctor",
               "chat_template": LOOPING}),
    ];
    for body in &attributions {
        let sync = outcome(post("/v1/attributions", body)).await;
        assert!((400..500).contains(&sync.0), "{body}: {sync:?}");
        let job = outcome(post("/v1/jobs", body)).await;
        assert_eq!(job, sync, "/v1/jobs answers {body} as /v1/attributions does");
    }

    let (nineteen, nineteen_values) = many_placeholders(19);
    let audit = |extra: Value| {
        let mut body = json!({"template": "{name} is a", "values": {"name": "Bob"},
            "sweep": {"name": ["Bob", "Alice"]}, "targets": [" doctor"]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let audits = [
        audit(json!({"template": "{name is a"})),
        audit(json!({"sweep": {"who": ["a"]}})),
        audit(json!({"method": "shapley_value_sampling", "n_samples": 999_999})),
        audit(
            json!({"template": format!("{{name}} {nineteen}"), "values": nineteen_values,
                     "method": "shapley_values"}),
        ),
        audit(json!({"template": null, "messages": chat("{name} is a"), "chat_template": LOOPING})),
    ];
    for body in &audits {
        let planned = outcome(post("/v1/plan", body)).await;
        assert!((400..500).contains(&planned.0), "{body}: {planned:?}");
        let audit = outcome(post("/v1/audits", body)).await;
        assert_eq!(audit, planned, "/v1/audits answers {body} as /v1/plan does");
    }
    // Nothing was queued.
    let jobs = s.state().job_count();
    assert_eq!(jobs, 0);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_types_in_choice_fields_name_the_field_and_its_choices() {
    let s = start(TINY, |_| {}).await;
    let c = client();
    let base = json!({"template": "{name} is a", "values": {"name": "Bob"}, "target": " doctor"});
    let audit = json!({"template": "{name} is a", "values": {"name": "Bob"},
        "sweep": {"name": ["Bob"]}, "targets": [" doctor"]});
    let choices = [
        ("method", "feature_ablation"),
        ("attr_target", "log_prob"),
        ("baseline_sampling", "exact"),
        ("integration", "gausslegendre"),
    ];
    for wrong in [json!(5), json!(null), json!(true), json!([]), json!({})] {
        for (field, choice) in choices {
            for (path, body) in [("/v1/attributions", &base), ("/v1/audits", &audit)] {
                // `null` means "the default" for the optional ones.
                let optional = matches!(field, "baseline_sampling" | "integration")
                    || (field == "method" && path == "/v1/audits");
                if wrong.is_null() && optional {
                    continue;
                }
                let mut body = body.clone();
                body[field] = wrong.clone();
                let res = c
                    .post(format!("{}{path}", s.url()))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 400, "{path} {body}");
                let e: Value = res.json().await.unwrap();
                assert_eq!(e["error"]["code"], "invalid_request", "{body}: {e}");
                assert_eq!(e["error"]["field"], field, "{body}: {e}");
                let message = e["error"]["message"].as_str().unwrap();
                assert!(message.contains(choice), "{body}: {message}");
            }
        }
        let mut body = base.clone();
        body.as_object_mut().unwrap().remove("template");
        body["messages"] = json!([{"role": wrong, "content": "{name} is a"}]);
        let (status, code, field) = outcome(c.post(format!("{}/v1/attributions", s.url())).json(&body)).await;
        assert_eq!((status, code.as_str()), (400, "invalid_request"), "{body}");
        assert_eq!(field, "messages[0].role", "{body}");
    }
    // The names and their short aliases still work.
    for method in ["fa", "feature_ablation", "sv"] {
        let mut body = base.clone();
        body["method"] = json!(method);
        send(c.post(format!("{}/v1/attributions", s.url())).json(&body), 200).await;
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_paths_get_json_errors() {
    let s = start(TINY, |_| {}).await;
    let c = client();
    for path in ["/v1/jobs/%ff%fe", "/v1/jobs/%ff%fe/events", "/v1/audits/%c3%28"] {
        let (status, code, field) = outcome(c.get(format!("{}{path}", s.url()))).await;
        assert_eq!((status, code.as_str()), (400, "invalid_path"), "{path}");
        assert_eq!(field, "path");
        let (status, ..) = outcome(c.delete(format!("{}{path}", s.url()))).await;
        assert!(status == 400 || status == 405, "{path}: {status}");
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_kept_only_when_short_and_plain() {
    let logs = logs();
    let s = start(TINY, |_| {}).await;
    let c = client();
    let id_of = |res: &reqwest::Response| res.headers()["x-request-id"].to_str().unwrap().to_string();
    let res = send(
        c.get(format!("{}/health", s.url()))
            .header("x-request-id", "req-1.a_b"),
        200,
    )
    .await;
    assert_eq!(id_of(&res), "req-1.a_b");
    let hostile = format!("<script>alert(1)</script>{}", "A".repeat(10_000));
    for bad in [hostile.as_str(), "has space", &"x".repeat(129)] {
        let res = send(
            c.get(format!("{}/v1/model", s.url())).header("x-request-id", bad),
            200,
        )
        .await;
        let id = id_of(&res);
        assert!(id != bad, "the bad id was echoed");
        assert!(id.len() <= 128 && !id.is_empty(), "{id}");
        assert!(
            id.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-'),
            "{id}"
        );
    }
    s.shutdown().await;
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(text.contains("req-1.a_b"), "clean ids are logged: {text}");
    assert!(
        !text.contains("<script>") && !text.contains("has space"),
        "{text}"
    );
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bodies_are_decoded_within_the_limit_and_other_encodings_refused() {
    let s = start(TINY, |c| c.max_body_bytes = 4096).await;
    let c = client();
    let url = format!("{}/v1/tokenize", s.url());
    let post = |body: Vec<u8>, encoding: &str| {
        c.post(&url)
            .header("content-type", "application/json")
            .header("content-encoding", encoding)
            .body(body)
    };
    let ok: Value = post(gzip(br#"{"text": "hello"}"#), "gzip")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!ok["ids"].as_array().unwrap().is_empty(), "{ok}");
    // Small when sent, over the limit once decoded.
    let big = format!(r#"{{"text": "{}"}}"#, "a".repeat(10_000));
    assert!(gzip(big.as_bytes()).len() < 4096);
    let (status, code, _) = outcome(post(gzip(big.as_bytes()), "gzip")).await;
    assert_eq!((status, code.as_str()), (413, "payload_too_large"));
    // Said to be gzip but is not.
    let (status, code, field) = outcome(post(br#"{"text": "hi"}"#.to_vec(), "gzip")).await;
    assert_eq!((status, code.as_str()), (400, "invalid_body"));
    assert_eq!(field, "content-encoding");
    for encoding in ["br", "deflate", "zstd", "gzip, br"] {
        let (status, code, field) = outcome(post(br#"{"text": "hi"}"#.to_vec(), encoding)).await;
        assert_eq!(
            (status, code.as_str()),
            (415, "unsupported_media_type"),
            "{encoding}"
        );
        assert_eq!(field, "content-encoding");
    }
    send(post(br#"{"text": "hi"}"#.to_vec(), "identity"), 200).await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dotfiles_in_the_static_dir_are_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("index.html"), "<p>page</p>").unwrap();
    std::fs::write(d.join(".env"), "SECRET").unwrap();
    std::fs::create_dir(d.join(".git")).unwrap();
    std::fs::write(d.join(".git/config"), "SECRET").unwrap();
    std::os::unix::fs::symlink(d.join(".env"), d.join("env.txt")).unwrap();
    let s = start(TINY, |c| c.static_dir = Some(d.to_path_buf())).await;
    let c = client();
    send(c.get(format!("{}/", s.url())), 200).await;
    for p in ["/.env", "/.git/config", "/%2egit/config", "/env.txt"] {
        let res = c.get(format!("{}{p}", s.url())).send().await.unwrap();
        assert_eq!(res.status(), 404, "{p}");
        assert!(!res.text().await.unwrap().contains("SECRET"), "{p}");
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_both_auth_headers_the_bearer_token_decides() {
    let s = start(TINY, |c| c.api_key = Some(KEY.into())).await;
    let c = client();
    let get = || c.get(format!("{}/v1/model", s.url()));
    send(get().bearer_auth(KEY).header("x-api-key", "wrong"), 200).await;
    send(get().bearer_auth("wrong").header("x-api-key", KEY), 401).await;
    // Another scheme is no Bearer token: X-Api-Key decides.
    send(get().basic_auth("u", Some("p")).header("x-api-key", KEY), 200).await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_estimated_over_max_request_seconds_are_refused_before_any_work() {
    let s = start(TINY, |c| c.max_request_seconds = Some(1e-9)).await;
    let c = client();
    let post = |p: &str, body: &Value| c.post(format!("{}{p}", s.url())).json(body);
    let body = t1_request("tiny-gpt2/captum_t1.json", "feature_ablation");
    // Before anything is scored there is no throughput, hence no estimate: it runs.
    send(post("/v1/attributions", &body), 200).await;
    let plan = send_json(post("/v1/plan", &body)).await;
    let estimate = plan["estimated_seconds"].as_f64().expect("an estimate");
    let sequences = metric(&s.url(), "llm_attr_sequences_scored_total").await;
    let mut bigger = body.clone();
    bigger["method"] = json!("shapley_values");
    let audit = json!({"template": body["template"], "values": body["values"],
        "sweep": {"name": ["Emily", "Jamal"]}, "targets": [" hire"]});
    for (path, body) in [
        ("/v1/attributions", &bigger),
        ("/v1/jobs", &bigger),
        ("/v1/audits", &audit),
    ] {
        let res = post(path, body).send().await.unwrap();
        assert_eq!(res.status(), 422, "{path}");
        let e: Value = res.json().await.unwrap();
        assert_eq!(e["error"]["code"], "limit_exceeded", "{e}");
        let message = e["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("--max-request-seconds") && message.contains("estimated"),
            "{message}"
        );
    }
    assert!(estimate > 0.0);
    assert_eq!(
        metric(&s.url(), "llm_attr_sequences_scored_total").await,
        sequences,
        "nothing was scored"
    );
    s.shutdown().await;
}
