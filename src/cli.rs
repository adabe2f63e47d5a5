//! `llm-attr attribute` and `llm-attr bench`.

use std::io::Read;
use std::time::Instant;

use anyhow::Context;

use crate::model::Model;
use crate::request::{AttributeRequest, Method};
use crate::run::{run, Limits, Progress};
use crate::scorer::Scorer;

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

/// One line of the bench table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchRow {
    pub method: Method,
    pub baseline_sampling: crate::request::BaselineSampling,
    pub evaluations: usize,
    pub unique_sequences: usize,
    pub tokens_scored: usize,
    pub median_seconds: f64,
    pub min_seconds: f64,
}

/// Times every method on `request` (its `method` replaced), `repeats` runs each.
pub fn bench_rows(
    scorer: &dyn Scorer,
    request: &AttributeRequest,
    methods: &[Method],
    repeats: usize,
) -> anyhow::Result<Vec<BenchRow>> {
    let limits = Limits::default();
    let mut rows = Vec::new();
    for &method in methods {
        let mut req = request.clone();
        req.method = method;
        let mut times = Vec::new();
        let mut last = None;
        for _ in 0..repeats.max(1) {
            let t = Instant::now();
            let r = run(&req, scorer, &limits, &log_progress)?;
            times.push(t.elapsed().as_secs_f64());
            last = Some(r);
        }
        let r = last.context("no run")?;
        rows.push(BenchRow {
            method,
            baseline_sampling: r.baseline_sampling,
            evaluations: r.stats.evaluations,
            unique_sequences: r.stats.unique_sequences,
            tokens_scored: r.stats.tokens_scored,
            min_seconds: times.iter().copied().fold(f64::INFINITY, f64::min),
            median_seconds: median(times),
        });
    }
    Ok(rows)
}

fn name<T: serde::Serialize>(v: T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The bench table as text.
pub fn bench_table(rows: &[BenchRow]) -> String {
    let mut out = format!(
        "{:<24} {:>11} {:>8} {:>8} {:>9} {:>10} {:>10}\n",
        "method", "evaluations", "unique", "tokens", "sampling", "median_s", "min_s"
    );
    for r in rows {
        out += &format!(
            "{:<24} {:>11} {:>8} {:>8} {:>9} {:>10.3} {:>10.3}\n",
            name(r.method),
            r.evaluations,
            r.unique_sequences,
            r.tokens_scored,
            name(r.baseline_sampling),
            r.median_seconds,
            r.min_seconds
        );
    }
    out
}

/// Parses `fa,sv,...` (full or Captum short names).
pub fn parse_methods(list: &str) -> anyhow::Result<Vec<Method>> {
    list.split(',').map(parse_method).collect()
}

pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let request = read_request(&args.request)?;
    let methods = parse_methods(&args.methods)?;
    let model = load(&args.model)?;
    let rows = bench_rows(model.as_ref(), &request, &methods, args.repeats)?;
    print!("{}", bench_table(&rows));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_parse_with_captum_short_names() {
        let all = parse_methods("fa, sv,svs,lime,kernel").unwrap();
        assert_eq!(
            all,
            [
                Method::FeatureAblation,
                Method::ShapleyValues,
                Method::ShapleyValueSampling,
                Method::Lime,
                Method::KernelShap
            ]
        );
        assert!(parse_methods("fa,shap").is_err());
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn example_requests_parse() {
        for f in [
            "examples/t1.json",
            "examples/t1_sample.json",
            "examples/t1_single.json",
        ] {
            let r = read_request(f).unwrap();
            assert!(r.template.is_some(), "{f}");
        }
    }
}
