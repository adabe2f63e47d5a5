//! Context attribution on SmolLM2: a ~2,000-token public-domain context of about 60 sentences
//! (benches/data/around_the_world_ch1.txt: the opening of chapter I of Jules Verne's "Around the
//! World in Eighty Days", Project Gutenberg EBook #103, as shipped in the esaxx-rs crate's
//! data/eighty.txt, paragraphs unwrapped), a question, and SmolLM2's own answer.
//!
//!     cargo bench --bench context
//!     CONTEXT_CITE_PY=/work/torchenv/bin/python cargo bench --bench context   # and the package
//!
//! The package's Python needs torch, transformers, `context-cite` and `accelerate` (transformers'
//! GGUF loader asks for it); set `PYTHONPATH` for any of them installed with `pip --target`.
//!
//! Prints leave-one-out's and chat t1's exact Shapley values' seconds and tokens, each without
//! and then with shared-prefix reuse, side by side in one run, and context_cite's (64 samples),
//! each after the floor that any exact prefix reuse has for it (the plan's `tokens_after_reuse`);
//! with CONTEXT_CITE_PY, also the `context-cite` package's own time for the same 64 masks
//! (scripts/reference/context_attr.py bench), on the same CPU. Any `stats` field named
//! `tokens_*` (the tokens computed and reused, where the engine reports them) is printed too.
//! `CONTEXT_REUSE=on` runs only the sides with reuse (the sides without take most of the time).

use std::collections::BTreeMap;
use std::time::Instant;

use llm_attr::cli::read_request;
use llm_attr::context_cite_masks;
use llm_attr::model::{LoadOptions, Model, DEFAULT_PREFIX_CACHE_MB};
use llm_attr::request::{AttributeRequest, AttributeResponse, Method, SplitKind};
use llm_attr::run::{plan, run, Limits};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
const TEXT: &str = "benches/data/around_the_world_ch1.txt";
/// SmolLM2's chat markup written out, so the package's script renders the very same prompts.
const TEMPLATE: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nAnswer the question using the context.\n\nContext:\n{context}\n\nQuestion: Of which club was Phileas Fogg a member?<|im_end|>\n<|im_start|>assistant\n";
const SEED: u64 = 0;

fn limits() -> Limits {
    Limits {
        max_tokens_per_sequence: 8192,
        ..Limits::default()
    }
}

fn request(context: &str, method: Method, target: Option<String>) -> AttributeRequest {
    AttributeRequest {
        template: Some(TEMPLATE.into()),
        values: Some(BTreeMap::from([("context".into(), context.into())])),
        split: Some(BTreeMap::from([("context".into(), SplitKind::Sentence)])),
        target,
        max_new_tokens: Some(24),
        method,
        seed: Some(SEED),
        ..Default::default()
    }
}

/// One line: seconds, sequences, tokens, and any `tokens_*` stats.
fn report(what: &str, r: &AttributeResponse, seconds: f64) {
    let stats = serde_json::to_value(&r.stats).unwrap_or_default();
    let extra: Vec<String> = stats
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("tokens_") && *k != "tokens_scored")
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!(
        "{what:<34} {seconds:>8.2} s  {:>5} sequences  {:>8} tokens  {}",
        r.stats.unique_sequences,
        r.stats.tokens_scored,
        extra.join("  ")
    );
}

/// The floor under any exact prefix reuse for `req`: its plan's tokens, and the fewest of them
/// left to compute when every shared prefix is computed once.
fn floor(model: &Model, req: &AttributeRequest, what: &str) -> anyhow::Result<()> {
    let p = plan(req, model, &limits())?;
    println!(
        "{what}: {} tokens; any exact prefix reuse computes at least {} ({:.3}x)",
        p.tokens,
        p.tokens_after_reuse,
        p.tokens_after_reuse as f64 / p.tokens.max(1) as f64
    );
    Ok(())
}

fn timed(model: &Model, req: &AttributeRequest, what: &str) -> anyhow::Result<AttributeResponse> {
    let started = Instant::now();
    let r = run(req, model, &limits(), &|_| {})?;
    report(what, &r, started.elapsed().as_secs_f64());
    Ok(r)
}

