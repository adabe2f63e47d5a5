//! Chat templates given in requests (issue 18, item 1): a template that builds strings of
//! gigabytes gets a 400 naming `chat_template`, quickly, and the server's memory stays where it
//! was, on every route that renders one. Off by default: a server started without
//! `--allow-request-templates` refuses them outright.

mod http_util;

use std::sync::Arc;
use std::time::Instant;

use http_util::*;
use llm_attr::input::chat::sandbox::{Sandbox, SandboxLimits};
use serde_json::{json, Value};

/// Templates that each build gigabytes of text when nothing bounds them: string operators
/// doubling in loops, macros and captures, and the filters and methods that take a size.
const BOMBS: [&str; 24] = [
    // The reproducer, and its neighbours.
    "{% set s = namespace(v=\"x\") %}{% for i in range(64) %}{% set s.v = s.v ~ s.v %}{% endfor %}{{ s.v|length }}",
    "{% set s = namespace(v=\"x\") %}{% for i in range(64) %}{% set s.v = s.v + s.v %}{% endfor %}{{ s.v|length }}",
    "{% set s = namespace(v=\"xx\") %}{% for i in range(64) %}{% set s.v = s.v * 2 %}{% endfor %}{{ s.v|length }}",
    "{% set s = namespace(v=\"x\") %}{% for i in range(64) %}{% set s.v = s.v.replace('x', 'xx') %}{% endfor %}{{ s.v|length }}",
    "{% set s = namespace(v=\"x\") %}{% for i in range(29) %}{% set s.v = s.v ~ s.v %}{% endfor %}{{ s.v|length }}",
    "{% set s = namespace(v=[1]) %}{% for i in range(64) %}{% set s.v = s.v + s.v %}{% endfor %}{{ s.v|length }}",
    "{% set s = namespace(v='x') %}{% for i in range(64) %}{% set c %}{{ s.v }}{{ s.v }}{% endset %}{% set s.v = c %}{% endfor %}{{ s.v|length }}",
    "{% macro f(s, n) %}{% if n %}{{ f(s ~ s, n - 1) }}{% else %}{{ s|length }}{% endif %}{% endmacro %}{{ f('x', 64) }}",
    "{% set s = namespace(v=\"x\") %}{% for i in range(64) %}{% set s.v = [s.v, s.v]|join %}{% endfor %}{{ s.v|length }}",
    "{% set s = namespace(v=\"x\") %}{% for i in range(64) %}{% set s.v = '%s%s'|format(s.v, s.v) %}{% endfor %}{{ s.v|length }}",
    "{% set s = namespace(v=[1]) %}{% for i in range(64) %}{% set s.v = [s.v, s.v] %}{% endfor %}{{ s.v|tojson|length }}",
    "{% set s = namespace(v='a b') %}{% for i in range(64) %}{% set s.v = s.v|urlencode ~ s.v %}{% endfor %}{{ s.v|length }}",
    // One call that asks for a size.
    "{{ messages|tojson(indent=100000000) }}",
    "{{ '{:>1000000000}'.format('x') }}",
    "{{ 'x\ny'|indent(1000000000) }}",
    "{{ 'x'|center(1000000000) }}",
    "{{ 'x'.ljust(1000000000) }}",
    "{{ 'x'.rjust(1000000000) }}",
    "{{ 'x' * 100000000 }}",
    "{{ range(100000)|batch(1000000000, 'x')|list|length }}",
    "{{ range(100000)|join('x' * 100000) }}",
    "{{ strftime_now('%Y' * 30000000) }}",
    // Output alone: text written in nested loops.
    "{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx{% endfor %}{% endfor %}",
    "{% for m in messages %}{% for i in range(100000) %}{{ m.content * 1000 }}{% endfor %}{% endfor %}",
];

fn chat(template: &str) -> Value {
    json!({
        "messages": [{"role": "user", "content": "{name} is a"}],
        "values": {"name": "Bob"},
        "target": " doctor",
        "method": "fa",
        "chat_template": template,
    })
}

