//! Bad input over HTTP: each gets a clear JSON error with the right status and field, and the
//! server keeps serving everyone else.

mod http_util;

use http_util::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const KEY: &str = "s3cret-key";

/// Sends `req` and checks it fails with `status` and a JSON error `code`; returns the error.
async fn error(req: reqwest::RequestBuilder, status: u16, code: &str) -> Value {
    let res = req.send().await.unwrap();
    assert_eq!(res.status().as_u16(), status, "{code}");
    let ct = res.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("application/json"), "{ct}");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    body["error"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_the_server_keeps_serving() {
    let s = start(TINY, |c| {
        c.api_key = Some(KEY.into());
        c.max_body_bytes = 4096;
        c.limits.max_n_samples = 100;
        c.cors_origins = vec!["http://example.test".into()];
    })
    .await;
    let c = client();
    let url = |p: &str| format!("{}{p}", s.url());
    let post = |p: &str| {
        c.post(url(p))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
    };
    let good = t1_request("tiny-gpt2/captum_t1.json", "feature_ablation");

    // API key: missing, wrong, and both accepted forms.
    let e = error(c.post(url("/v1/attributions")).json(&good), 401, "unauthorized").await;
    assert!(e["message"].as_str().unwrap().contains("Bearer"));
    error(
        c.get(url("/v1/templates")).bearer_auth("nope"),
        401,
        "unauthorized",
    )
    .await;
    error(
        c.get(url("/v1/model")).header("x-api-key", "s3cret-kez"),
        401,
        "unauthorized",
    )
    .await;
    send(c.get(url("/v1/templates")).header("x-api-key", KEY), 200).await;
    send(c.get(url("/v1/templates")).bearer_auth(KEY), 200).await;
    // Health and readiness need no key.
    send(c.get(url("/health")), 200).await;
    send(c.get(url("/ready")), 200).await;

    // Malformed JSON, an empty body, wrong types, unknown fields.
    for body in ["{\"template\": ", "", "not json", "{} {}"] {
        error(post("/v1/attributions").body(body), 400, "invalid_json").await;
    }
    let cases = [
        (
            json!({"template": "{a} b", "values": {"a": 3}, "target": "x"}),
            "values.a",
        ),
        (
            json!({"template": "{a} b", "values": {"a": "x"}, "target": "x", "n_samples": "many"}),
            "n_samples",
        ),
        (
            json!({"template": "{a} b", "values": {"a": "x"}, "target": "x", "colour": "red"}),
            "colour",
        ),
        (
            json!({"template": "{a} b", "values": {"a": "x"}, "target": "x", "method": "magic"}),
            "method",
        ),
        (json!([1, 2]), "body"),
    ];
    for (body, field) in cases {
        let e = error(post("/v1/attributions").json(&body), 400, "invalid_request").await;
        assert_eq!(e["field"], field, "{e}");
    }
    let e = error(
        post("/v1/tokenize").json(&json!({"txt": "hi"})),
        400,
        "invalid_request",
    )
    .await;
    assert_eq!(e["field"], "txt");
    let e = error(
        post("/v1/generate").json(&json!({"prompt": 5})),
        400,
        "invalid_request",
    )
    .await;
    assert_eq!(e["field"], "prompt");

    // Semantically invalid: a placeholder without a value (the attribution core names it).
    let body = json!({"template": "{name} from {country}", "values": {"name": "Georg"}, "target": " x"});
    let e = error(post("/v1/attributions").json(&body), 400, "invalid_request").await;
    assert!(e["field"].as_str().unwrap().contains("country"), "{e}");

    // Limits: n_samples over the configured maximum, too many new tokens.
    let mut body = t1_request("tiny-gpt2/captum_t1.json", "lime");
    body["n_samples"] = json!(101);
    let e = error(post("/v1/attributions").json(&body), 422, "limit_exceeded").await;
    assert_eq!(e["field"], "n_samples");
    let e = error(
        post("/v1/generate").json(&json!({"prompt": "Hi", "max_new_tokens": 10_000})),
        422,
        "limit_exceeded",
    )
    .await;
    assert_eq!(e["field"], "max_new_tokens");

    // Oversized body.
    let big = json!({"text": "x".repeat(5000)});
    let e = error(post("/v1/tokenize").json(&big), 413, "payload_too_large").await;
    assert_eq!(e["field"], "body");

    // Unknown job ids, unknown routes.
    let id = "00000000-0000-4000-8000-000000000000";
    for path in [
        format!("/v1/jobs/{id}"),
        "/v1/jobs/not-a-uuid".into(),
        format!("/v1/jobs/{id}/events"),
    ] {
        error(c.get(url(&path)).bearer_auth(KEY), 404, "not_found").await;
    }
    error(
        c.delete(url(&format!("/v1/jobs/{id}"))).bearer_auth(KEY),
        404,
        "not_found",
    )
    .await;
    error(c.get(url("/v1/nothing")).bearer_auth(KEY), 404, "not_found").await;

    // CORS preflight from an allowed origin, request ids echoed or made up.
    let pre = c
        .request(reqwest::Method::OPTIONS, url("/v1/attributions"))
        .header("origin", "http://example.test")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization,content-type")
        .send()
        .await
        .unwrap();
    assert!(pre.status().is_success(), "{}", pre.status());
    assert_eq!(
        pre.headers()["access-control-allow-origin"],
        "http://example.test"
    );
    let res = c
        .get(url("/health"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "abc-123");
    let res = c.get(url("/health")).send().await.unwrap();
    assert_eq!(res.headers()["x-request-id"].len(), 36);

    // After all of that, good requests work.
    let res = post("/v1/attributions").json(&good).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let r: Value = res.json().await.unwrap();
    assert_close(
        &r["seq_attr"],
        &fixture("tiny-gpt2/captum_t1.json")["feature_ablation"]["seq_attr"],
        "seq_attr",
    );
    let m = c
        .get(url("/metrics"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("status=\"401\""), "{m}");
    assert!(m.contains("status=\"413\""), "{m}");
    s.shutdown().await;
}
