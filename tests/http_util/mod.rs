//! Shared by the http_* tests: start the real server in-process on 127.0.0.1:0 with a real
//! model, and read server-sent events.
#![allow(dead_code)]

#[path = "../common/mod.rs"]
mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use llm_attr::api::{Config, ModelSource, Server};
use llm_attr::model::Model;
use serde_json::Value;

pub(crate) const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-gpt2");
pub(crate) const SMOLLM2: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
);

/// Each model is loaded once per test binary and shared by its servers (the one model cache
/// of the tests, `common::shared_model`).
pub(crate) fn model(spec: &'static str) -> Arc<Model> {
    common::shared_model(spec)
}

pub(crate) async fn start(spec: &'static str, tweak: impl FnOnce(&mut Config)) -> Server {
    let mut c = Config::new(ModelSource::Loaded(model(spec)));
    tweak(&mut c);
    let s = Server::start(c).await.expect("server starts");
    s.ready().await.expect("model ready");
    s
}

pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

/// Sends a request and checks the status of its response.
pub(crate) async fn send(req: reqwest::RequestBuilder, status: u16) -> reqwest::Response {
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), status);
    res
}

/// Sends a request and reads its JSON body (whatever the status).
pub(crate) async fn send_json(req: reqwest::RequestBuilder) -> Value {
    req.send().await.unwrap().json().await.unwrap()
}

/// The `Location` header of a created job.
pub(crate) fn job_location(res: &reqwest::Response) -> String {
    res.headers()["location"].to_str().unwrap().to_string()
}

/// Opens an event stream at `url` and reads it to the end.
pub(crate) async fn get_events(c: &reqwest::Client, url: String) -> Vec<Sse> {
    read_events(c.get(url).send().await.unwrap()).await
}

pub(crate) fn fixture(path: &str) -> Value {
    let p = format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))).unwrap()
}

/// t1 of the fixtures with one baseline per placeholder.
pub(crate) fn t1_request(fixture_path: &str, method: &str) -> Value {
    let f = fixture(fixture_path);
    let t = &f["template"];
    serde_json::json!({
        "template": t["prompt"],
        "values": t["values"],
        "baselines": t["baselines"],
        "target": t["target"],
        "method": method,
    })
}

/// One server-sent event.
#[derive(Debug, Clone)]
pub(crate) struct Sse {
    pub event: String,
    pub data: Value,
}

/// Reads a whole event stream (it ends after done/failed/cancelled).
pub(crate) async fn read_events(res: reqwest::Response) -> Vec<Sse> {
    use futures::StreamExt;
    assert_eq!(res.status(), 200);
    let ct = res.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let mut stream = res.bytes_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk.expect("stream chunk")));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut event = String::from("message");
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if data.is_empty() {
                continue; // keep-alive comment
            }
            out.push(Sse {
                event,
                data: serde_json::from_str(&data).unwrap_or_else(|e| panic!("{data}: {e}")),
            });
        }
    }
    out
}

/// Checks `got` against `want` within the attribution tolerance (2e-3 + 1e-3 |ref|).
pub(crate) fn assert_close(got: &Value, want: &Value, what: &str) {
    match (got, want) {
        (Value::Array(g), Value::Array(w)) => {
            assert_eq!(g.len(), w.len(), "{what}: length");
            for (i, (g, w)) in g.iter().zip(w).enumerate() {
                assert_close(g, w, &format!("{what}[{i}]"));
            }
        }
        _ => {
            let (g, w) = (got.as_f64().unwrap(), want.as_f64().unwrap());
            assert!((g - w).abs() <= 2e-3 + 1e-3 * w.abs(), "{what}: {g} vs {w}");
        }
    }
}

/// A metric's value from Prometheus text (first line starting with `name`).
pub(crate) async fn metric(base: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Every log line of this test binary.
pub(crate) fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .try_init();
        buf
    })
}

pub(crate) struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