/// `req` without shared-prefix reuse, then with it (an empty prefix cache each time); the
/// largest difference between the two sides' `seq_attr`; the response with reuse.
fn side_by_side(model: &Model, req: &AttributeRequest, what: &str) -> anyhow::Result<AttributeResponse> {
    floor(model, req, what)?;
    let mut sides = Vec::new();
    let only_on = std::env::var("CONTEXT_REUSE").is_ok_and(|v| v == "on");
    for reuse in [false, true].into_iter().filter(|&r| r || !only_on) {
        model.set_prefix_reuse(reuse);
        model.set_prefix_cache_bytes(DEFAULT_PREFIX_CACHE_MB << 20);
        let label = format!("{what}, reuse {}", if reuse { "on" } else { "off" });
        sides.push(timed(model, req, &label)?);
    }
    if only_on {
        return Ok(sides.swap_remove(0));
    }
    let (off, on) = (&sides[0], &sides[1]);
    let diff = off
        .seq_attr
        .iter()
        .zip(&on.seq_attr)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    println!(
        "  with reuse / without: tokens computed {:.2}x; seq_attr max |diff| {diff:.1e}",
        on.stats.tokens_computed as f64 / off.stats.tokens_computed.max(1) as f64
    );
    Ok(sides.swap_remove(1))
}

/// The masks and prompts' pieces the package's script scores, for the same 64 masks.
fn write_package_input(r: &AttributeResponse, context: &str) -> anyhow::Result<String> {
    let segments: Vec<&str> = r.features.iter().map(|f| f.value.as_str()).collect();
    let masks = context_cite_masks(segments.len(), 64, &mut ChaCha8Rng::seed_from_u64(SEED));
    let out = serde_json::json!({
        "template": TEMPLATE, "values": {"context": context}, "segments": segments,
        "masks": masks, "target_ids": r.target_ids,
    });
    let path = "target/context_bench.json".to_string();
    std::fs::write(&path, serde_json::to_string(&out)?)?;
    Ok(path)
}

fn main() -> anyhow::Result<()> {
    let model = Model::load(MODEL, &LoadOptions::default())?;
    let context = std::fs::read_to_string(TEXT)?.trim_end().to_string();
    let tokens = model.tokenizer().encode(&context)?.len();
    let prompt = model
        .tokenizer()
        .encode_prompt(&TEMPLATE.replace("{context}", &context))?;
    let answer_ids = model.generate(&prompt, 24)?;
    let answer = model.tokenizer().decode(&answer_ids)?;
    println!(
        "context: {tokens} tokens; prompt {} tokens; SmolLM2's answer {answer:?} ({} tokens)",
        prompt.len(),
        answer_ids.len()
    );
    let target = Some(answer);
    let loo = request(&context, Method::FeatureAblation, target.clone());
    side_by_side(&model, &loo, "leave-one-out (feature_ablation)")?;
    let cc = request(&context, Method::ContextCite, target);
    floor(&model, &cc, "context_cite, 64 samples")?;
    let cc = timed(&model, &cc, "context_cite, 64 samples")?;
    println!("  {} sentences", cc.features.len());
    let mut top: Vec<usize> = (0..cc.seq_attr.len()).collect();
    top.sort_by(|&a, &b| cc.seq_attr[b].total_cmp(&cc.seq_attr[a]));
    for &i in top.iter().take(3) {
        println!("  {:+.3}  {}", cc.seq_attr[i], cc.features[i].name);
    }
    let chat = read_request("examples/t1_chat.json")?;
    let chat = AttributeRequest {
        method: Method::ShapleyValues,
        ..chat
    };
    side_by_side(&model, &chat, "chat t1, exact shapley_values")?;
    let input = write_package_input(&cc, &context)?;
    match std::env::var("CONTEXT_CITE_PY") {
        Ok(py) => {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            let out = std::process::Command::new(py)
                .args(["scripts/reference/context_attr.py", "bench", &input])
                .env("THREADS", threads.to_string())
                .output()?;
            println!(
                "context-cite package (transformers, {threads} threads): {}",
                String::from_utf8_lossy(&out.stdout).trim()
            );
            if !out.status.success() {
                eprintln!("{}", String::from_utf8_lossy(&out.stderr));
            }
        }
        Err(_) => println!("set CONTEXT_CITE_PY to time the context-cite package on {input}"),
    }
    Ok(())
}
