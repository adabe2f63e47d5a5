//! The gradient methods on SmolLM2-135M-Instruct: integrated gradients (50 Gauss–Legendre steps)
//! and gradient × input on a 20-token prompt with an 8-token target, the setting of
//! scripts/reference/gradients.py's `time_captum`. With `LLM_ATTR_CAPTUM_JSON=FILE` (that
//! function's output, run just before on the same machine) it prints the speed-up over Captum.
//!
//!     OMP_NUM_THREADS=1 /work/venv-ref/bin/python scripts/reference/make_fixtures.py \
//!         --time-captum-grad > /tmp/captum.json
//!     LLM_ATTR_CAPTUM_JSON=/tmp/captum.json cargo bench --bench grad
//!
//! `RAYON_NUM_THREADS` sets candle's threads (Captum's run reports its torch threads).

use std::time::Instant;

use llm_attr::model::{LoadOptions, Model};
use llm_attr::request::{AttributeRequest, Method};
use llm_attr::run::{run, Limits};
use serde_json::Value;

const PROMPT: &str =
    "Georg from Germany applied for a job as a janitor at a bakery. The hiring manager decided to";
const TARGET: &str = " reject the application without any further consideration.";

/// Seconds of one run of `method` (the best of `repeats`), checking the token counts.
fn time(model: &Model, method: Method, repeats: usize) -> f64 {
    let req = AttributeRequest {
        text: Some(PROMPT.into()),
        target: Some(TARGET.into()),
        method,
        ..Default::default()
    };
    let mut best = f64::INFINITY;
    for _ in 0..repeats {
        let t = Instant::now();
        let r = run(&req, model, &Limits::default(), &|_| {}).expect("attribute");
        best = best.min(t.elapsed().as_secs_f64());
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
    best
}

/// The last JSON object in Captum's timing output (tqdm and warnings may come before it).
fn captum(path: &str) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    let start = text.rfind("\n{").map_or(text.find('{')?, |i| i + 1);
    serde_json::from_str(&text[start..]).ok()
}

fn main() {
    let model = Model::load("models/SmolLM2-135M-Instruct.Q4_1.gguf", &LoadOptions::default())
        .expect("load models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch-models.sh)");
    println!(
        "SmolLM2-135M-Instruct, 20 prompt + 8 target tokens, {} candle threads",
        candle_core::utils::get_num_threads()
    );
    time(&model, Method::GradientXInput, 1); // warm-up
    let gxi = time(&model, Method::GradientXInput, 3);
    println!("gradient_x_input: {gxi:.2} s");
    let ig = time(&model, Method::IntegratedGradients, 1);
    println!("integrated_gradients (50 steps, gausslegendre): {ig:.2} s");
    let Some(path) = std::env::var("LLM_ATTR_CAPTUM_JSON").ok() else {
        return;
    };
    let Some(c) = captum(&path) else {
        println!("no Captum timing in {path}");
        return;
    };
    println!(
        "Captum 0.9, torch {} with {} threads:",
        c["torch"], c["torch_threads"]
    );
    for (name, ours) in [
        ("integrated_gradients_50_gausslegendre", ig),
        ("gradient_x_input", gxi),
    ] {
        if let Some(theirs) = c[format!("{name}_seconds")].as_f64() {
            println!(
                "  {name}: Captum {theirs:.2} s, llm-attr {ours:.2} s, {:.1}x faster",
                theirs / ours
            );
        }
    }
}