/// This process's resident memory, in MB (the server runs in it).
fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn with_request_templates() -> llm_attr::api::Server {
    start(TINY, |c| {
        let sandbox = Sandbox::new(env!("CARGO_BIN_EXE_llm-attr"), SandboxLimits::default());
        c.limits.request_templates = Some(Arc::new(sandbox));
    })
    .await
}

/// Each bomb gets 400 naming `chat_template`, well inside the sandbox's 2 s, and the server's
/// memory stays within 100 MB of where it started. Unbounded, the first one took 20 GB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_bombs_get_400_naming_chat_template_and_leave_memory_alone() {
    let s = with_request_templates().await;
    let c = client();
    let url = format!("{}/v1/attributions", s.url());
    // A good request first, so that the worker and the allocator are warm.
    send(
        c.post(&url)
            .json(&chat("{% for m in messages %}{{ m.content }}{% endfor %}")),
        200,
    )
    .await;
    let before = rss_mb();
    let mut slowest = 0.0f64;
    for bomb in BOMBS {
        let started = Instant::now();
        let res = c.post(&url).json(&chat(bomb)).send().await.unwrap();
        let seconds = started.elapsed().as_secs_f64();
        slowest = slowest.max(seconds);
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap();
        assert_eq!(status, 400, "{bomb}: {body}");
        assert_eq!(body["error"]["field"], "chat_template", "{bomb}: {body}");
        // The sandbox's own time limit is 2 s; a bomb is caught long before it.
        assert!(seconds < 2.5, "{bomb}: {seconds:.2} s");
    }
    let grown = rss_mb() - before;
    println!(
        "{} bombs: slowest answer {slowest:.3} s, RSS grew {grown:.1} MB",
        BOMBS.len()
    );
    assert!(grown < 100.0, "RSS grew {grown:.0} MB");
    // And the server still answers, with a fresh worker.
    send(
        c.post(&url)
            .json(&chat("{% for m in messages %}{{ m.content }}{% endfor %}")),
        200,
    )
    .await;
    s.shutdown().await;
}

/// The plan, jobs and audits render the same way, and are refused the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_that_renders_a_template_is_bounded() {
    let s = with_request_templates().await;
    let c = client();
    let bomb = BOMBS[0];
    let mut audit = chat(bomb);
    audit["targets"] = json!([" doctor", " nurse"]);
    audit["sweep"] = json!({"name": ["Bob", "Alice"]});
    audit.as_object_mut().unwrap().remove("target");
    for (path, body) in [
        ("/v1/plan", chat(bomb)),
        ("/v1/jobs", chat(bomb)),
        ("/v1/audits", audit),
    ] {
        let res = c
            .post(format!("{}{path}", s.url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        if status == 202 {
            // A job that takes the body first fails with the same error.
            let v: Value = serde_json::from_str(&text).unwrap();
            let id = v["id"].as_str().unwrap().to_string();
            let done = wait_job(&c, &format!("{}{path}/{id}", s.url())).await;
            assert_eq!(done["state"], "failed", "{path}: {done}");
            assert_eq!(done["error"]["field"], "chat_template", "{path}: {done}");
        } else {
            assert_eq!(status, 400, "{path}: {text}");
            assert!(text.contains("chat_template"), "{path}: {text}");
        }
    }
    s.shutdown().await;
}

/// A job's final state (polled until it leaves queued and running).
async fn wait_job(c: &reqwest::Client, url: &str) -> Value {
    loop {
        let v: Value = c.get(url).send().await.unwrap().json().await.unwrap();
        if !matches!(v["state"].as_str(), Some("queued" | "running")) {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Without `--allow-request-templates`, a request's template is refused before anything
/// renders; the model's own template still serves chat input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_templates_are_off_by_default() {
    let s = start(TINY, |_| {}).await;
    let c = client();
    let body = send_json(
        c.post(format!("{}/v1/attributions", s.url()))
            .json(&chat("{% for m in messages %}{{ m.content }}{% endfor %}")),
    )
    .await;
    assert_eq!(body["error"]["field"], "chat_template", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--allow-request-templates"),
        "{body}"
    );
    s.shutdown().await;
}
