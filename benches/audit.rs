//! An audit against the same cells sent as separate requests, side by side, on SmolLM2 through
//! the engine (as the server runs them): 5 names x 4 countries x 3 jobs, targets " hire" and
//! " reject"; once scoring the cells only, once attributing every cell with feature ablation
//! (hire contrasted with reject). Reports distinct sequences scored and seconds.
//!
//!     cargo bench --bench audit [-- MODEL]

use std::collections::BTreeMap;
use std::time::Instant;

use llm_attr::audit::{self, AuditRequest};
use llm_attr::engine::{CancelToken, Engine, EngineConfig};
use llm_attr::model::{LoadOptions, Model};
use llm_attr::request::{AttributeRequest, Baseline, Method};
use llm_attr::run::{self, Limits};

const TEMPLATE: &str = "{name} from {country} applied for a job as a {job}. The hiring manager decided to";
const NAMES: [&str; 5] = ["Emily", "Lakisha", "Jamal", "Greg", "Mohammed"];
const COUNTRIES: [&str; 4] = ["Germany", "Togo", "India", "Brazil"];
const JOBS: [&str; 3] = ["janitor", "nurse", "engineer"];
const TARGETS: [&str; 2] = [" hire", " reject"];

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn grid(method: Option<Method>) -> AuditRequest {
    AuditRequest {
        template: Some(TEMPLATE.into()),
        sweep: [
            ("name", &NAMES[..]),
            ("country", &COUNTRIES[..]),
            ("job", &JOBS[..]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), strings(v)))
        .collect(),
        targets: strings(&TARGETS),
        method,
        ..Default::default()
    }
}

/// Every cell: its values, and the others of each list (the baselines an audit gives it).
fn cells() -> Vec<(BTreeMap<String, String>, BTreeMap<String, Baseline>)> {
    let mut out = Vec::new();
    for n in NAMES {
        for c in COUNTRIES {
            for j in JOBS {
                let mut values = BTreeMap::new();
                let mut baselines = BTreeMap::new();
                for (k, v, list) in [
                    ("name", n, &NAMES[..]),
                    ("country", c, &COUNTRIES[..]),
                    ("job", j, &JOBS[..]),
                ] {
                    values.insert(k.to_string(), v.to_string());
                    let others = list.iter().filter(|o| **o != v).map(|o| o.to_string()).collect();
                    baselines.insert(k.to_string(), Baseline::List(others));
                }
                out.push((values, baselines));
            }
        }
    }
    out
}

struct Row {
    what: &'static str,
    requests: usize,
    sequences: usize,
    seconds: f64,
}

/// Prints the row just measured (a slow machine still shows what it has).
fn print_last(rows: &[Row]) {
    if let Some(r) = rows.last() {
        println!(
            "{:<26} {:>8} {:>10} {:>9.2}",
            r.what, r.requests, r.sequences, r.seconds
        );
    }
}

fn main() -> anyhow::Result<()> {
    let spec = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let model = Model::load(&spec, &LoadOptions::default())?;
    let engine = Engine::new(model, EngineConfig::default())?;
    let scorer = engine.handle(CancelToken::new());
    let limits = Limits::default();
    let mut rows = Vec::new();

    println!("{spec}: 5 names x 4 countries x 3 jobs x 2 targets");
    println!(
        "{:<26} {:>8} {:>10} {:>9}",
        "", "requests", "sequences", "seconds"
    );
    // Warm up (first passes allocate).
    audit::run(&grid(None), &scorer, &limits, &|_| {})?;

    let t = Instant::now();
    let r = audit::run(&grid(None), &scorer, &limits, &|_| {})?;
    rows.push(Row {
        what: "log-probs: one audit",
        requests: 1,
        sequences: r.stats.distinct_sequences,
        seconds: t.elapsed().as_secs_f64(),
    });
    print_last(&rows);
    let t = Instant::now();
    let mut sequences = 0;
    for (values, _) in cells() {
        let mut one = grid(None);
        one.sweep = values.iter().map(|(k, v)| (k.clone(), vec![v.clone()])).collect();
        sequences += audit::run(&one, &scorer, &limits, &|_| {})?
            .stats
            .distinct_sequences;
    }
    rows.push(Row {
        what: "log-probs: cells apart",
        requests: cells().len(),
        sequences,
        seconds: t.elapsed().as_secs_f64(),
    });
    print_last(&rows);

    let t = Instant::now();
    let r = audit::run(&grid(Some(Method::FeatureAblation)), &scorer, &limits, &|_| {})?;
    rows.push(Row {
        what: "fa per cell: one audit",
        requests: 1,
        sequences: r.stats.distinct_sequences,
        seconds: t.elapsed().as_secs_f64(),
    });
    print_last(&rows);
    let t = Instant::now();
    let mut sequences = 0;
    for (values, baselines) in cells() {
        let req = AttributeRequest {
            template: Some(TEMPLATE.into()),
            values: Some(values),
            baselines: Some(baselines),
            target: Some(TARGETS[0].into()),
            contrast_target: Some(TARGETS[1].into()),
            method: Method::FeatureAblation,
            ..Default::default()
        };
        sequences += run::run(&req, &scorer, &limits, &|_| {})?.stats.unique_sequences;
    }
    rows.push(Row {
        what: "fa per cell: cells apart",
        requests: cells().len(),
        sequences,
        seconds: t.elapsed().as_secs_f64(),
    });
    print_last(&rows);

    for pair in rows.chunks(2) {
        println!(
            "{}: the audit scores {:.1}x fewer sequences and is {:.1}x faster",
            pair[0].what.split(':').next().unwrap_or(""),
            pair[1].sequences as f64 / pair[0].sequences as f64,
            pair[1].seconds / pair[0].seconds
        );
    }
    Ok(())
}
