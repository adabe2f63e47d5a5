//! Shared-prefix reuse side by side, on SmolLM2 on this CPU: tokens computed and seconds with
//! and without it, through the model directly (the CLI) and through the engine (the server),
//! for chat t1 (`examples/t1_chat.json`, exact Shapley values over the baselines' product)
//! and leave-one-out (feature ablation) over a template of many placeholders after a long
//! fixed prefix.
//!
//! `cargo bench --bench prefix [-- REPEATS]` (median of REPEATS runs, 2 by default).

mod common;

use common::load_average;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use llm_attr::engine::{CancelToken, Engine, EngineConfig};
use llm_attr::model::{LoadOptions, Model};
use llm_attr::request::{AttributeRequest, Baseline, Method};
use llm_attr::run::{run, Limits};
use llm_attr::scorer::Scorer;

/// One side of a comparison: the request's stats and its median seconds.
struct Side {
    computed: usize,
    reused: usize,
    scored: usize,
    seconds: f64,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Runs `request` `repeats` times on `scorer` (a fresh prefix cache each time).
fn measure(model: &Model, scorer: &dyn Scorer, request: &AttributeRequest, repeats: usize) -> Side {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..repeats {
        model.set_prefix_cache_bytes(llm_attr::model::DEFAULT_PREFIX_CACHE_MB << 20);
        let t = Instant::now();
        let r = run(request, scorer, &Limits::default(), &|_| {}).expect("run");
        times.push(t.elapsed().as_secs_f64());
        last = Some(r.stats);
    }
    let s = last.unwrap_or_default();
    Side {
        computed: s.tokens_computed,
        reused: s.tokens_reused,
        scored: s.tokens_scored,
        seconds: median(times),
    }
}

/// `request` without and with reuse, through the model and through the engine.
fn compare(
    model: &Arc<Model>,
    engine: &Engine<Model>,
    name: &str,
    request: &AttributeRequest,
    repeats: usize,
) {
    let handle = engine.handle(CancelToken::new());
    for (path, scorer) in [("model ", model.as_ref() as &dyn Scorer), ("engine", &handle)] {
        model.set_prefix_reuse(false);
        let off = measure(model, scorer, request, repeats);
        model.set_prefix_reuse(true);
        let on = measure(model, scorer, request, repeats);
        println!(
            "{name} ({path}): {} tokens scored; without reuse {} computed in {:.2} s; with reuse {} computed, {} reused, in {:.2} s; computed {:.2}x, seconds {:.2}x",
            off.scored,
            off.computed,
            off.seconds,
            on.computed,
            on.reused,
            on.seconds,
            on.computed as f64 / off.computed.max(1) as f64,
            on.seconds / off.seconds
        );
    }
}

/// Leave-one-out over `n` sentences after a fixed prefix of `paragraphs` paragraphs.
fn leave_one_out(n: usize, paragraphs: usize) -> AttributeRequest {
    let mut head = String::from("Minutes of the harbour committee.\n\n");
    for p in 0..paragraphs {
        head.push_str(&format!(
            "Item {p}. The committee read the report on the eastern quay, the repairs to the \
             lighthouse and the price of coal, heard the harbour master on the winter storms, \
             and agreed that the clerk would write to the county about the roads before the \
             next meeting.\n"
        ));
    }
    let mut template = head;
    template.push_str("\nLater notes:");
    let mut values = BTreeMap::new();
    let mut baselines = BTreeMap::new();
    for i in 0..n {
        template.push_str(&format!(" {{s{i}}}"));
        values.insert(
            format!("s{i:}"),
            format!("Note {i}: boat {i} paid {} shillings for a berth.", 3 + i % 7),
        );
        baselines.insert(format!("s{i}"), Baseline::One(String::new()));
    }
    template.push_str("\nQuestion: how much did boat 5 pay for a berth? Answer:");
    AttributeRequest {
        template: Some(template),
        values: Some(values),
        baselines: Some(baselines),
        target: Some(" Boat 5 paid 8 shillings.".into()),
        method: Method::FeatureAblation,
        ..Default::default()
    }
}

fn main() {
    let repeats = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(2);
    let model = Model::load("models/SmolLM2-135M-Instruct.Q4_1.gguf", &LoadOptions::default())
        .expect("load models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let engine = Engine::new(model.clone(), EngineConfig::for_device(model.device())).expect("engine");
    println!("load average before: {}", load_average());
    let chat: AttributeRequest = serde_json::from_str(
        &std::fs::read_to_string("examples/t1_chat.json").expect("examples/t1_chat.json"),
    )
    .expect("t1_chat.json");
    compare(&model, &engine, "chat t1 exact shapley", &chat, repeats);
    let loo = leave_one_out(16, 10);
    let tokens = model
        .tokenizer()
        .encode(loo.template.as_deref().unwrap_or_default())
        .map_or(0, |t| t.len());
    println!("leave-one-out: 16 notes after a fixed prefix, template {tokens} tokens");
    compare(&model, &engine, "leave-one-out", &loo, repeats);
    println!("load average after: {}", load_average());
}
