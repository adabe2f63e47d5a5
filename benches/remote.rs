//! The remote scoring backend's speed, side by side in one run:
//!
//! - t1 exact Shapley (examples/t1.json, 125 prompts), sequences per second: through vLLM,
//!   through llama-cpp-python (whose echo is off by one: time only, numbers wrong) and with the
//!   same model in-process (candle);
//! - Shapley value sampling with 25 samples on t1: the HTTP requests llm-attr sends to vLLM
//!   and its seconds, against Captum's `RemoteLLMAttribution` with its `VLLMProvider` on the
//!   same server (`scripts/captum_remote.py`, which counts the requests its OpenAI client
//!   sends).
//!
//! ```text
//! M=models/SmolLM2-135M-Instruct.Q4_1.gguf
//! export LLM_ATTR_TEST_REMOTE_URL=$(LLM_ATTR_SERVED_NAME=smollm2 scripts/inference-server.sh 18011 $M)
//! export LLM_ATTR_TEST_LLAMA_CPP_URL=$(LLM_ATTR_ENGINE=llama-cpp LLM_ATTR_SERVED_NAME=smollm2 scripts/inference-server.sh 18012 $M)
//! export LLM_ATTR_TEST_TOKENIZER_DIR=$(scripts/inference-server.sh model-dir $M)
//! export LLM_ATTR_BENCH_CAPTUM_PYTHON=python3   # with captum >= 0.8, openai, transformers
//! cargo bench --bench remote
//! ```
//!
//! The env vars are those of tests/remote_real.rs (which .ci/run exports) plus
//! `LLM_ATTR_BENCH_CAPTUM_PYTHON`; a part whose server or Python is not given is skipped with
//! a message. Every scorer starts cold (no score cache); the in-process model is timed after
//! one warm-up run.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use llm_attr::model::{LoadOptions, Model};
use llm_attr::request::{AttributeRequest, AttributeResponse};
use llm_attr::run::{run, Limits};
use llm_attr::scorer::remote::{RemoteModel, RemoteSettings};
use llm_attr::scorer::Scorer;
use serde_json::{json, Value};

const SMOLLM2: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
const T1: &str = "examples/t1.json";
const SAMPLES: usize = 25;

fn main() -> anyhow::Result<()> {
    println!("load before: {}", load());
    let vllm = env("LLM_ATTR_TEST_REMOTE_URL").map(|u| connect(&u)).transpose()?;
    exact_shapley(vllm.as_ref())?;
    println!();
    sampling_requests(vllm.as_ref())?;
    println!("load after: {}", load());
    Ok(())
}

fn env(var: &str) -> Option<String> {
    let v = std::env::var(var).ok().filter(|v| !v.is_empty());
    if v.is_none() {
        println!("  ({var} is not set: that part is skipped)");
    }
    v
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn connect(url: &str) -> anyhow::Result<RemoteModel> {
    let mut s = RemoteSettings::new(url);
    s.tokenizer = Some(SMOLLM2.into());
    s.timeout = Duration::from_secs(600);
    RemoteModel::connect(&s).with_context(|| format!("connecting to {url}"))
}

fn request(edit: impl FnOnce(&mut Value)) -> anyhow::Result<AttributeRequest> {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(T1)?)?;
    edit(&mut v);
    Ok(serde_json::from_value(v)?)
}

/// One run of `req` against `scorer`, timed.
fn timed(scorer: &dyn Scorer, req: &AttributeRequest) -> anyhow::Result<(AttributeResponse, f64)> {
    let t = Instant::now();
    let r = run(req, scorer, &Limits::default(), &|_| {})?;
    Ok((r, t.elapsed().as_secs_f64()))
}

fn exact_shapley(vllm: Option<&RemoteModel>) -> anyhow::Result<()> {
    let req = request(|v| {
        v["method"] = json!("shapley_values");
        v["baseline_sampling"] = json!("exact");
    })?;
    println!("t1 exact Shapley ({T1}), sequences per second:");
    let line = |what: &str, (r, s): (AttributeResponse, f64)| {
        let n = r.stats.unique_sequences;
        println!(
            "  {what:<44} {n:>4} sequences in {s:>7.2} s = {:>7.1} sequences/s",
            n as f64 / s
        );
    };
    let local = Model::load(SMOLLM2, &LoadOptions::default())?;
    timed(local.as_ref(), &req)?;
    line(
        "in-process candle (after a warm-up run)",
        timed(local.as_ref(), &req)?,
    );
    if let Some(m) = vllm {
        line("vLLM (CPU) through llm-attr", timed(m, &req)?);
    }
    if let Some(url) = env("LLM_ATTR_TEST_LLAMA_CPP_URL") {
        let m = connect(&url)?;
        line("llama-cpp-python through llm-attr (time only)", timed(&m, &req)?);
    }
    Ok(())
}

fn sampling_requests(vllm: Option<&RemoteModel>) -> anyhow::Result<()> {
    println!("Shapley value sampling, {SAMPLES} samples, on t1 ({T1}) against vLLM:");
    let Some(m) = vllm else { return Ok(()) };
    for sampling in ["exact", "sample"] {
        let req = request(|v| {
            v["method"] = json!("shapley_value_sampling");
            v["n_samples"] = json!(SAMPLES);
            v["baseline_sampling"] = json!(sampling);
        })?;
        let before = m.requests_sent();
        let (r, s) = timed(m, &req)?;
        println!(
            "  llm-attr, baselines {sampling:<6} {:>4} HTTP requests ({:>3} sequences, {} evaluations) in {s:>7.2} s",
            m.requests_sent() - before,
            r.stats.unique_sequences,
            r.stats.evaluations,
        );
    }
    let (Some(py), Some(dir)) = (
        env("LLM_ATTR_BENCH_CAPTUM_PYTHON"),
        env("LLM_ATTR_TEST_TOKENIZER_DIR"),
    ) else {
        return Ok(());
    };
    let c = captum(&py, &dir, m.model_name())?;
    println!(
        "  Captum RemoteLLMAttribution (VLLMProvider)  {:>4} HTTP requests ({} forward calls) in {:>7.2} s",
        c["requests"],
        c["forward_calls"],
        c["seconds"].as_f64().unwrap_or(f64::NAN),
    );
    Ok(())
}

/// `scripts/captum_remote.py` on t1 against the same server.
fn captum(py: &str, tokenizer_dir: &str, model: &str) -> anyhow::Result<Value> {
    let url = std::env::var("LLM_ATTR_TEST_REMOTE_URL")?;
    let out = Command::new(py)
        .args(["scripts/captum_remote.py", "--server", &url, "--model", model])
        .args(["--tokenizer", tokenizer_dir, "--case", T1])
        .args([
            "--method",
            "shapley_value_sampling",
            "--n-samples",
            &SAMPLES.to_string(),
        ])
        .output()
        .with_context(|| format!("running {py} scripts/captum_remote.py"))?;
    if !out.status.success() {
        bail!(
            "scripts/captum_remote.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}
