//! `llm-attr attribute` and `llm-attr bench`.

use std::io::Read;
use std::time::Instant;

use anyhow::Context;

use crate::model::Model;
use crate::request::{AttributeRequest, Method};
use crate::run::{run, Limits, Progress};

/// `llm-attr attribute --model SPEC --request FILE`
#[derive(Debug, clap::Args)]
pub struct AttributeArgs {
    /// Model spec: hf:ORG/NAME[@REV], a directory, or a .gguf file.
    #[arg(long, env = "LLM_ATTR_MODEL", default_value = "hf:distilbert/distilgpt2")]
    pub model: String,
    /// Request JSON file, or - for stdin.
    #[arg(long)]
    pub request: String,
}

/// `llm-attr bench --model SPEC --request FILE`
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[arg(long, env = "LLM_ATTR_MODEL", default_value = "hf:distilbert/distilgpt2")]
    pub model: String,
    /// Request JSON file, or - for stdin. Its `method` is replaced by each benchmarked method.
    #[arg(long)]
    pub request: String,
    /// Runs per method; the median time is reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Methods to time (comma-separated; Captum's short names work).
    #[arg(long, default_value = "fa,sv,svs,lime,kernel")]
    pub methods: String,
}

/// Reads a request from a file or `-` (stdin).
pub fn read_request(path: &str) -> anyhow::Result<AttributeRequest> {
    let text = if path == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the request from stdin")?;
        s
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?
    };
    serde_json::from_str(&text).with_context(|| format!("the request in {path} is not valid"))
}

fn load(spec: &str) -> anyhow::Result<std::sync::Arc<Model>> {
    let t = Instant::now();
    let model = Model::load(spec).with_context(|| format!("loading model {spec}"))?;
    tracing::info!(spec, seconds = t.elapsed().as_secs_f64(), "model loaded");
    Ok(model)
}

fn log_progress(p: Progress) {
    tracing::debug!(done = p.done, total = p.total, "scored");
}

pub fn attribute(args: AttributeArgs) -> anyhow::Result<()> {
    let request = read_request(&args.request)?;
    let model = load(&args.model)?;
    let response = run(&request, model.as_ref(), &Limits::default(), &log_progress)?;
    println!("{}", serde_json::to_string_pretty(&response)?);
    Ok(())
}

fn parse_method(name: &str) -> anyhow::Result<Method> {
    serde_json::from_value(serde_json::Value::String(name.trim().to_string()))
        .with_context(|| format!("unknown method {name:?}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let request = read_request(&args.request)?;
    let methods: Vec<Method> = args
        .methods
        .split(',')
        .map(parse_method)
        .collect::<anyhow::Result<_>>()?;
    let model = load(&args.model)?;
    let limits = Limits::default();
    println!(
        "{:<24} {:>11} {:>8} {:>8} {:>9} {:>10} {:>10}",
        "method", "evaluations", "unique", "tokens", "sampling", "median_s", "min_s"
    );
    for method in methods {
        let mut req = request.clone();
        req.method = method;
        let mut times = Vec::new();
        let mut last = None;
        for _ in 0..args.repeats.max(1) {
            let t = Instant::now();
            let r = run(&req, model.as_ref(), &limits, &log_progress)?;
            times.push(t.elapsed().as_secs_f64());
            last = Some(r);
        }
        let r = last.context("no run")?;
        let name = serde_json::to_value(method)?
            .as_str()
            .unwrap_or_default()
            .to_string();
        let sampling = serde_json::to_value(r.baseline_sampling)?
            .as_str()
            .unwrap_or_default()
            .to_string();
        let min = times.iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "{:<24} {:>11} {:>8} {:>8} {:>9} {:>10.3} {:>10.3}",
            name,
            r.stats.evaluations,
            r.stats.unique_sequences,
            r.stats.tokens_scored,
            sampling,
            median(times),
            min
        );
    }
    Ok(())
}
