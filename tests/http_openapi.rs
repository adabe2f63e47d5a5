//! The committed OpenAPI document is what the code generates, and the service answers its
//! ops endpoints while the model is not (yet) available.
//!
//! Regenerate with `cargo run -- openapi > openapi/openapi.json`, or run this test with
//! `UPDATE_OPENAPI=1`.

use std::time::Duration;

use llm_attr::api::{openapi_json, Config, ModelSource, Server};
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
        "/v1/audits",
        "/v1/audits/{id}",
        "/v1/audits/{id}/events",
        "/v1/plan",
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
        "AuditRequest",
        "AuditResult",
        "Plan",
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_is_served_from_the_binary_or_a_directory() {
    let http = reqwest::Client::new();
    // Compiled in: whatever static/ held at build time.
    let s = Server::start(Config::new(ModelSource::Spec("/nonexistent/model.gguf".into())))
        .await
        .unwrap();
    let res = http.get(s.url()).send().await.unwrap();
    let embedded = llm_attr::api::FILES;
    match embedded.iter().find(|(p, _)| *p == "index.html") {
        Some((_, body)) => {
            assert_eq!(res.status(), 200);
            assert!(res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html"));
            assert_eq!(res.bytes().await.unwrap().as_ref(), *body);
        }
        None => assert_eq!(res.status(), 404),
    }
    // Module scripts: served as JavaScript, and every `import ... from "./x.js"` is embedded.
    for (path, body) in embedded.iter().filter(|(p, _)| p.ends_with(".js")) {
        let res = http.get(format!("{}/{path}", s.url())).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        let ct = res.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/javascript"), "{path}: {ct}");
        let text = std::str::from_utf8(body).unwrap();
        for import in text.split("from \"./").skip(1) {
            let name = import.split('"').next().unwrap();
            assert!(
                embedded.iter().any(|(p, _)| *p == name),
                "{path} imports {name}, which is not embedded"
            );
        }
    }
    let res = http
        .get(format!("{}/no/such/file.js", s.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    s.shutdown().await;

    // From a directory (--static-dir).
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "<html>from disk</html>").unwrap();
    std::fs::write(dir.path().join("app.js"), "console.log(1)").unwrap();
    let mut c = Config::new(ModelSource::Spec("/nonexistent/model.gguf".into()));
    c.static_dir = Some(dir.path().to_path_buf());
    let s = Server::start(c).await.unwrap();
    let res = http.get(format!("{}/", s.url())).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "<html>from disk</html>");
    let res = http.get(format!("{}/app.js", s.url())).send().await.unwrap();
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("javascript"));
    assert_eq!(
        http.get(format!("{}/nope.css", s.url()))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    s.shutdown().await;
}
