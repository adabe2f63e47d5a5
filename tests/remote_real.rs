//! The remote backend against real inference servers on loopback, started by
//! `scripts/inference-server.sh` (.ci/run exports their URLs): vLLM's CPU backend, whose
//! prompt log-probs are right, and llama-cpp-python, whose echo is off by one.
//!
//! - every method through vLLM (the sampling methods on llm-attr's own draws, given to it as
//!   `--design`), chat input, a contrast and a small audit equal the same computed from vLLM's
//!   own log-probs by `scripts/reference/remote_reference.py` (1e-4), and agree with the
//!   in-process candle model on the same weights within the difference their arithmetic makes;
//! - plans (the function and `/v1/plan` of a server in front of vLLM) count what runs score;
//! - `--verify-with` refuses llama-cpp-python's off-by-one echo, naming the position.
//!
//! The speed of it all is measured by `benches/remote.rs`, not here.
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
use std::time::Duration;

use llm_attr::audit::{self, AuditRequest};
use llm_attr::model::Model;
use llm_attr::request::{AttributeRequest, AttributeResponse, Method};
use llm_attr::run::{plan, run, Limits};
use llm_attr::scorer::remote::{RemoteModel, RemoteSettings};
use llm_attr::{sampling_design, SamplingDesign};
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

/// `remote_reference.py COMMAND --case case [--design design]`'s JSON (None, with a message,
/// where .ci/run's Python and tokenizer directory are not given).
fn reference_json(url: &str, command: &str, case: &Value, design: Option<&SamplingDesign>) -> Option<Value> {
    let (Ok(py), Ok(dir)) = (
        std::env::var("LLM_ATTR_TEST_REF_PYTHON"),
        std::env::var("LLM_ATTR_TEST_TOKENIZER_DIR"),
    ) else {
        eprintln!("no reference: LLM_ATTR_TEST_REF_PYTHON and LLM_ATTR_TEST_TOKENIZER_DIR are not set (.ci/run sets them)");
        return None;
    };
    let file = |what: &str, v: String| {
        let f = std::env::temp_dir().join(format!("llm-attr-{what}-{}-{}.json", std::process::id(), fnv(&v)));
        std::fs::write(&f, v).unwrap();
        f
    };
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/reference/remote_reference.py"
    );
    let mut cmd = Command::new(py);
    cmd.args([
        "-u",
        script,
        command,
        "--server",
        url,
        "--tokenizer",
        &dir,
        "--case",
    ])
    .arg(file("case", case.to_string()));
    if let Some(d) = design {
        cmd.arg("--design")
            .arg(file("design", serde_json::to_string(d).unwrap()));
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// A file name's hash of its contents (cases run in parallel).
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// `remote_reference.py attribute` on `case`: rows `attr[o][f]` (o = 0 the sequence).
fn reference(url: &str, case: &Value, design: Option<&SamplingDesign>) -> Option<Vec<Vec<f64>>> {
    let v = reference_json(url, "attribute", case, design)?;
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
        if let Some(reference) = reference(url, c, None) {
            let d = max_diff(&rows(&through), &reference);
            eprintln!("{name}: vLLM through llm-attr vs remote_reference.py: max |diff| {d:.2e}");
            assert!(d < 1e-4, "{name}: {d}");
        }
    }
}

/// t1 with the first two of its four baselines per placeholder: at most 27 prompts instead
/// of 125, since vLLM's CPU backend scores a few sequences a second on CI's two cores.
fn two_baselines(case: &mut Value) {
    for list in case["baselines"].as_object_mut().unwrap().values_mut() {
        list.as_array_mut().unwrap().truncate(2);
    }
}

/// Shapley value sampling, LIME and Kernel SHAP on t1 (two baselines each) through vLLM:
/// equal to the reference given llm-attr's own draws (`sampling_design`), close to candle on
/// the same draws, and counted exactly by the plan.
#[test]
fn vllm_sampling_methods_equal_the_reference_on_the_same_design() {
    let Some(url) = vllm() else { return };
    for m in [Method::ShapleyValueSampling, Method::Lime, Method::KernelShap] {
        let c = case("t1.json", |v| {
            v["method"] = json!(m);
            v["n_samples"] = json!(8);
            two_baselines(v);
        });
        let through = attribute(remote(url), &c);
        let d = max_diff(&rows(&through), &rows(&attribute(local().as_ref(), &c)));
        eprintln!("{m:?}: vLLM vs candle: attributions max |diff| {d:.5}");
        assert!(d < 2.0 * CANDLE_TOLERANCE, "{m:?}: {d}");
        let req: AttributeRequest = serde_json::from_value(c.clone()).unwrap();
        let p = plan(&req, remote(url), &Limits::default()).unwrap();
        assert_eq!(p.distinct_sequences, through.stats.unique_sequences, "{m:?}");
        let design = sampling_design(m, through.features.len(), 8, 0).unwrap();
        if let Some(reference) = reference(url, &c, Some(&design)) {
            let d = max_diff(&rows(&through), &reference);
            eprintln!(
                "{m:?}: vLLM through llm-attr vs remote_reference.py on its design: max |diff| {d:.2e}"
            );
            assert!(d < 1e-4, "{m:?}: {d}");
        }
    }
}

