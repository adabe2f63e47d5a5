//! The remote backend against real inference servers on loopback, started by
//! `scripts/inference-server.sh` (.ci/run exports their URLs): vLLM's CPU backend, whose
//! prompt log-probs are right, and llama-cpp-python, whose echo is off by one.
//!
//! - every method through vLLM equals the same method computed from vLLM's own log-probs by
//!   `scripts/reference/remote_reference.py` (1e-4), and agrees with the in-process candle model
//!   on the same weights within the difference their arithmetic makes;
//! - `--verify-with` refuses llama-cpp-python's off-by-one echo, naming the position.
//!
//! Env: `LLM_ATTR_TEST_REMOTE_URL` (vLLM, served name `smollm2`), `LLM_ATTR_TEST_LLAMA_CPP_URL`,
//! `LLM_ATTR_TEST_REF_PYTHON` (a Python with numpy, tokenizers, jinja2),
//! `LLM_ATTR_TEST_TOKENIZER_DIR` (the served model's directory). Without a URL a test starts the
//! server with the script itself, and is skipped, with a message, only when the script says
//! the engine is not installed (exit 3).

#[path = "common/mod.rs"]
mod common;

use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use llm_attr::model::Model;
use llm_attr::request::{AttributeRequest, AttributeResponse, Method};
use llm_attr::run::{run, Limits};
use llm_attr::scorer::remote::{RemoteModel, RemoteSettings};
use serde_json::{json, Value};

const SMOLLM2: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
);
/// vLLM (f32 weights dequantized from the GGUF) against candle on the GGUF's Q4_1 weights
/// (dequantized to f32 at load): measured 4e-5 on target log-probs and 1.1e-4 on
/// attributions (vLLM 0.32.0 CPU, 2025-12); an off-by-one server is off by whole nats.
const CANDLE_TOLERANCE: f64 = 1e-3;

