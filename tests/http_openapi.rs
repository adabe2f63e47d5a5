//! The committed OpenAPI document is what the code generates, and the service answers its
//! ops endpoints while the model is not (yet) available.
//!
//! Regenerate with `cargo run -- openapi > openapi/openapi.json`, or run this test with
//! `UPDATE_OPENAPI=1`.

use std::time::Duration;

use llm_attr::api::{openapi::openapi_json, Config, ModelSource, Server};
use serde_json::Value;

const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");

#[test]
fn committed_openapi_matches_the_code() {
    let generated = openapi_json();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(COMMITTED, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi/openapi.json is out of date: run `cargo run -- openapi > openapi/openapi.json` \
         or `UPDATE_OPENAPI=1 cargo test --test http_openapi`"
    );
    let doc: Value = serde_json::from_str(&generated).unwrap();
    for path in [
        "/v1/attributions",
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/events",
        "/v1/templates",
        "/v1/tokenize",
        "/v1/generate",
        "/v1/model",
        "/health",
        "/ready",
        "/metrics",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
    for schema in [
        "AttributeRequest",
        "AttributeResponse",
        "Job",
        "ErrorBody",
        "ModelInfo",
    ] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_endpoints_answer_without_a_model() {
    let mut c = Config::new(ModelSource::Spec("/nonexistent/model.gguf".into()));
    c.shutdown_grace = Duration::from_millis(10);
    let s = Server::start(c).await.unwrap();
    assert!(s.ready().await.is_err(), "the model cannot load");
    let http = reqwest::Client::new();
    let get = |p: &str| http.get(format!("{}{p}", s.url())).send();
    assert_eq!(get("/health").await.unwrap().status(), 200);
    let ready = get("/ready").await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "failed");
    assert!(body["error"].as_str().unwrap().contains("nonexistent"));
    let res = get("/v1/model").await.unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_ready");
    // Templates need no model.
    assert_eq!(get("/v1/templates").await.unwrap().status(), 200);
    let served: Value = get("/openapi.json").await.unwrap().json().await.unwrap();
    assert_eq!(served, serde_json::from_str::<Value>(&openapi_json()).unwrap());
    let docs = get("/docs/").await.unwrap();
    assert_eq!(docs.status(), 200);
    assert!(
        docs.text().await.unwrap().contains("swagger"),
        "Swagger UI is served"
    );
    let m = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(m.contains("llm_attr_model_ready 0"), "{m}");
    s.shutdown().await;
}
