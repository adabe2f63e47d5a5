//! The `hf:` path against a real HTTP server on 127.0.0.1 that answers like the Hugging Face hub:
//! `/{repo}/resolve/{revision}/{file}` with ETag / X-Linked-Etag / X-Repo-Commit headers, range
//! requests, LFS files redirected to a CDN URL, renamed repos redirected with a relative
//! Location, and `X-Error-Code` on 404s.

mod common;

use common::*;
use llm_attr::model::load::{load_with, HubOptions};
use llm_attr::model::LoadOptions;

#[test]
fn download_then_cache_then_offline() {
    let hub = start_hub();
    let home = tempfile::tempdir().unwrap();
    let cache = home.path().join("hub");
    let m = load_with(
        "hf:tiny/gpt2",
        &options(&hub, &cache, false),
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(m.info().spec, "hf:tiny/gpt2");
    assert_eq!(reference_scores(&m), local_scores());

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
    let again = load_with(
        "hf:tiny/gpt2",
        &options(&hub, &cache, false),
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(hub.requests().len(), n, "{:?}", &hub.requests()[n..]);
    assert_eq!(reference_scores(&again), reference_scores(&m));

    // Offline with a filled cache works, and never touches the network.
    let offline = load_with(
        "hf:tiny/gpt2",
        &options(&hub, &cache, true),
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(reference_scores(&offline), reference_scores(&m));
    assert_eq!(hub.requests().len(), n);
}

#[test]
fn sharded_checkpoint_and_pinned_revision() {
    let hub = start_hub();
    let home = tempfile::tempdir().unwrap();
    let spec = format!("hf:tiny/sharded@{COMMIT}");
    let m = load_with(&spec, &options(&hub, home.path(), false), &LoadOptions::default()).unwrap();
    assert_eq!(reference_scores(&m), local_scores());
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
fn vocab_and_merges_when_there_is_no_tokenizer_json() {
    let hub = start_hub();
    let home = tempfile::tempdir().unwrap();
    let m = load_with(
        "hf:tiny/legacy",
        &options(&hub, home.path(), false),
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(reference_scores(&m), local_scores());
    assert_eq!(
        m.tokenizer().encode(" Trinidad and Tobago").unwrap(),
        [48269, 290, 13695, 3839]
    );
    let log = hub.requests();
    assert!(
        log.iter()
            .any(|l| l.contains("/tiny/legacy/resolve/main/merges.txt")),
        "{log:?}"
    );
}

#[test]
fn renamed_repo_follows_relative_redirect() {
    let hub = start_hub();
    let home = tempfile::tempdir().unwrap();
    let m = load_with(
        "hf:old-org/tiny-gpt2",
        &options(&hub, home.path(), false),
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(reference_scores(&m), local_scores());
}

#[test]
fn unknown_repo_and_revision_are_clear_errors() {
    let hub = start_hub();
    let home = tempfile::tempdir().unwrap();
    let opts = options(&hub, home.path(), false);

    let e = load_with("hf:nobody/nothing", &opts, &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    eprintln!("{e}");
    assert!(e.starts_with("model: hf:nobody/nothing"), "{e}");
    assert!(e.contains("does not exist"), "{e}");

    let e = load_with("hf:tiny/gpt2@v9", &opts, &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
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
    let e = load_with("hf:tiny/gpt2", &dead, &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
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
    let e = load_with(
        "hf:tiny/gpt2",
        &options(&hub, home.path(), true),
        &LoadOptions::default(),
    )
    .err()
    .unwrap()
    .to_string();
    eprintln!("{e}");
    assert!(e.contains("hf:tiny/gpt2") && e.contains("HF_HUB_OFFLINE"), "{e}");
    assert!(e.contains(&home.path().display().to_string()), "{e}");
    assert!(hub.requests().is_empty());
}
