//! A fake Hugging Face hub on 127.0.0.1 for the `hf:` loading tests: it answers
//! `/{repo}/resolve/{revision}/{file}` like the real hub (ETag / X-Linked-Etag / X-Repo-Commit,
//! range requests, LFS files redirected to a CDN URL, renamed repos redirected with a relative
//! Location, `X-Error-Code` on 404s).
#![allow(dead_code)]

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, Response, StatusCode, Uri};
use axum::Router;
use candle_core::{Device, Tensor};
use llm_attr::model::load::HubOptions;
use llm_attr::model::{Model, ScoreItem};

pub(crate) const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

pub(crate) fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt2")
}

/// 64 hex digits standing in for the sha256 the hub uses as an LFS file's ETag.
fn fake_sha(data: &[u8]) -> String {
    (0..4u64)
        .map(|salt| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (salt, data).hash(&mut h);
            format!("{:016x}", h.finish())
        })
        .collect()
}

#[derive(Default)]
struct HubState {
    /// repo -> file -> content
    repos: HashMap<String, HashMap<String, Arc<Vec<u8>>>>,
    /// old repo name -> new name (the hub answers 307 with a relative Location)
    renamed: HashMap<String, String>,
    /// LFS blobs by sha
    cdn: HashMap<String, Arc<Vec<u8>>>,
    /// every request: "GET /path range"
    log: Mutex<Vec<String>>,
    base: String,
}

pub(crate) struct FakeHub {
    state: Arc<HubState>,
    pub url: String,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl FakeHub {
    pub(crate) fn requests(&self) -> Vec<String> {
        self.state.log.lock().unwrap().clone()
    }
}

pub(crate) fn tiny_files() -> HashMap<String, Arc<Vec<u8>>> {
    ["config.json", "tokenizer.json", "model.safetensors"]
        .iter()
        .map(|f| {
            (
                f.to_string(),
                Arc::new(std::fs::read(fixtures().join(f)).unwrap()),
            )
        })
        .collect()
}

/// The tiny-gpt2 weights split into two shards with an index, as large models are stored.
fn sharded_files() -> HashMap<String, Arc<Vec<u8>>> {
    sharded(tiny_files())
}

/// The files of a model directory (those that exist of the usual names).
pub(crate) fn dir_files(dir: &Path) -> HashMap<String, Arc<Vec<u8>>> {
    [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "model.safetensors",
    ]
    .iter()
    .filter_map(|f| Some((f.to_string(), Arc::new(std::fs::read(dir.join(f)).ok()?))))
    .collect()
}

/// `files` with `model.safetensors` split into two shards (the embeddings in the second) and
/// a `model.safetensors.index.json`.
pub(crate) fn sharded(mut files: HashMap<String, Arc<Vec<u8>>>) -> HashMap<String, Arc<Vec<u8>>> {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("model.safetensors");
    std::fs::write(&whole, files.remove("model.safetensors").unwrap().as_slice()).unwrap();
    let tensors = candle_core::safetensors::load(&whole, &Device::Cpu).unwrap();
    let mut shards: [HashMap<String, Tensor>; 2] = Default::default();
    let mut weight_map = serde_json::Map::new();
    for (name, t) in tensors {
        let k = usize::from(name.contains("wte") || name.contains("embed"));
        let file = format!("model-{:05}-of-00002.safetensors", k + 1);
        weight_map.insert(name.clone(), serde_json::Value::String(file));
        shards[k].insert(name, t);
    }
    for (k, shard) in shards.iter().enumerate() {
        let name = format!("model-{:05}-of-00002.safetensors", k + 1);
        let path = dir.path().join(&name);
        candle_core::safetensors::save(shard, &path).unwrap();
        files.insert(name, Arc::new(std::fs::read(&path).unwrap()));
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    files.insert(
        "model.safetensors.index.json".into(),
        Arc::new(serde_json::to_vec(&index).unwrap()),
    );
    files
}

/// Weights plus `vocab.json` + `merges.txt` instead of `tokenizer.json`, as older repos ship.
fn legacy_files() -> HashMap<String, Arc<Vec<u8>>> {
    let mut files = tiny_files();
    let tok: serde_json::Value = serde_json::from_slice(&files.remove("tokenizer.json").unwrap()).unwrap();
    let mut merges = String::from("#version: 0.2\n");
    for m in tok["model"]["merges"].as_array().unwrap() {
        merges += &format!("{} {}\n", m[0].as_str().unwrap(), m[1].as_str().unwrap());
    }
    files.insert("merges.txt".into(), Arc::new(merges.into_bytes()));
    files.insert(
        "vocab.json".into(),
        Arc::new(tok["model"]["vocab"].to_string().into_bytes()),
    );
    files
}

pub(crate) fn start_hub() -> FakeHub {
    start_hub_with(Vec::new())
}

/// A hub repo: its name and its files by path.
pub(crate) type HubRepo = (String, HashMap<String, Arc<Vec<u8>>>);

/// The hub with more repos beside the tiny-gpt2 ones.
pub(crate) fn start_hub_with(extra: Vec<HubRepo>) -> FakeHub {
    // hf-hub's client takes its proxy from the environment, and a proxy would carry the
    // 127.0.0.1 requests elsewhere (std serialises environment access, so this is safe).
    static NO_PROXY: std::sync::Once = std::sync::Once::new();
    NO_PROXY.call_once(|| {
        for v in [
            "HTTP_PROXY",
            "http_proxy",
            "HTTPS_PROXY",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
        ] {
            std::env::remove_var(v);
        }
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut state = HubState {
        base: url.clone(),
        ..Default::default()
    };
    state.repos.insert("tiny/gpt2".into(), tiny_files());
    state.repos.insert("tiny/sharded".into(), sharded_files());
    state.repos.insert("tiny/legacy".into(), legacy_files());
    state.repos.extend(extra);
    state
        .renamed
        .insert("old-org/tiny-gpt2".into(), "tiny/gpt2".into());
    for files in state.repos.values() {
        for (name, data) in files {
            if name.ends_with(".safetensors") {
                state.cdn.insert(fake_sha(data), data.clone());
            }
        }
    }
    let state = Arc::new(state);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let app = Router::new().fallback(handle).with_state(state.clone());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    rx.await.ok();
                })
                .await
                .unwrap();
        });
    });
    FakeHub {
        state,
        url,
        _shutdown: tx,
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("X-Error-Code", code)
        .header("X-Error-Message", message)
        .body(Body::from(format!("{{\"error\":\"{message}\"}}")))
        .unwrap()
}

