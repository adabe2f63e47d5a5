//! The gradient methods against Captum 0.9's LLMGradientAttribution (LayerIntegratedGradients
//! and LayerGradientXActivation on the input embeddings; tests/fixtures/*/captum_grad.json,
//! made by scripts/reference/gradients.py), their completeness, and their input errors.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use llm_attr::model::{LoadOptions, Model};
use llm_attr::request::{AttributeRequest, AttributeResponse, Integration, Method, TokenRef};
use llm_attr::run::{run, Limits};
use serde_json::Value;

mod common;
use common::FAMILIES;

const SMOLLM2: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
const TINY_GPT2: &str = "tests/fixtures/tiny-gpt2";

fn model(spec: &str) -> Arc<Model> {
    static MODELS: Mutex<Option<HashMap<String, Arc<Model>>>> = Mutex::new(None);
    let mut models = MODELS.lock().unwrap_or_else(|e| e.into_inner());
    models
        .get_or_insert_with(HashMap::new)
        .entry(spec.to_string())
        .or_insert_with(|| {
            Model::load(spec, &LoadOptions::default()).unwrap_or_else(|e| panic!("loading {spec}: {e}"))
        })
        .clone()
}

fn cases(dir: &str) -> Vec<Value> {
    let path = format!("{dir}/captum_grad.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let v: Value = serde_json::from_str(&text).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// The request Captum's case ran.
fn request(case: &Value) -> AttributeRequest {
    let method: Method = serde_json::from_value(case["method"].clone()).unwrap();
    let skip = ids(&case["skip_tokens"]);
    AttributeRequest {
        text: Some(case["text"].as_str().unwrap().into()),
        target: Some(case["target"].as_str().unwrap().into()),
        skip_tokens: (!skip.is_empty()).then(|| skip.into_iter().map(TokenRef::Id).collect()),
        method,
        n_steps: case["n_steps"].as_u64().map(|n| n as usize),
        integration: case
            .get("integration")
            .map(|i| serde_json::from_value::<Integration>(i.clone()).unwrap()),
        ..Default::default()
    }
}

/// The tolerance: 5e-3 + 1e-2 |Captum|.
fn close(got: f64, want: f64, what: &str) {
    let tol = 5e-3 + 1e-2 * want.abs();
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got}, Captum {want} (tolerance {tol})"
    );
}

fn compare(r: &AttributeResponse, case: &Value, what: &str) {
    let positions: Vec<usize> = r.features.iter().map(|f| f.position.unwrap()).collect();
    let want_positions: Vec<usize> = ids(&case["input_positions"]).into_iter().map(|p| p as usize).collect();
    assert_eq!(positions, want_positions, "{what}: feature positions");
    assert_eq!(r.target_ids, ids(&case["target_ids"]), "{what}: target ids");
    let seq = floats(&case["seq_attr"]);
    assert_eq!(r.seq_attr.len(), seq.len(), "{what}: features");
    for (i, (g, w)) in r.seq_attr.iter().zip(&seq).enumerate() {
        close(*g, *w, &format!("{what} seq_attr[{i}]"));
    }
    let rows = case["token_attr"].as_array().unwrap();
    assert_eq!(r.token_attr.len(), rows.len(), "{what}: output tokens");
    for (k, (row, want)) in r.token_attr.iter().zip(rows).enumerate() {
        for (i, (g, w)) in row.iter().zip(floats(want)).enumerate() {
            close(*g, w, &format!("{what} token_attr[{k}][{i}]"));
        }
    }
}

/// Completeness: each row sums to Captum's f(input) - f(baseline) within the convergence delta
/// Captum reports (plus the tolerance, per feature); our own delta is that row's miss.
fn complete(r: &AttributeResponse, case: &Value, what: &str) {
    let deltas = r.convergence_delta.as_ref().expect("integrated_gradients reports deltas");
    let (f_in, f_base) = (floats(&case["f_input"]), floats(&case["f_baseline"]));
    let captum = floats(&case["convergence_delta"]);
    for (k, row) in r.token_attr.iter().enumerate() {
        let sum: f64 = row.iter().sum();
        let change = f_in[k] - f_base[k];
        let slack = captum[k].abs() + row.len() as f64 * (5e-3 + 1e-2 * change.abs());
        assert!(
            (sum - change).abs() <= slack,
            "{what} row {k}: sum {sum}, f(input) - f(baseline) = {change}, Captum's delta {}",
            captum[k]
        );
        assert!(
            (sum - change - deltas[k]).abs() <= 1e-3 + 1e-3 * change.abs(),
            "{what} row {k}: delta {} is not the row's miss {}",
            deltas[k],
            sum - change
        );
    }
}

/// Every case of `dir`'s fixture that `keep` selects.
fn check(spec: &str, dir: &str, keep: impl Fn(&Value) -> bool) {
    let m = model(spec);
    for case in cases(dir).iter().filter(|c| keep(c)) {
        let what = format!(
            "{dir} {} {} {}",
            case["method"],
            case.get("integration").unwrap_or(&Value::Null),
            case.get("note").unwrap_or(&Value::Null)
        );
        let req = request(case);
        let r = run(&req, m.as_ref(), &Limits::default(), &|_| {}).unwrap_or_else(|e| panic!("{what}: {e}"));
        compare(&r, case, &what);
        if req.method == Method::IntegratedGradients {
            complete(&r, case, &what);
        } else {
            assert!(r.convergence_delta.is_none());
        }
    }
}

#[test]
fn tiny_gpt2_matches_captum() {
    check(TINY_GPT2, TINY_GPT2, |_| true);
}

#[test]
fn every_family_matches_captum() {
    for family in FAMILIES {
        let dir = format!("tests/fixtures/{family}");
        check(&dir, &dir, |_| true);
    }
}

/// SmolLM2 (the real model): gradient × input and the 20-step trapezoid rule (the 50-step
/// Gauss–Legendre case is the bench's work).
#[test]
fn smollm2_matches_captum() {
    check(SMOLLM2, "tests/fixtures/smollm2", |c| {
        c["method"] == "gradient_x_input" || c.get("integration").is_some_and(|i| i == "riemann_trapezoid")
    });
}
