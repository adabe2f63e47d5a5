//! The remote scoring backend against a loopback inference server that answers in vLLM's,
//! SGLang's, TGI's and the OpenAI echo format and computes its log-probs with the real
//! candle model (tests/remote_peer): every method's numbers through the server equal the
//! in-process ones; retries, alignment errors, an off-by-one server, start-up errors, and a
//! server killed mid-job.

#[path = "common/mod.rs"]
mod common;
#[path = "remote_peer/mod.rs"]
mod remote_peer;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use llm_attr::error::Error;
use llm_attr::model::Model;
use llm_attr::request::{AttributeRequest, Method};
use llm_attr::run::{run, Limits};
use llm_attr::scorer::remote::{Protocol, RemoteModel, RemoteSettings};
use llm_attr::scorer::Scorer;
use remote_peer::{Kind, Peer};
use serde_json::json;

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-gpt2");
const SMOLLM2: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
);

fn tiny() -> Arc<Model> {
    common::shared_model(TINY)
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn settings(peer: &Peer) -> RemoteSettings {
    let mut s = RemoteSettings::new(peer.url());
    s.tokenizer = Some(TINY.into());
    s.timeout = Duration::from_secs(5);
    s.batch = 4;
    s.concurrency = 3;
    s
}

fn request(method: Method) -> AttributeRequest {
    serde_json::from_value(json!({
        "template": "{name} from {country} applied for a job. The manager decided to",
        "values": {"name": "Georg", "country": "Germany"},
        "baselines": {"name": ["John", "Maria"], "country": ["Togo", "Peru"]},
        "target": " reject the application",
        "method": method,
        "n_samples": 6,
    }))
    .unwrap()
}

fn attribute(scorer: &dyn Scorer, method: Method) -> Vec<f64> {
    let r = run(&request(method), scorer, &Limits::default(), &|_| {}).unwrap();
    r.token_attr
        .into_iter()
        .flatten()
        .chain(r.target_log_probs)
        .collect()
}

fn assert_close(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-4, "{what}: {a:?} vs {b:?}");
    }
}

#[test]
fn every_protocol_gives_the_in_process_numbers() {
    let local = tiny();
    let cases = [
        (
            Kind::Vllm,
            Protocol::Vllm,
            &[Method::FeatureAblation, Method::ShapleyValues, Method::KernelShap][..],
        ),
        (
            Kind::Sglang,
            Protocol::Sglang,
            &[Method::ShapleyValueSampling][..],
        ),
        (Kind::Tgi, Protocol::Tgi, &[Method::Lime][..]),
        (Kind::Echo, Protocol::OpenaiEcho, &[Method::FeatureAblation][..]),
    ];
    for (kind, protocol, methods) in cases {
        let peer = Peer::start(kind, local.clone(), any_port());
        let remote = RemoteModel::connect(&settings(&peer)).unwrap();
        assert_eq!(remote.protocol(), protocol);
        for &m in methods {
            let what = format!("{kind:?} {m:?}");
            assert_close(&attribute(&remote, m), &attribute(local.as_ref(), m), &what);
        }
        // A target left out is generated greedily by the server.
        let prompt = local.tokenizer().encode_prompt("The manager decided to").unwrap();
        assert_eq!(
            Scorer::generate(&remote, &prompt, 4).unwrap(),
            Scorer::generate(local.as_ref(), &prompt, 4).unwrap(),
            "{kind:?}"
        );
    }
}

#[test]
fn a_server_that_answers_503_twice_then_200_gives_the_right_result() {
    let peer = Peer::start(Kind::Vllm, tiny(), any_port());
    let remote = RemoteModel::connect(&settings(&peer)).unwrap();
    let before = peer.state.requests.load(Ordering::SeqCst);
    peer.state.fail_next.store(2, Ordering::SeqCst);
    let got = attribute(&remote, Method::FeatureAblation);
    assert_close(
        &got,
        &attribute(tiny().as_ref(), Method::FeatureAblation),
        "after 503s",
    );
    assert!(peer.state.requests.load(Ordering::SeqCst) >= before + 3);
    // Past the time budget the error is a 503 naming the server's status and Retry-After.
    let mut quick = settings(&peer);
    quick.timeout = Duration::from_millis(700);
    let quick = RemoteModel::connect(&quick).unwrap();
    peer.state.fail_next.store(usize::MAX, Ordering::SeqCst);
    let err = run(
        &request(Method::FeatureAblation),
        &quick,
        &Limits::default(),
        &|_| {},
    )
    .unwrap_err();
    match &err {
        Error::Remote {
            unavailable: true,
            retry_after: Some(0),
            message,
        } => assert!(
            message.contains("answered 503") && message.contains("Retry-After"),
            "{message}"
        ),
        e => panic!("{e:?}"),
    }
}

#[test]
fn a_tokenizer_that_disagrees_with_the_server_gives_the_alignment_error() {
    // The server reads text with SmolLM2's tokenizer; llm-attr builds GPT-2 tokens.
    let theirs = llm_attr::model::load::load_tokenizer(SMOLLM2).unwrap();
    let peer = Peer::start_with(Kind::Tgi, tiny(), theirs, any_port());
    let msg = RemoteModel::connect(&settings(&peer))
        .err()
        .expect("refused")
        .to_string();
    assert!(msg.contains("differ from llm-attr's at position"), "{msg}");
    assert!(
        msg.contains("llm-attr built [") && msg.contains("the server scored ["),
        "{msg}"
    );
}