/// The URL in `var`, else one of a server the script starts (`None`: engine not installed).
fn server(var: &str, engine: &str, port: u16) -> Option<String> {
    if let Ok(url) = std::env::var(var) {
        return Some(url);
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/inference-server.sh");
    let out = Command::new(script)
        .args([&port.to_string(), SMOLLM2])
        .env("LLM_ATTR_ENGINE", engine)
        .env("LLM_ATTR_SERVED_NAME", "smollm2")
        .output()
        .unwrap_or_else(|e| panic!("{var} is not set and {script} cannot run: {e}"));
    match out.status.code() {
        Some(0) => Some(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        Some(3) => {
            eprintln!(
                "SKIPPED: {engine} is not installed here (scripts/inference-server.sh exit 3: {}); \
                 CI runs it",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            None
        }
        _ => panic!(
            "scripts/inference-server.sh {port} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn vllm() -> Option<&'static str> {
    static URL: OnceLock<Option<String>> = OnceLock::new();
    URL.get_or_init(|| server("LLM_ATTR_TEST_REMOTE_URL", "vllm", 18091))
        .as_deref()
}

fn settings(url: &str) -> RemoteSettings {
    let mut s = RemoteSettings::new(url);
    s.tokenizer = Some(SMOLLM2.into());
    s.timeout = Duration::from_secs(600);
    s
}

fn remote(url: &str) -> &'static RemoteModel {
    static REMOTE: OnceLock<RemoteModel> = OnceLock::new();
    REMOTE.get_or_init(|| RemoteModel::connect(&settings(url)).expect("vLLM passes the self-check"))
}

fn local() -> Arc<Model> {
    common::shared_model(SMOLLM2)
}

fn case(name: &str, edit: impl FnOnce(&mut Value)) -> Value {
    let path = format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"));
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["baseline_sampling"] = json!("exact");
    edit(&mut v);
    v
}

fn attribute(scorer: &dyn llm_attr::scorer::Scorer, case: &Value) -> AttributeResponse {
    let req: AttributeRequest = serde_json::from_value(case.clone()).unwrap();
    run(&req, scorer, &Limits::default(), &|_| {}).unwrap()
}

/// `remote_reference.py attribute` on `case`: rows `attr[o][f]` (o = 0 the sequence).
fn reference(url: &str, case: &Value) -> Option<Vec<Vec<f64>>> {
    let (Ok(py), Ok(dir)) = (
        std::env::var("LLM_ATTR_TEST_REF_PYTHON"),
        std::env::var("LLM_ATTR_TEST_TOKENIZER_DIR"),
    ) else {
        eprintln!("no reference: LLM_ATTR_TEST_REF_PYTHON and LLM_ATTR_TEST_TOKENIZER_DIR are not set (.ci/run sets them)");
        return None;
    };
    let file = std::env::temp_dir().join(format!(
        "llm-attr-case-{}.json",
        std::process::id() ^ case.to_string().len() as u32
    ));
    std::fs::write(&file, case.to_string()).unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/reference/remote_reference.py"
    );
    let out = Command::new(py)
        .args([
            "-u",
            script,
            "attribute",
            "--server",
            url,
            "--tokenizer",
            &dir,
            "--case",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    Some(serde_json::from_value(v["attr"].clone()).unwrap())
}

fn rows(r: &AttributeResponse) -> Vec<Vec<f64>> {
    std::iter::once(r.seq_attr.clone())
        .chain(r.token_attr.iter().cloned())
        .collect()
}

fn max_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    assert_eq!(a.len(), b.len(), "rows");
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len(), "columns");
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f64::max)
}

/// FA and exact Shapley on t1, chat input and a contrast: equal to the reference computed
/// from vLLM's own log-probs, and close to the in-process candle model.
#[test]
fn vllm_equals_the_reference_and_agrees_with_candle() {
    let Some(url) = vllm() else { return };
    let remote = remote(url);
    let cases = [
        (
            "t1",
            case("t1_single.json", |v| v["method"] = json!("feature_ablation")),
        ),
        (
            "t1 shapley",
            case("t1_single.json", |v| v["method"] = json!("shapley_values")),
        ),
        (
            "chat",
            case("t1_chat.json", |v| {
                v["method"] = json!("feature_ablation");
                v["baselines"] = json!({"name": "John", "country": "Togo", "job": "nurse"});
            }),
        ),
        (
            "contrast",
            case("t1_single.json", |v| {
                v["method"] = json!("feature_ablation");
                v["contrast_target"] = json!("hire the applicant.");
            }),
        ),
    ];
    for (name, c) in &cases {
        let through = attribute(remote, c);
        let here = attribute(local().as_ref(), c);
        let lp = max_diff(
            std::slice::from_ref(&through.target_log_probs),
            std::slice::from_ref(&here.target_log_probs),
        );
        let attr = max_diff(&rows(&through), &rows(&here));
        eprintln!("{name}: vLLM vs candle: target log-probs max |diff| {lp:.5}, attributions {attr:.5}");
        assert!(
            lp < CANDLE_TOLERANCE && attr < 2.0 * CANDLE_TOLERANCE,
            "{name}: {lp} {attr}"
        );
        if let Some(reference) = reference(url, c) {
            let d = max_diff(&rows(&through), &reference);
            eprintln!("{name}: vLLM through llm-attr vs remote_reference.py: max |diff| {d:.2e}");
            assert!(d < 1e-4, "{name}: {d}");
        }
    }
}

/// The sampling methods through vLLM agree with candle on the same draws.
#[test]
fn vllm_sampling_methods_agree_with_candle() {
    let Some(url) = vllm() else { return };
    for m in [Method::ShapleyValueSampling, Method::Lime, Method::KernelShap] {
        let c = case("t1.json", |v| {
            v["method"] = json!(m);
            v["n_samples"] = json!(8);
        });
        let d = max_diff(
            &rows(&attribute(remote(url), &c)),
            &rows(&attribute(local().as_ref(), &c)),
        );
        eprintln!("{m:?}: vLLM vs candle: attributions max |diff| {d:.5}");
        assert!(d < 2.0 * CANDLE_TOLERANCE, "{m:?}: {d}");
    }
}

/// llama-cpp-python's echo reads each token's log-prob from the distribution after it:
/// `--verify-with` the same model refuses it, naming the position.
#[test]
fn verify_with_refuses_llama_cpp_pythons_off_by_one_echo() {
    static URL: OnceLock<Option<String>> = OnceLock::new();
    let Some(url) = URL.get_or_init(|| server("LLM_ATTR_TEST_LLAMA_CPP_URL", "llama-cpp", 18092)) else {
        return;
    };
    let mut s = settings(url);
    s.verify_with = Some(SMOLLM2.into());
    let e = RemoteModel::connect(&s).err().expect("refused").to_string();
    assert!(e.contains("disagrees") && e.contains("at position"), "{e}");
    eprintln!("{e}");
}

/// Sequences per second, t1 exact Shapley (125 prompts): through vLLM, through
/// llama-cpp-python (numbers wrong, time only) and in-process. A measurement, not a check:
/// `cargo test --test remote_real -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_t1_exact_shapley() {
    let c = case("t1.json", |v| v["method"] = json!("shapley_values"));
    let time = |what: &str, scorer: &dyn llm_attr::scorer::Scorer| {
        let t = Instant::now();
        let r = attribute(scorer, &c);
        let s = t.elapsed().as_secs_f64();
        eprintln!(
            "{what}: {} sequences in {s:.2} s = {:.1} sequences/s",
            r.stats.unique_sequences,
            r.stats.unique_sequences as f64 / s
        );
    };
    let _ = attribute(local().as_ref(), &c);
    time("in-process candle", local().as_ref());
    if let Some(url) = vllm() {
        time("vLLM", remote(url));
    }
    if let Ok(url) = std::env::var("LLM_ATTR_TEST_LLAMA_CPP_URL") {
        let m = RemoteModel::connect(&settings(&url)).unwrap();
        time("llama-cpp-python", &m);
    }
}