/// A small audit (2 x 2 cells, 2 contexts averaged, two targets, feature ablation per cell)
/// through vLLM: equal to `remote_reference.py audit`, and counted exactly by the plan.
#[test]
fn a_small_audit_through_vllm_equals_the_reference() {
    let Some(url) = vllm() else { return };
    let mut spec: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/audit.json")).unwrap(),
    )
    .unwrap();
    spec["sweep"] = json!({"name": ["Emily", "Jamal"], "country": ["Germany", "Togo"]});
    spec["baselines"] = json!({"job": ["nurse", "engineer"]});
    spec["method"] = json!("feature_ablation");
    spec["baseline_sampling"] = json!("exact");
    let req: AuditRequest = serde_json::from_value(spec.clone()).unwrap();
    let got = audit::run(&req, remote(url), &Limits::default(), &|_| {}).unwrap();
    let p = audit::plan(&req, remote(url), &Limits::default()).unwrap();
    assert_eq!(p.distinct_sequences, got.stats.distinct_sequences);
    let Some(reference) = reference_json(url, "audit", &spec, None) else {
        return;
    };
    let cells = reference["cells"].as_array().unwrap();
    assert_eq!(got.cells.len(), cells.len());
    let mut worst = 0.0f64;
    for (mine, theirs) in got.cells.iter().zip(cells) {
        assert_eq!(json!(mine.values), theirs["values"]);
        for (t, lp) in &mine.log_prob {
            worst = worst.max((lp - theirs["log_prob"][t].as_f64().unwrap()).abs());
        }
        worst = worst.max((mine.contrast.unwrap() - theirs["contrast"].as_f64().unwrap()).abs());
        let attr: Vec<Vec<f64>> = serde_json::from_value(theirs["attribution"]["attr"].clone()).unwrap();
        worst = worst.max(max_diff(&rows(mine.attribution.as_ref().unwrap()), &attr));
    }
    eprintln!("audit: vLLM through llm-attr vs remote_reference.py audit: max |diff| {worst:.2e}");
    assert!(worst < 1e-4, "{worst}");
}

/// `serve --model URL`: `/v1/plan` counts what the run then scores, an attribution over HTTP
/// equals the direct one, and `/metrics` counts one request to vLLM per batch.
#[test]
fn plan_and_attribute_over_http_with_vllm_behind() {
    let Some(url) = vllm() else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use llm_attr::api::{Config, ModelSource, Server};
        let server = Server::start(Config::new(ModelSource::Remote(settings(url))))
            .await
            .unwrap();
        server.ready().await.unwrap();
        let http = reqwest::Client::new();
        let post = |path: &str, body: &Value| {
            let req = http.post(format!("{}{path}", server.url())).json(body);
            async move {
                let res = req.send().await.unwrap();
                assert_eq!(res.status(), 200);
                res.json::<Value>().await.unwrap()
            }
        };
        let metric = |name: &'static str| {
            let req = http.get(format!("{}/metrics", server.url()));
            async move {
                let text = req.send().await.unwrap().text().await.unwrap();
                text.lines()
                    .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("{name} not in /metrics"))
            }
        };
        let c = case("t1.json", |v| {
            v["method"] = json!("shapley_value_sampling");
            v["n_samples"] = json!(8);
        });
        let planned = post("/v1/plan", &c).await;
        let req: AttributeRequest = serde_json::from_value(c.clone()).unwrap();
        let direct = plan(&req, remote(url), &Limits::default()).unwrap();
        assert_eq!(
            planned["distinct_sequences"],
            json!(direct.distinct_sequences),
            "{planned}"
        );
        assert_eq!(planned["tokens"], json!(direct.tokens), "{planned}");

        let fa = case("t1_single.json", |v| v["method"] = json!("feature_ablation"));
        let planned = post("/v1/plan", &fa).await;
        let (sent, batches) = (
            metric("llm_attr_remote_requests_total").await,
            metric("llm_attr_batches_total").await,
        );
        let got: AttributeResponse = serde_json::from_value(post("/v1/attributions", &fa).await).unwrap();
        assert_eq!(planned["distinct_sequences"], json!(got.stats.unique_sequences));
        let d = max_diff(&rows(&got), &rows(&attribute(remote(url), &fa)));
        assert!(d < 1e-4, "over HTTP vs direct: {d}");
        let sent = metric("llm_attr_remote_requests_total").await - sent;
        let batches = metric("llm_attr_batches_total").await - batches;
        eprintln!(
            "t1_single feature ablation over HTTP: {} sequences in {sent} requests to vLLM",
            got.stats.unique_sequences
        );
        assert!(
            sent > 0 && sent == batches,
            "{sent} requests for {batches} batches"
        );
        server.shutdown().await;
    });
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
