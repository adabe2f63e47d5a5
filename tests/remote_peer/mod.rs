//! A loopback inference server for the remote-backend tests: it answers in vLLM's, SGLang's,
//! TGI's or the OpenAI echo format (tests/fixtures/remote/README.md says where each comes
//! from), computing every log-prob with the real local candle model (llm-attr's own
//! `Model::score`), so agreement tests compare real numbers. Faults on demand: 503s, delays,
//! answers without prompt log-probs, and llama-cpp-python's off-by-one echo.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use llm_attr::model::{Model, ScoreItem, Tokenizer};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    Vllm,
    Sglang,
    Tgi,
    Echo,
}

pub(crate) struct PeerState {
    pub model: Arc<Model>,
    /// The tokenizer the peer reads text with (a text protocol's alignment is checked
    /// against it).
    pub tokenizer: Tokenizer,
    pub kind: Kind,
    /// Answer this many scoring requests with 503 first.
    pub fail_next: AtomicUsize,
    /// Milliseconds to sleep before each scoring answer.
    pub delay_ms: AtomicU64,
    /// Read each token's log-prob from the distribution after it (llama-cpp-python's echo).
    pub off_by_one: AtomicBool,
    /// Answer without prompt log-probs.
    pub no_logprobs: AtomicBool,
    pub context: usize,
    /// Scoring requests answered (503s included) and sequences scored.
    pub requests: AtomicUsize,
    pub sequences: AtomicUsize,
}

impl PeerState {
    fn new(kind: Kind, model: Arc<Model>, tokenizer: Tokenizer, context: usize) -> Self {
        PeerState {
            model,
            tokenizer,
            kind,
            fail_next: AtomicUsize::new(0),
            delay_ms: AtomicU64::new(0),
            off_by_one: AtomicBool::new(false),
            no_logprobs: AtomicBool::new(false),
            context,
            requests: AtomicUsize::new(0),
            sequences: AtomicUsize::new(0),
        }
    }
}

