//! What a hostile or careless client tries (issue 13): the service answers each with a clean
//! JSON error, keeps its resources bounded, and serves everyone else.

mod http_util;

use std::io::{Read, Write};
use std::time::Duration;

use http_util::*;
use serde_json::{json, Value};

const KEY: &str = "k3y-for-tests";

/// Status and JSON error code of a response.
async fn code(req: reqwest::RequestBuilder) -> (u16, String) {
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    (status, body["error"]["code"].as_str().unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_bodies_need_the_json_content_type_and_unique_keys() {
    let s = start(TINY, |_| {}).await;
    let c = client();
    let url = format!("{}/v1/tokenize", s.url());
    let body = r#"{"text": "hi"}"#;
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut req = c.post(&url).body(body);
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        assert_eq!(code(req).await, (415, "unsupported_media_type".into()), "{ct:?}");
    }
    for ct in [
        "application/json",
        "application/json; charset=utf-8",
        "application/vnd.x+json",
    ] {
        send(c.post(&url).header("content-type", ct).body(body), 200).await;
    }
    // Duplicate keys: rejected as the CLI rejects them, at any depth.
    let attr = format!("{}/v1/attributions", s.url());
    for (body, field) in [
        (
            r#"{"template": "{a} b", "values": {"a": "x", "a": "y"}, "target": " c"}"#,
            "values",
        ),
        (
            r#"{"template": "{a} b", "template": "{a} c", "values": {"a": "x"}}"#,
            "template",
        ),
        (r#"{"text": "a", "text": "b"}"#, "text"),
    ] {
        let res = c
            .post(&attr)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{body}");
        let e: Value = res.json().await.unwrap();
        assert_eq!(e["error"]["code"], "invalid_request", "{e}");
        let got = e["error"]["field"].as_str().unwrap();
        assert!(
            got == field || got.starts_with(&format!("{field}.")),
            "{body}: {e}"
        );
        assert!(
            e["error"]["message"].as_str().unwrap().contains("duplicate"),
            "{e}"
        );
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_only_loopback_and_listed_hosts_are_answered() {
    let s = start(TINY, |c| c.allowed_hosts = vec!["attr.example.org".into()]).await;
    let c = client();
    let get = |path: &str, host: &str| c.get(format!("{}{path}", s.url())).header("host", host);
    for path in ["/v1/templates", "/", "/metrics", "/v1/model"] {
        assert_eq!(
            code(get(path, "evil.example")).await,
            (403, "host_not_allowed".into()),
            "{path}"
        );
        for host in ["localhost:8080", "127.0.0.1", "[::1]:1", "attr.example.org:8080"] {
            assert_eq!(
                get(path, host).send().await.unwrap().status(),
                200,
                "{path} {host}"
            );
        }
    }
    // Probes answer any host.
    for path in ["/health", "/ready"] {
        send(get(path, "10.0.0.7:8080"), 200).await;
    }
    s.shutdown().await;

    // With a key the host is not checked, but the key is, on /metrics too.
    let s = start(TINY, |c| c.api_key = Some(KEY.into())).await;
    let url = |p: &str| format!("{}{p}", s.url());
    assert_eq!(code(c.get(url("/metrics"))).await, (401, "unauthorized".into()));
    for auth in [
        format!("Bearer {KEY}"),
        format!("bearer {KEY}"),
        format!("BEARER  {KEY}"),
    ] {
        let req = c
            .get(url("/metrics"))
            .header("host", "evil.example")
            .header("authorization", auth);
        send(req, 200).await;
    }
    send(
        c.get(url("/v1/model"))
            .header("authorization", format!("bEaReR {KEY}")),
        200,
    )
    .await;
    s.shutdown().await;
    let s = start(TINY, |c| {
        c.api_key = Some(KEY.into());
        c.public_metrics = true;
    })
    .await;
    send(c.get(format!("{}/metrics", s.url())), 200).await;
    assert_eq!(code(c.get(format!("{}/v1/model", s.url()))).await.0, 401);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_in_query_strings_never_reach_the_log() {
    let logs = logs();
    let s = start(TINY, |c| c.api_key = Some(KEY.into())).await;
    let c = client();
    for path in [
        "/health?api_key=SECRET-1",
        "/v1/model?key=SECRET-2",
        "/metrics?token=SECRET-3",
    ] {
        c.get(format!("{}{path}", s.url())).send().await.unwrap();
    }
    s.shutdown().await;
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(text.contains("/v1/model"), "requests are logged: {text}");
    assert!(!text.contains("SECRET"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_methods_share_one_metric_label_and_405s_are_json() {
    let s = start(TINY, |_| {}).await;
    let c = client();
    for i in 0..20 {
        let m = reqwest::Method::from_bytes(format!("ODD{i}").as_bytes()).unwrap();
        c.request(m, format!("{}/health", s.url())).send().await.unwrap();
    }
    let text = c
        .get(format!("{}/metrics", s.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("ODD"), "{text}");
    assert!(
        text.contains("method=\"other\",route=\"/health\",status=\"405\"} 20"),
        "{text}"
    );

    for (method, path) in [
        (reqwest::Method::GET, "/v1/attributions"),
        (reqwest::Method::DELETE, "/health"),
        (reqwest::Method::PUT, "/v1/jobs/abc"),
        (reqwest::Method::POST, "/metrics"),
    ] {
        let res = c
            .request(method.clone(), format!("{}{path}", s.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 405, "{method} {path}");
        assert!(res.headers().contains_key("allow"), "{method} {path}");
        let e: Value = res.json().await.unwrap();
        assert_eq!(e["error"]["code"], "method_not_allowed", "{method} {path}");
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_requests_are_refused_at_once_when_every_run_slot_is_busy() {
    let s = start(TINY, |c| c.max_concurrent_jobs = 1).await;
    let c = client();
    let url = format!("{}/v1/attributions", s.url());
    let req = t1_request("tiny-gpt2/captum_t1.json", "feature_ablation");
    let held = s.state().run_slots.clone().try_acquire_owned().unwrap();
    let res = c.post(&url).json(&req).send().await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    let e: Value = res.json().await.unwrap();
    assert_eq!(e["error"]["code"], "overloaded", "{e}");
    // A job waits for the slot instead.
    let job = send(c.post(format!("{}/v1/jobs", s.url())).json(&req), 202).await;
    let loc = format!("{}{}", s.url(), job_location(&job));
    let j: Value = c.get(&loc).send().await.unwrap().json().await.unwrap();
    assert_eq!(j["state"], "queued");
    drop(held);
    let events = get_events(&c, format!("{loc}/events")).await;
    assert_eq!(events.last().unwrap().event, "done");
    send(c.post(&url).json(&req), 200).await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_static_dir_serves_nothing_outside_it_and_the_model_has_no_path() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "SECRET").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("index.html"), "<p>page</p>").unwrap();
    std::fs::write(d.join("app.js"), "let x;").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.txt"), d.join("leak.txt")).unwrap();
    std::os::unix::fs::symlink(outside.path(), d.join("out")).unwrap();
    std::os::unix::fs::symlink(d.join("app.js"), d.join("alias.js")).unwrap();
    let s = start(TINY, |c| c.static_dir = Some(d.to_path_buf())).await;
    let c = client();
    let get = |p: &str| c.get(format!("{}{p}", s.url())).send();
    for p in ["/", "/app.js", "/alias.js"] {
        let res = get(p).await.unwrap();
        assert_eq!(res.status(), 200, "{p}");
        assert!(!res.text().await.unwrap().contains("SECRET"));
    }
    for p in [
        "/leak.txt",
        "/out/secret.txt",
        "/out/",
        "/../secret.txt",
        "/%2e%2e/secret.txt",
    ] {
        let res = get(p).await.unwrap();
        assert_eq!(res.status(), 404, "{p}");
        assert!(!res.text().await.unwrap().contains("SECRET"), "{p}");
    }

    // Responses name the model without the server's paths.
    let info: Value = get("/v1/model").await.unwrap().json().await.unwrap();
    assert_eq!(info["spec"], "tiny-gpt2");
    let r = send_json(
        c.post(format!("{}/v1/attributions", s.url()))
            .json(&t1_request("tiny-gpt2/captum_t1.json", "feature_ablation")),
    )
    .await;
    assert_eq!(r["model"], "tiny-gpt2", "{r}");
    s.shutdown().await;
}

/// Reads until the server closes the connection; fails if it stays open for a minute.
fn closed_by_server(mut sock: std::net::TcpStream) -> String {
    sock.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut got = Vec::new();
    match sock.read_to_end(&mut got) {
        Ok(_) => String::from_utf8_lossy(&got).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            String::from_utf8_lossy(&got).into_owned()
        }
        Err(e) => panic!("the server kept the connection open: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_slow_and_idle_connections_are_closed_but_work_in_progress_is_not() {
    let s = start(TINY, |c| {
        c.timeouts.header = Duration::from_millis(300);
        c.timeouts.keep_alive = Duration::from_millis(300);
        c.max_concurrent_jobs = 1;
    })
    .await;
    let addr = s.addr();
    let silent = tokio::task::spawn_blocking(move || {
        // Connects and says nothing.
        let a = std::net::TcpStream::connect(addr).unwrap();
        // Starts a request and never finishes its headers.
        let mut b = std::net::TcpStream::connect(addr).unwrap();
        b.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
            .unwrap();
        // A whole keep-alive request, then idles.
        let mut k = std::net::TcpStream::connect(addr).unwrap();
        k.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        (closed_by_server(a), closed_by_server(b), closed_by_server(k))
    });
    let (a, b, k) = silent.await.unwrap();
    assert_eq!((a.as_str(), b.as_str()), ("", ""));
    assert!(k.starts_with("HTTP/1.1 200"), "{k}");

    // A job's event stream waits (silently, longer than both timeouts) for a busy run slot,
    // then gets its result.
    let c = client();
    let held = s.state().run_slots.clone().try_acquire_owned().unwrap();
    let req = t1_request("tiny-gpt2/captum_t1.json", "feature_ablation");
    let job = send(c.post(format!("{}/v1/jobs", s.url())).json(&req), 202).await;
    let events = c
        .get(format!("{}{}/events", s.url(), job_location(&job)))
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(held);
    let events = read_events(events).await;
    assert_eq!(events.last().unwrap().event, "done");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_long_target_is_blamed_on_target() {
    let s = start(TINY, |c| c.limits.max_tokens_per_sequence = 40).await;
    let c = client();
    let mut req = t1_request("tiny-gpt2/captum_t1.json", "feature_ablation");
    req["target"] = json!(" and".repeat(60));
    let e = send_json(c.post(format!("{}/v1/attributions", s.url())).json(&req)).await;
    assert_eq!(e["error"]["code"], "limit_exceeded", "{e}");
    assert_eq!(e["error"]["field"], "target", "{e}");
    s.shutdown().await;
}

/// Waits (up to a minute) until no attribute request runs.
async fn until_no_run_is_active(s: &llm_attr::api::Server) {
    for _ in 0..6000 {
        if s.state().active_runs.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("a run is still active a minute after its client left");
}

async fn until_a_run_is_active(s: &llm_attr::api::Server) {
    for _ in 0..6000 {
        if s.state().active_runs.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the run never started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departed_client_or_a_delete_ends_its_run_as_cancelled() {
    let s = start(TINY, |_| {}).await;
    let c = client();
    // ~19,000 distinct sequences of ~120 tokens: long enough to be cut short.
    let slow = json!({
        "text": " a b c d e f g h i j k l m n o p q r s t",
        "target": " and".repeat(100),
        "method": "shapley_value_sampling",
        "n_samples": 900,
        // Without it a prompt with every token removed is empty: a job is refused up front.
        "baseline_token": " z",
    });
    let url = format!("{}/v1/attributions", s.url());
    let request = tokio::spawn({
        let (c, slow) = (c.clone(), slow.clone());
        async move { c.post(url).json(&slow).send().await }
    });
    until_a_run_is_active(&s).await;
    request.abort();
    until_no_run_is_active(&s).await;

    let job = send(c.post(format!("{}/v1/jobs", s.url())).json(&slow), 202).await;
    until_a_run_is_active(&s).await;
    let j: Value = c
        .delete(format!("{}{}", s.url(), job_location(&job)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(j["state"], "cancelled");
    until_no_run_is_active(&s).await;

    let cancelled = "llm_attr_attributions_total{method=\"shapley_value_sampling\",outcome=\"cancelled\"}";
    assert_eq!(metric(&s.url(), cancelled).await, 2.0);
    let text = reqwest::get(format!("{}/metrics", s.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("outcome=\"limit_exceeded\""), "{text}");
    assert!(
        !text.contains("outcome=\"ok\""),
        "both runs were cut short: {text}"
    );
    s.shutdown().await;
}