/// 206 with Content-Range when a `Range: bytes=a-[b]` header is present, else 200.
fn ranged(headers: &HeaderMap, data: &[u8], mut resp: axum::http::response::Builder) -> Response<Body> {
    let size = data.len();
    resp = resp.header(header::ACCEPT_RANGES, "bytes");
    let range = headers
        .get(header::RANGE)
        .and_then(|r| r.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'));
    match range {
        Some((a, b)) => {
            let start: usize = a.parse().unwrap_or(0);
            let end = b.parse::<usize>().map_or(size - 1, |e| e.min(size - 1));
            if start > end {
                return Response::builder()
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                    .body(Body::empty())
                    .unwrap();
            }
            resp.status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"))
                .body(Body::from(data[start..=end].to_vec()))
                .unwrap()
        }
        None => resp
            .status(StatusCode::OK)
            .body(Body::from(data.to_vec()))
            .unwrap(),
    }
}

async fn handle(State(hub): State<Arc<HubState>>, uri: Uri, headers: HeaderMap) -> Response<Body> {
    let path = uri.path().to_string();
    let range = headers
        .get(header::RANGE)
        .and_then(|r| r.to_str().ok())
        .unwrap_or("-");
    hub.log.lock().unwrap().push(format!("GET {path} {range}"));
    if let Some(sha) = path.strip_prefix("/cdn/") {
        return match hub.cdn.get(sha) {
            Some(data) => ranged(&headers, data, Response::builder()),
            None => error(StatusCode::NOT_FOUND, "", "no such blob"),
        };
    }
    let Some((repo, rest)) = path.trim_start_matches('/').split_once("/resolve/") else {
        return error(StatusCode::NOT_FOUND, "", "not found");
    };
    let Some((revision, file)) = rest.split_once('/') else {
        return error(StatusCode::NOT_FOUND, "", "not found");
    };
    if let Some(new) = hub.renamed.get(repo) {
        return Response::builder()
            .status(StatusCode::TEMPORARY_REDIRECT)
            .header(header::LOCATION, format!("/{new}/resolve/{revision}/{file}"))
            .body(Body::empty())
            .unwrap();
    }
    let Some(files) = hub.repos.get(repo) else {
        return error(StatusCode::NOT_FOUND, "RepoNotFound", "Repository not found");
    };
    if revision != "main" && revision != COMMIT {
        return error(
            StatusCode::NOT_FOUND,
            "RevisionNotFound",
            &format!("Invalid rev id: {revision}"),
        );
    }
    let Some(data) = files.get(file) else {
        return error(StatusCode::NOT_FOUND, "EntryNotFound", "Entry not found");
    };
    let resp = Response::builder().header("X-Repo-Commit", COMMIT);
    if file.ends_with(".safetensors") {
        // LFS: redirect to the CDN; the hub's headers describe the target file.
        let sha = fake_sha(data);
        resp.status(StatusCode::FOUND)
            .header(header::ETAG, "\"0000pointer\"")
            .header("X-Linked-Etag", format!("\"{sha}\""))
            .header("X-Linked-Size", data.len().to_string())
            .header(header::LOCATION, format!("{}/cdn/{sha}", hub.base))
            .body(Body::empty())
            .unwrap()
    } else {
        let etag = format!("\"{}\"", &fake_sha(data)[..40]);
        ranged(&headers, data, resp.header(header::ETAG, etag))
    }
}

pub(crate) fn options(hub: &FakeHub, cache: &Path, offline: bool) -> HubOptions {
    HubOptions {
        endpoint: hub.url.clone(),
        cache_dir: cache.to_path_buf(),
        offline,
        token: None,
    }
}

pub(crate) fn reference_scores(m: &Model) -> Vec<Vec<f32>> {
    let items = vec![
        ScoreItem {
            prompt: vec![33428, 422, 4486, 5625, 329, 257, 1693],
            target: vec![260, 752, 262],
        },
        ScoreItem {
            prompt: vec![464],
            target: vec![3290, 13],
        },
    ];
    m.score(&items).unwrap()
}

/// Scores from the model loaded straight from the fixture directory.
pub(crate) fn local_scores() -> Vec<Vec<f32>> {
    static SCORES: std::sync::OnceLock<Vec<Vec<f32>>> = std::sync::OnceLock::new();
    SCORES
        .get_or_init(|| {
            let m = llm_attr::model::load::load_with(
                fixtures().to_str().unwrap(),
                &HubOptions {
                    endpoint: "http://127.0.0.1:9".into(),
                    cache_dir: "/nonexistent".into(),
                    offline: true,
                    token: None,
                },
                &llm_attr::model::LoadOptions::default(),
            )
            .unwrap();
            reference_scores(&m)
        })
        .clone()
}

/// A model loaded once per test binary and shared by its tests (loading SmolLM2 takes seconds).
pub(crate) fn shared_model(spec: &str) -> Arc<Model> {
    static MODELS: Mutex<Option<HashMap<String, Arc<Model>>>> = Mutex::new(None);
    let mut models = MODELS.lock().unwrap_or_else(|e| e.into_inner());
    models
        .get_or_insert_with(HashMap::new)
        .entry(spec.to_string())
        .or_insert_with(|| {
            Model::load(spec, &llm_attr::model::LoadOptions::default())
                .unwrap_or_else(|e| panic!("loading {spec}: {e}"))
        })
        .clone()
}

/// A JSON array of numbers.
pub(crate) fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// A JSON fixture file.
pub(crate) fn read_json(path: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A JSON array of token ids.
pub(crate) fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The tiny decoder of every family (tests/fixtures/<family>, from scripts/reference); two llama
/// configs: Llama 3 and Llama 2 layouts.
pub(crate) const FAMILIES: &[&str] = &[
    "llama",
    "llama-linear",
    "mistral",
    "qwen2",
    "qwen3",
    "phi3",
    "gemma2",
];

/// The request a case of Captum's LLMGradientAttribution fixtures (`captum_grad.json`) ran.
pub(crate) fn captum_grad_request(case: &serde_json::Value) -> llm_attr::request::AttributeRequest {
    use llm_attr::request::{AttributeRequest, TokenRef};
    let skip = ids(&case["skip_tokens"]);
    AttributeRequest {
        text: Some(case["text"].as_str().unwrap().into()),
        target: Some(case["target"].as_str().unwrap().into()),
        skip_tokens: (!skip.is_empty()).then(|| skip.into_iter().map(TokenRef::Id).collect()),
        method: serde_json::from_value(case["method"].clone()).unwrap(),
        n_steps: case["n_steps"].as_u64().map(|n| n as usize),
        integration: case
            .get("integration")
            .map(|i| serde_json::from_value(i.clone()).unwrap()),
        ..Default::default()
    }
}

/// Issue 12's tolerance for the gradient methods against Captum: 5e-3 + 1e-2 |Captum|.
pub(crate) fn captum_grad_tolerance(want: f64) -> f64 {
    5e-3 + 1e-2 * want.abs()
}