pub(crate) struct Peer {
    pub state: Arc<PeerState>,
    pub addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Peer {
    /// Starts a peer of `kind` serving `model` on `addr` (port 0: any free one).
    pub(crate) fn start(kind: Kind, model: Arc<Model>, addr: SocketAddr) -> Peer {
        let tokenizer = own_tokenizer(&model);
        Peer::start_with(kind, model, tokenizer, addr)
    }

    /// A peer whose context (`max_model_len`) is `context` tokens.
    pub(crate) fn start_with_context(
        kind: Kind,
        model: Arc<Model>,
        context: usize,
        addr: SocketAddr,
    ) -> Peer {
        let tokenizer = own_tokenizer(&model);
        Peer::serve(Arc::new(PeerState::new(kind, model, tokenizer, context)), addr)
    }

    /// A peer that reads text with `tokenizer` (not the model's own).
    pub(crate) fn start_with(kind: Kind, model: Arc<Model>, tokenizer: Tokenizer, addr: SocketAddr) -> Peer {
        Peer::serve(Arc::new(PeerState::new(kind, model, tokenizer, 1024)), addr)
    }

    /// Serves `state` (a restart keeps its settings and counts).
    pub(crate) fn serve(state: Arc<PeerState>, addr: SocketAddr) -> Peer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        // Bound with SO_REUSEADDR, so a restart gets the same port back at once.
        let listener = {
            let _in_runtime = runtime.enter();
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_reuseaddr(true).unwrap();
            socket.bind(addr).unwrap();
            socket.listen(128).unwrap()
        };
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/v1/models", get(models))
            .route("/info", get(info))
            .route("/get_model_info", get(sglang_info))
            .route("/v1/completions", post(completions))
            .route("/generate", post(generate))
            .with_state(state.clone());
        runtime.spawn(async move { axum::serve(listener, app).await });
        Peer {
            state,
            addr,
            runtime: Some(runtime),
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Stops at once: open connections are dropped mid-answer, as a killed server's are.
    pub(crate) fn kill(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn models(State(s): State<Arc<PeerState>>) -> Response {
    let owner = match s.kind {
        Kind::Vllm => "vllm",
        Kind::Sglang => "sglang",
        Kind::Tgi => return StatusCode::NOT_FOUND.into_response(),
        Kind::Echo => "llama-cpp",
    };
    let root = "tests/fixtures/tiny-gpt2";
    Json(json!({"object": "list", "data": [
        {"id": "tiny", "object": "model", "owned_by": owner, "root": root, "max_model_len": s.context}
    ]}))
    .into_response()
}

async fn info(State(s): State<Arc<PeerState>>) -> Response {
    match s.kind {
        Kind::Tgi => Json(json!({"model_id": "tiny", "model_sha": "abc123", "max_total_tokens": s.context, "version": "3.0.1"})).into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn sglang_info(State(s): State<Arc<PeerState>>) -> Response {
    match s.kind {
        Kind::Sglang => Json(json!({"model_path": "tiny", "is_generation": true})).into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The 503 and the delay every scoring answer may get first.
async fn fault(s: &PeerState) -> Option<Response> {
    s.requests.fetch_add(1, Ordering::SeqCst);
    let delay = s.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let failing = s
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    failing.then(|| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "0")],
            "overloaded",
        )
            .into_response()
    })
}

/// Per position of `seq`, its log-prob given what precedes it (the first: None); off by
/// one, given what precedes it and itself.
fn logprobs(s: &PeerState, seq: &[u32]) -> Vec<Option<f64>> {
    s.sequences.fetch_add(1, Ordering::SeqCst);
    if !s.off_by_one.load(Ordering::SeqCst) {
        let item = ScoreItem {
            prompt: seq[..1].to_vec(),
            target: seq[1..].to_vec(),
        };
        let lp = s.model.score(&[item]).unwrap().remove(0);
        return std::iter::once(None)
            .chain(lp.into_iter().map(|x| Some(x as f64)))
            .collect();
    }
    let items: Vec<ScoreItem> = (1..seq.len())
        .map(|i| ScoreItem {
            prompt: seq[..=i].to_vec(),
            target: vec![seq[i]],
        })
        .collect();
    let lp = s.model.score(&items).unwrap();
    std::iter::once(None)
        .chain(lp.into_iter().map(|x| Some(x[0] as f64)))
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

async fn completions(State(s): State<Arc<PeerState>>, Json(body): Json<Value>) -> Response {
    if let Some(r) = fault(&s).await {
        return r;
    }
    tokio::task::spawn_blocking(move || match s.kind {
        Kind::Vllm => vllm(&s, &body),
        _ => echo(&s, &body),
    })
    .await
    .unwrap()
}

fn vllm(s: &PeerState, body: &Value) -> Response {
    let n = body["max_tokens"].as_u64().unwrap() as usize;
    if n > 1 {
        let gen = s.model.generate(&ids(&body["prompt"]), n).unwrap();
        let tokens: Vec<String> = gen.iter().map(|t| format!("token_id:{t}")).collect();
        return Json(json!({"choices": [{"index": 0, "text": "", "logprobs": {"tokens": tokens}}]}))
            .into_response();
    }
    let choices: Vec<Value> = body["prompt"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let seq = ids(p);
            let prompt_logprobs: Value = if s.no_logprobs.load(Ordering::SeqCst) {
                Value::Null
            } else {
                seq.iter()
                    .zip(logprobs(s, &seq))
                    .map(|(t, lp)| {
                        lp.map_or(Value::Null, |x| json!({t.to_string(): {"logprob": x, "rank": 1}}))
                    })
                    .collect()
            };
            json!({"index": i, "text": "", "logprobs": null, "prompt_logprobs": prompt_logprobs})
        })
        .collect();
    Json(json!({"object": "text_completion", "choices": choices})).into_response()
}

fn echo(s: &PeerState, body: &Value) -> Response {
    let text = body["prompt"].as_str().unwrap();
    let seq = s.tokenizer.encode_prompt(text).unwrap();
    let n = body["max_tokens"].as_u64().unwrap() as usize;
    if body.get("echo").is_none() {
        let gen = s.model.generate(&seq, n).unwrap();
        return Json(json!({"choices": [{"index": 0, "text": s.tokenizer.decode(&gen).unwrap()}]}))
            .into_response();
    }
    if s.no_logprobs.load(Ordering::SeqCst) {
        return Json(json!({"choices": [{"index": 0, "text": text, "logprobs": null}]})).into_response();
    }
    let tokens: Vec<String> = seq.iter().map(|&t| s.tokenizer.decode(&[t]).unwrap()).collect();
    let lps: Vec<Value> = logprobs(s, &seq).into_iter().map(|x| json!(x)).collect();
    Json(json!({"choices": [{"index": 0, "text": text, "logprobs": {"tokens": tokens, "token_logprobs": lps}}]}))
        .into_response()
}

async fn generate(State(s): State<Arc<PeerState>>, Json(body): Json<Value>) -> Response {
    if let Some(r) = fault(&s).await {
        return r;
    }
    tokio::task::spawn_blocking(move || match s.kind {
        Kind::Sglang => sglang(&s, &body),
        _ => tgi(&s, &body),
    })
    .await
    .unwrap()
}

fn sglang(s: &PeerState, body: &Value) -> Response {
    let n = body["sampling_params"]["max_new_tokens"].as_u64().unwrap() as usize;
    if body["input_ids"][0].is_u64() {
        let gen = s.model.generate(&ids(&body["input_ids"]), n).unwrap();
        let out: Vec<Value> = gen.iter().map(|t| json!([-0.1, t, null])).collect();
        return Json(json!({"text": "", "meta_info": {"output_token_logprobs": out}})).into_response();
    }
    let answers: Vec<Value> = body["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .zip(body["logprob_start_len"].as_array().unwrap())
        .map(|(p, start)| {
            let (seq, start) = (ids(p), start.as_u64().unwrap() as usize);
            let lp = logprobs(s, &seq);
            let entries: Vec<Value> = (start..seq.len())
                .map(|i| json!([if i == start { None } else { lp[i] }, seq[i], null]))
                .collect();
            json!({"text": "", "meta_info": {"input_token_logprobs": entries}})
        })
        .collect();
    Json(Value::Array(answers)).into_response()
}

fn tgi(s: &PeerState, body: &Value) -> Response {
    let seq = s
        .tokenizer
        .encode_prompt(body["inputs"].as_str().unwrap())
        .unwrap();
    let params = &body["parameters"];
    if params.get("decoder_input_details").is_none() {
        let n = params["max_new_tokens"].as_u64().unwrap() as usize;
        let gen = s.model.generate(&seq, n).unwrap();
        let tokens: Vec<Value> = gen
            .iter()
            .map(|t| json!({"id": t, "text": "", "logprob": -0.1, "special": false}))
            .collect();
        return Json(json!({"generated_text": "", "details": {"tokens": tokens}})).into_response();
    }
    let prefill: Vec<Value> = seq
        .iter()
        .zip(logprobs(s, &seq))
        .map(|(t, lp)| json!({"id": t, "text": s.tokenizer.decode(&[*t]).unwrap(), "logprob": lp}))
        .collect();
    Json(json!({"generated_text": "", "details": {"finish_reason": "length", "prefill": prefill, "tokens": []}}))
        .into_response()
}

/// A copy of the model's tokenizer.
fn own_tokenizer(model: &Model) -> Tokenizer {
    let t = model.tokenizer();
    Tokenizer::new(t.inner().clone(), t.eos_ids().to_vec())
}
