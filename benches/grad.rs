//! The gradient methods on SmolLM2-135M-Instruct: integrated gradients (50 Gauss–Legendre steps)
//! and gradient × input on a 20-token prompt with an 8-token target, the setting of
//! scripts/reference/gradients.py's `time_captum`, with the speed-up over Captum.
//!
//! Both sides in one run: with `LLM_ATTR_CAPTUM_PY=PYTHON` (a Python with torch, transformers,
//! accelerate, gguf and Captum 0.9) the bench runs `make_fixtures.py --time-captum-grad` right
//! after its own timings, with torch at candle's thread count:
//!
//!     RAYON_NUM_THREADS=2 LLM_ATTR_CAPTUM_PY=/work/venv-ctx/bin/python \
//!         PYTHONPATH=/work/captum-lib cargo bench --bench grad
//!
//! Or with `LLM_ATTR_CAPTUM_JSON=FILE`, that script's output from a run just before:
//!
//!     OMP_NUM_THREADS=1 python scripts/reference/make_fixtures.py --time-captum-grad > /tmp/c.json
//!     RAYON_NUM_THREADS=1 LLM_ATTR_CAPTUM_JSON=/tmp/c.json cargo bench --bench grad
//!
//! `RAYON_NUM_THREADS` sets candle's threads. `LLM_ATTR_GRAD_METHODS=gxi` (or `ig`) times one
//! method; `LLM_ATTR_GRAD_PASSES=stacked|per-token` forces the passes (default: the CPU's plan).

mod common;

use common::{cpu_seconds, load_average};
use std::time::Instant;

use clap::ValueEnum;
use llm_attr::model::{LoadOptions, Model, Passes};
use llm_attr::request::{AttributeRequest, Method};
use llm_attr::run::{run, Limits};
use serde_json::Value;

const PROMPT: &str =
    "Georg from Germany applied for a job as a janitor at a bakery. The hiring manager decided to";
const TARGET: &str = " reject the application without any further consideration.";

/// Seconds of one run of `method` (the best of `repeats`, wall-clock and CPU), checking the
/// token counts.
fn time(model: &Model, method: Method, repeats: usize) -> (f64, f64) {
    let req = AttributeRequest {
        text: Some(PROMPT.into()),
        target: Some(TARGET.into()),
        method,
        ..Default::default()
    };
    let (mut best, mut best_cpu) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..repeats {
        let (t, c) = (Instant::now(), cpu_seconds());
        let r = run(&req, model, &Limits::default(), &|_| {}).expect("attribute");
        best = best.min(t.elapsed().as_secs_f64());
        best_cpu = best_cpu.min(cpu_seconds() - c);
        assert_eq!(
            (r.features.len(), r.target_ids.len()),
            (20, 8),
            "prompt and target tokens"
        );
        if let Some(d) = &r.convergence_delta {
            let worst = d.iter().fold(0.0f64, |a, x| a.max(x.abs()));
            println!("  largest |convergence delta|: {worst:.4}");
        }
    }
    (best, best_cpu)
}

/// The last JSON object in Captum's timing output (tqdm and warnings may come before it).
fn parse_captum(text: &str) -> Option<Value> {
    let start = text.rfind("\n{").map_or(text.find('{')?, |i| i + 1);
    serde_json::from_str(&text[start..]).ok()
}

/// Captum's timings: run now with `LLM_ATTR_CAPTUM_PY` at `threads` torch threads, or read
/// from `LLM_ATTR_CAPTUM_JSON`.
fn captum(threads: usize) -> Option<Value> {
    if let Ok(python) = std::env::var("LLM_ATTR_CAPTUM_PY") {
        println!("running Captum with {python}, OMP_NUM_THREADS={threads} ...");
        let out = std::process::Command::new(python)
            .args(["scripts/reference/make_fixtures.py", "--time-captum-grad"])
            .env("OMP_NUM_THREADS", threads.to_string())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        return parse_captum(&String::from_utf8_lossy(&out.stdout));
    }
    let path = std::env::var("LLM_ATTR_CAPTUM_JSON").ok()?;
    parse_captum(&std::fs::read_to_string(path).ok()?)
}

fn main() {
    let mut options = LoadOptions::default();
    if let Ok(p) = std::env::var("LLM_ATTR_GRAD_PASSES") {
        options.gradient_passes = Some(Passes::from_str(&p, true).expect("stacked or per-token"));
    }
    let model = Model::load("models/SmolLM2-135M-Instruct.Q4_1.gguf", &options)
        .expect("load models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch-models.sh)");
    let threads = candle_core::utils::get_num_threads();
    println!("SmolLM2-135M-Instruct, 20 prompt + 8 target tokens, {threads} candle threads");
    let methods = std::env::var("LLM_ATTR_GRAD_METHODS").unwrap_or("gxi,ig".into());
    let mut ours = Vec::new();
    if methods.contains("gxi") {
        time(&model, Method::GradientXInput, 1); // warm-up
        let (gxi, cpu) = time(&model, Method::GradientXInput, 3);
        println!(
            "gradient_x_input: {gxi:.2} s, {cpu:.2} CPU s (load {})",
            load_average()
        );
        ours.push(("gradient_x_input", gxi, cpu));
    }
    if methods.contains("ig") {
        let (ig, cpu) = time(&model, Method::IntegratedGradients, 1);
        println!(
            "integrated_gradients (50 steps, gausslegendre): {ig:.2} s, {cpu:.2} CPU s (load {})",
            load_average()
        );
        ours.push(("integrated_gradients_50_gausslegendre", ig, cpu));
    }
    let Some(c) = captum(threads) else {
        println!("no Captum timing (LLM_ATTR_CAPTUM_PY or LLM_ATTR_CAPTUM_JSON)");
        return;
    };
    println!(
        "Captum 0.9, torch {} with {} threads (load {}):",
        c["torch"],
        c["torch_threads"],
        load_average()
    );
    for (name, ours, ours_cpu) in ours {
        if let Some(theirs) = c[format!("{name}_seconds")].as_f64() {
            println!(
                "  {name}: Captum {theirs:.2} s, llm-attr {ours:.2} s, {:.2}x faster",
                theirs / ours
            );
        }
        // At one thread, CPU seconds measure the work whatever else the machine runs.
        if let Some(theirs) = c[format!("{name}_cpu_seconds")].as_f64().filter(|_| threads == 1) {
            println!(
                "  {name} in CPU seconds: Captum {theirs:.2}, llm-attr {ours_cpu:.2}, {:.2}x",
                theirs / ours_cpu
            );
        }
    }
}
