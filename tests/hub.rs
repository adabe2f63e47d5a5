//! The `hf:` path against a real HTTP server on 127.0.0.1 that answers like the Hugging Face hub:
//! `/{repo}/resolve/{revision}/{file}` with ETag / X-Linked-Etag / X-Repo-Commit headers, range
//! requests, LFS files redirected to a CDN URL, renamed repos redirected with a relative
//! Location, and `X-Error-Code` on 404s.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, Response, StatusCode, Uri};
use axum::Router;
use candle_core::{Device, Tensor};
use llm_attr::model::spec::{load_with, HubOptions};
use llm_attr::model::{Model, ScoreItem};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn fixtures() -> PathBuf {
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

struct FakeHub {
    state: Arc<HubState>,
    url: String,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl FakeHub {
    fn requests(&self) -> Vec<String> {
        self.state.log.lock().unwrap().clone()
    }
}

fn tiny_files() -> HashMap<String, Arc<Vec<u8>>> {
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
    let tensors = candle_core::safetensors::load(fixtures().join("model.safetensors"), &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut shards: [HashMap<String, Tensor>; 2] = Default::default();
    let mut weight_map = serde_json::Map::new();
    for (name, t) in tensors {
        let k = usize::from(name.contains("wte"));
        let file = format!("model-{:05}-of-00002.safetensors", k + 1);
        weight_map.insert(name.clone(), serde_json::Value::String(file));
        shards[k].insert(name, t);
    }
    let mut files = tiny_files();
    files.remove("model.safetensors");
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

fn start_hub() -> FakeHub {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut state = HubState {
        base: url.clone(),
        ..Default::default()
    };
    state.repos.insert("tiny/gpt2".into(), tiny_files());
    state.repos.insert("tiny/sharded".into(), sharded_files());
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

fn options(hub: &FakeHub, cache: &Path, offline: bool) -> HubOptions {
    HubOptions {
        endpoint: hub.url.clone(),
        cache_dir: cache.to_path_buf(),
        offline,
        token: None,
    }
}

fn reference_scores(m: &Model) -> Vec<Vec<f32>> {
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

fn local() -> Model {
    llm_attr::model::spec::load_with(
        fixtures().to_str().unwrap(),
        &HubOptions {
            endpoint: "http://127.0.0.1:9".into(),
            cache_dir: "/nonexistent".into(),
            offline: true,
            token: None,
        },
    )
    .unwrap()
}

#[test]
fn download_then_cache_then_offline() {
    let hub = start_hub();
    let home = tempfile::tempdir().unwrap();
    let cache = home.path().join("hub");
    let m = load_with("hf:tiny/gpt2", &options(&hub, &cache, false)).unwrap();
    assert_eq!(m.info().spec, "hf:tiny/gpt2");
    assert_eq!(reference_scores(&m), reference_scores(&local()));

    let log = hub.requests();
    // Metadata probes use a one-byte range; the weights come from the CDN after a redirect.
    assert!(
        log.iter()
            .any(|l| l == "GET /tiny/gpt2/resolve/main/config.json bytes=0-0"),
        "{log:?}"
    );
    assert!(log.iter().any(|l| l.starts_with("GET /cdn/")), "{log:?}");
    // The standard cache layout, shared with Python's huggingface_hub.
    let repo_dir = cache.join("models--tiny--gpt2");
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
        COMMIT
    );
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        let p = repo_dir.join("snapshots").join(COMMIT).join(f);
        assert_eq!(
            std::fs::read(&p).unwrap(),
            std::fs::read(fixtures().join(f)).unwrap()
        );
    }

    // Second load: served from the cache, no request reaches the server.
    let n = log.len();
    let again = load_with("hf:tiny/gpt2", &options(&hub, &cache, false)).unwrap();
    assert_eq!(hub.requests().len(), n, "{:?}", &hub.requests()[n..]);
    assert_eq!(reference_scores(&again), reference_scores(&m));

    // Offline with a filled cache works, and never touches the network.
    let offline = load_with("hf:tiny/gpt2", &options(&hub, &cache, true)).unwrap();
    assert_eq!(reference_scores(&offline), reference_scores(&m));
    assert_eq!(hub.requests().len(), n);
}

#[test]
fn sharded_checkpoint_and_pinned_revision() {
    let hub = start_hub();
    let home = tempfile::tempdir().unwrap();
    let spec = format!("hf:tiny/sharded@{COMMIT}");
    let m = load_with(&spec, &options(&hub, home.path(), false)).unwrap();
    assert_eq!(reference_scores(&m), reference_scores(&local()));
    let log = hub.requests();
    assert!(
        log.iter().any(|l| l.contains("model.safetensors.index.json")),
        "{log:?}"
    );
    assert_eq!(
        log.iter().filter(|l| l.starts_with("GET /cdn/")).count(),
        4,
        "two shards, each probed then downloaded: {log:?}"
    );
}

#[test]
fn renamed_repo_follows_relative_redirect() {
    let hub = start_hub();
    let home = tempfile::tempdir().unwrap();
    let m = load_with("hf:old-org/tiny-gpt2", &options(&hub, home.path(), false)).unwrap();
    assert_eq!(reference_scores(&m), reference_scores(&local()));
}

#[test]
fn unknown_repo_and_revision_are_clear_errors() {
    let hub = start_hub();
    let home = tempfile::tempdir().unwrap();
    let opts = options(&hub, home.path(), false);

    let e = load_with("hf:nobody/nothing", &opts).err().unwrap().to_string();
    eprintln!("{e}");
    assert!(e.starts_with("model: hf:nobody/nothing"), "{e}");
    assert!(e.contains("does not exist"), "{e}");

    let e = load_with("hf:tiny/gpt2@v9", &opts).err().unwrap().to_string();
    eprintln!("{e}");
    assert!(
        e.contains("hf:tiny/gpt2@v9") && e.contains("revision does not exist"),
        "{e}"
    );

    // Nothing listening: a network error naming the endpoint.
    let dead = HubOptions {
        endpoint: "http://127.0.0.1:9".into(),
        cache_dir: home.path().to_path_buf(),
        offline: false,
        token: None,
    };
    let e = load_with("hf:tiny/gpt2", &dead).err().unwrap().to_string();
    eprintln!("{e}");
    assert!(
        e.contains("hf:tiny/gpt2") && e.contains("http://127.0.0.1:9"),
        "{e}"
    );
}

#[test]
fn offline_with_empty_cache_is_a_clear_error() {
    let hub = start_hub();
    let home = tempfile::tempdir().unwrap();
    let e = load_with("hf:tiny/gpt2", &options(&hub, home.path(), true))
        .err()
        .unwrap()
        .to_string();
    eprintln!("{e}");
    assert!(e.contains("hf:tiny/gpt2") && e.contains("HF_HUB_OFFLINE"), "{e}");
    assert!(e.contains(&home.path().display().to_string()), "{e}");
    assert!(hub.requests().is_empty());
}

/// `Model::load` reads HF_HOME, HF_ENDPOINT and HF_HUB_OFFLINE. The only test here that touches
/// the environment; the others pass their options explicitly.
#[test]
fn environment_settings_are_honoured() {
    let hub = start_hub();
    let home = tempfile::tempdir().unwrap();
    std::env::remove_var("HF_HUB_CACHE");
    std::env::remove_var("HF_TOKEN");
    std::env::set_var("HF_HOME", home.path());
    std::env::set_var("HF_ENDPOINT", format!("{}/", hub.url));
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let opts = HubOptions::from_env();
    assert_eq!(opts.endpoint, hub.url);
    assert_eq!(opts.cache_dir, home.path().join("hub"));
    assert!(opts.offline);
    assert!(Model::load("hf:tiny/gpt2").is_err());

    std::env::set_var("HF_HUB_OFFLINE", "0");
    let m = Model::load("hf:tiny/gpt2").unwrap();
    assert_eq!(reference_scores(&m), reference_scores(&local()));
    assert!(home.path().join("hub/models--tiny--gpt2/refs/main").is_file());
}