#[test]
fn an_off_by_one_server_is_refused_by_verify_with_naming_the_position() {
    let peer = Peer::start(Kind::Echo, tiny(), any_port());
    let mut s = settings(&peer);
    s.verify_with = Some(TINY.into());
    RemoteModel::connect(&s).expect("a right server passes");
    peer.state.off_by_one.store(true, Ordering::SeqCst);
    let msg = RemoteModel::connect(&s).err().expect("refused").to_string();
    assert!(
        msg.contains("verify-with") && msg.contains("at position"),
        "{msg}"
    );
}

#[test]
fn start_up_errors_are_clear() {
    // Unreachable: fail fast, naming --remote-lazy.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut s = RemoteSettings::new(format!("http://{closed}/v1"));
    s.timeout = Duration::from_secs(1);
    let e = RemoteModel::connect(&s).err().unwrap();
    assert!(
        matches!(
            e,
            Error::Remote {
                unavailable: true,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("--remote-lazy"), "{e}");
    let peer = Peer::start(Kind::Vllm, tiny(), any_port());
    // A model it does not serve: what it serves is listed.
    let mut s = settings(&peer);
    s.model = Some("llama-70b".into());
    let e = RemoteModel::connect(&s).err().unwrap().to_string();
    assert!(e.contains("remote-model") && e.contains("tiny"), "{e}");
    // No prompt log-probs: the protocol tried and how to turn them on.
    peer.state.no_logprobs.store(true, Ordering::SeqCst);
    let e = RemoteModel::connect(&settings(&peer)).err().unwrap().to_string();
    assert!(e.contains("no prompt log-probs") && e.contains("vllm"), "{e}");
    let echo = Peer::start(Kind::Echo, tiny(), any_port());
    echo.state.no_logprobs.store(true, Ordering::SeqCst);
    let e = RemoteModel::connect(&settings(&echo)).err().unwrap().to_string();
    assert!(e.contains("openai-echo") && e.contains("logits_all"), "{e}");
}

#[test]
fn a_target_longer_than_the_servers_context_is_refused_before_sending() {
    let peer = Peer::start_with_context(Kind::Vllm, tiny(), 14, any_port());
    let remote = RemoteModel::connect(&settings(&peer)).unwrap();
    let sent = peer.state.sequences.load(Ordering::SeqCst);
    let e = run(
        &request(Method::FeatureAblation),
        &remote,
        &Limits::default(),
        &|_| {},
    )
    .unwrap_err();
    assert!(
        matches!(&e, Error::TooLarge { field, .. } if field == "target"),
        "{e:?}"
    );
    assert_eq!(peer.state.sequences.load(Ordering::SeqCst), sent);
}

#[test]
fn gradient_methods_are_refused_naming_method() {
    let peer = Peer::start(Kind::Vllm, tiny(), any_port());
    let remote = RemoteModel::connect(&settings(&peer)).unwrap();
    assert!(!remote.info().gradients);
    let e = run(
        &request(Method::IntegratedGradients),
        &remote,
        &Limits::default(),
        &|_| {},
    )
    .unwrap_err();
    assert_eq!(e.field(), Some("method"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_job_fails_the_job_and_a_restart_serves_again() {
    use llm_attr::api::{Config, ModelSource, Server};
    let mut peer = Peer::start(Kind::Vllm, tiny(), any_port());
    let mut s = settings(&peer);
    (s.timeout, s.batch, s.concurrency) = (Duration::from_millis(800), 1, 1);
    let server = Server::start(Config::new(ModelSource::Remote(s))).await.unwrap();
    server.ready().await.unwrap();
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", server.url());
    let info: serde_json::Value = http
        .get(url("/v1/model"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["gradients"], false, "{info}");
    assert_eq!(http.get(url("/ready")).send().await.unwrap().status(), 200);

    peer.state.delay_ms.store(150, Ordering::SeqCst);
    let res = http
        .post(url("/v1/jobs"))
        .json(&request(Method::ShapleyValues))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let job = res.headers()["location"].to_str().unwrap().to_string();
    let state = |j: &serde_json::Value| j["state"].as_str().unwrap_or_default().to_string();
    let mut seen = serde_json::Value::Null;
    for _ in 0..200 {
        seen = http.get(url(&job)).send().await.unwrap().json().await.unwrap();
        if seen["progress"]["done"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(state(&seen), "running", "{seen}");
    let shared = peer.state.clone();
    let addr = peer.addr;
    peer.kill();
    for _ in 0..300 {
        seen = http.get(url(&job)).send().await.unwrap().json().await.unwrap();
        if state(&seen) != "running" && state(&seen) != "queued" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(state(&seen), "failed", "{seen}");
    assert_eq!(seen["error"]["code"], "remote_unavailable", "{seen}");
    assert_eq!(http.get(url("/ready")).send().await.unwrap().status(), 503);

    shared.delay_ms.store(0, Ordering::SeqCst);
    let _peer = Peer::serve(shared, addr);
    let res = http
        .post(url("/v1/attributions"))
        .json(&request(Method::FeatureAblation))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(http.get(url("/ready")).send().await.unwrap().status(), 200);
    server.shutdown().await;
}
