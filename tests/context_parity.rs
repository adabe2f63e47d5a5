//! Context attribution against its references (made by scripts/reference/context_attr.py):
//! leave-one-out over a context's sentences equals transformers' log-prob differences for the
//! same ablated prompts (SmolLM2 and two tiny families), and context_cite equals the
//! `context-cite` package's own Lasso weights for the same masks and responses.

mod common;

use std::collections::BTreeMap;

use common::{floats, read_json, shared_model};
use llm_attr::request::{AttributeRequest, AttributeResponse, Method, SplitKind};
use llm_attr::run::{run, Limits};
use llm_attr::{context_cite_masks, context_cite_weights};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

const SMOLLM2: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

fn model_path(family: &str) -> String {
    match family {
        "smollm2" => SMOLLM2.into(),
        f => format!("tests/fixtures/{f}"),
    }
}

/// The fixture's request: its template with the context split into sentences.
fn request(fixture: &Value, method: Method) -> AttributeRequest {
    let context = fixture["context"]
        .as_str()
        .or_else(|| fixture["values"]["context"].as_str())
        .unwrap();
    AttributeRequest {
        template: Some(fixture["template"].as_str().unwrap().into()),
        values: Some(BTreeMap::from([("context".into(), context.into())])),
        split: Some(BTreeMap::from([("context".into(), SplitKind::Sentence)])),
        target: Some(fixture["target"].as_str().unwrap().into()),
        method,
        ..Default::default()
    }
}

fn attribute(family: &str, req: &AttributeRequest) -> AttributeResponse {
    let model = shared_model(&model_path(family));
    run(req, model.as_ref(), &Limits::default(), &|_| {}).unwrap()
}

fn assert_within(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f64, f64::max);
    assert!(
        worst <= tol,
        "{what}: max difference {worst:e} > {tol:e}\n got {got:?}\nwant {want:?}"
    );
}

fn leave_one_out(family: &str) {
    let fx = read_json(&format!("tests/fixtures/{family}/context_loo.json"));
    let r = attribute(family, &request(&fx, Method::FeatureAblation));
    let segments: Vec<&str> = r.features.iter().map(|f| f.value.as_str()).collect();
    let want: Vec<&str> = fx["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(segments, want, "{family}: the sentences");
    assert_within(
        &r.seq_attr,
        &floats(&fx["seq_attr"]),
        1e-4,
        &format!("{family} seq_attr"),
    );
    for (k, row) in fx["token_attr"].as_array().unwrap().iter().enumerate() {
        assert_within(
            &r.token_attr[k],
            &floats(row),
            1e-4,
            &format!("{family} token_attr[{k}]"),
        );
    }
}

#[test]
fn leave_one_out_over_sentences_matches_transformers_smollm2() {
    leave_one_out("smollm2");
}

#[test]
fn leave_one_out_over_sentences_matches_transformers_tiny_families() {
    leave_one_out("llama");
    leave_one_out("gemma2");
}

/// The package's weights for llm-attr's masks and the package's responses, and llm-attr's own
/// run end to end, both within 1e-3.
#[test]
fn context_cite_matches_the_package() {
    let fx = read_json("tests/fixtures/smollm2/context_cite.json");
    let n_samples = fx["n_samples"].as_u64().unwrap() as usize;
    let seed = fx["seed"].as_u64().unwrap();
    let masks: Vec<Vec<bool>> = fx["masks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m.as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_bool().unwrap())
                .collect()
        })
        .collect();
    let n = masks[0].len();
    assert_eq!(
        context_cite_masks(n, n_samples, &mut ChaCha8Rng::seed_from_u64(seed)),
        masks
    );
    // The solver alone: the package's responses, aggregated as it does (logit of the sequence).
    let lp: Vec<Vec<f64>> = fx["logit_probs"].as_array().unwrap().iter().map(floats).collect();
    let log_sigmoid = |x: f64| -(-x).exp().ln_1p();
    let logit = |l: f64| l - (-l.exp_m1()).ln();
    let seq: Vec<f64> = lp
        .iter()
        .map(|r| logit(r.iter().map(|&x| log_sigmoid(x)).sum()))
        .collect();
    let want = floats(&fx["seq_attr"]);
    assert_within(
        &context_cite_weights(&masks, &seq, lp[0].len()),
        &want,
        1e-3,
        "Lasso on the package's responses",
    );
    // End to end: llm-attr's scores and Lasso.
    let mut req = request(&fx, Method::ContextCite);
    req.seed = Some(seed);
    req.n_samples = Some(n_samples);
    let r = attribute("smollm2", &req);
    assert_within(&r.seq_attr, &want, 1e-3, "context_cite seq_attr");
    for (k, row) in fx["token_attr"].as_array().unwrap().iter().enumerate() {
        assert_within(
            &r.token_attr[k],
            &floats(row),
            1e-3,
            &format!("context_cite token_attr[{k}]"),
        );
    }
}

/// Writes the masks the reference script scores (run by hand before `context_attr.py cite`).
#[test]
#[ignore]
fn write_masks() {
    let fx = read_json("tests/fixtures/smollm2/context_loo.json");
    let (seed, n_samples) = (3u64, 64usize);
    let req = request(&fx, Method::FeatureAblation);
    let r = attribute("smollm2", &req);
    let segments: Vec<&str> = r.features.iter().map(|f| f.value.as_str()).collect();
    let masks = context_cite_masks(segments.len(), n_samples, &mut ChaCha8Rng::seed_from_u64(seed));
    let out = serde_json::json!({
        "template": fx["template"], "values": {"context": fx["context"]}, "split": {"context": "sentence"},
        "target": fx["target"], "seed": seed, "n_samples": n_samples, "segments": segments, "masks": masks,
    });
    let text = serde_json::to_string_pretty(&out).unwrap() + "\n";
    std::fs::write("tests/fixtures/smollm2/context_cite_masks.json", text).unwrap();
}
