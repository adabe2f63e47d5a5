//! Parity with Captum 0.9 on the real models (tests/fixtures, made by make_reference.py):
//! feature ablation and exact Shapley values through LLMAttribution, and exact Shapley values
//! over the product of baseline lists.

use llm_attr::request::{AttributeRequest, AttributeResponse, Baseline, BaselineSampling, Method};
use llm_attr::run::{run, Limits};
use serde_json::Value;

const SMOLLM2: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
const TINY_GPT2: &str = "tests/fixtures/tiny-gpt2";

mod common;
use common::{floats, read_json, shared_model, FAMILIES};

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn request(template: &Value, baselines: &str, method: Method) -> AttributeRequest {
    let map = |v: &Value| -> Vec<(String, Value)> {
        v.as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    AttributeRequest {
        template: Some(template["prompt"].as_str().unwrap().into()),
        values: Some(
            map(&template["values"])
                .into_iter()
                .map(|(k, v)| (k, v.as_str().unwrap().into()))
                .collect(),
        ),
        baselines: Some(
            map(&template[baselines])
                .into_iter()
                .map(|(k, v)| {
                    let b = match v {
                        Value::String(s) => Baseline::One(s),
                        list => Baseline::List(strings(&list)),
                    };
                    (k, b)
                })
                .collect(),
        ),
        target: Some(template["target"].as_str().unwrap().into()),
        method,
        ..Default::default()
    }
}

fn close(got: f64, want: f64, what: &str) {
    let tol = 2e-3 + 1e-3 * want.abs();
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got}, Captum {want} (tolerance {tol})"
    );
}

fn compare(r: &AttributeResponse, reference: &Value, what: &str) {
    let seq: Vec<f64> = reference["seq_attr"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(r.seq_attr.len(), seq.len(), "{what}: features");
    for (i, (g, w)) in r.seq_attr.iter().zip(&seq).enumerate() {
        close(*g, *w, &format!("{what} seq_attr[{i}] ({})", r.features[i].name));
    }
    let tok = reference["token_attr"].as_array().unwrap();
    assert_eq!(r.token_attr.len(), tok.len(), "{what}: output tokens");
    for (k, (row, want)) in r.token_attr.iter().zip(tok).enumerate() {
        for (i, (g, w)) in row.iter().zip(want.as_array().unwrap()).enumerate() {
            close(*g, w.as_f64().unwrap(), &format!("{what} token_attr[{k}][{i}]"));
        }
    }
    if let Some(out) = reference.get("output_tokens") {
        assert_eq!(r.output_tokens, strings(out), "{what}: output_tokens");
    }
}

fn check_captum(spec: &str, path: &str) {
    let m = shared_model(spec);
    let f = read_json(path);
    for (key, method) in [
        ("feature_ablation", Method::FeatureAblation),
        ("shapley_values", Method::ShapleyValues),
    ] {
        let req = request(&f["template"], "baselines", method);
        let r = run(&req, m.as_ref(), &Limits::default(), &|_| {}).unwrap();
        compare(&r, &f[key], &format!("{path} {key}"));
        let n = r.features.len();
        let expected = if method == Method::ShapleyValues {
            1 << n
        } else {
            n + 1
        };
        assert_eq!(r.stats.unique_sequences, expected);
    }
}

#[test]
fn smollm2_t1_matches_captum() {
    check_captum(SMOLLM2, "tests/fixtures/smollm2/captum_t1.json");
}

#[test]
fn smollm2_t2_matches_captum() {
    check_captum(SMOLLM2, "tests/fixtures/smollm2/captum_t2.json");
}

#[test]
fn smollm2_t3_matches_captum() {
    check_captum(SMOLLM2, "tests/fixtures/smollm2/captum_t3.json");
}

#[test]
fn smollm2_t4_matches_captum() {
    check_captum(SMOLLM2, "tests/fixtures/smollm2/captum_t4.json");
}

#[test]
fn tiny_gpt2_t1_matches_captum() {
    check_captum(TINY_GPT2, "tests/fixtures/tiny-gpt2/captum_t1.json");
}

#[test]
fn every_family_t1_matches_captum() {
    for family in FAMILIES {
        let dir = format!("tests/fixtures/{family}");
        check_captum(&dir, &format!("{dir}/captum_t1.json"));
    }
}

#[test]
fn smollm2_exact_product_baselines() {
    let m = shared_model(SMOLLM2);
    let t = read_json("tests/fixtures/smollm2/captum_t1.json")["template"].clone();
    let f = read_json("tests/fixtures/smollm2/exact_product_t1.json");
    for (key, method) in [
        ("shapley", Method::ShapleyValues),
        ("feature_ablation", Method::FeatureAblation),
    ] {
        let mut req = request(&t, "product_baselines", method);
        req.baseline_sampling = Some(BaselineSampling::Exact);
        let r = run(&req, m.as_ref(), &Limits::default(), &|_| {}).unwrap();
        assert_eq!(r.baseline_sampling, BaselineSampling::Exact);
        let ids: Vec<u32> = f["target_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(r.target_ids, ids);
        compare(&r, &f[key], &format!("exact_product_t1 {key}"));
        assert!(
            r.stats.unique_sequences <= 125,
            "{} sequences",
            r.stats.unique_sequences
        );
        if method == Method::ShapleyValues {
            assert_eq!(r.stats.unique_sequences, 125);
        }
    }
}

/// Chat input: the messages rendered with SmolLM2's GGUF template, the placeholders in the user
/// message; Captum ran TextTemplateInput on the rendered template (captum_chat.json).
#[test]
fn smollm2_chat_matches_captum() {
    let m = shared_model(SMOLLM2);
    let path = "tests/fixtures/smollm2/captum_chat.json";
    let f = read_json(path);
    for (key, method) in [
        ("feature_ablation", Method::FeatureAblation),
        ("shapley_values", Method::ShapleyValues),
    ] {
        let mut req = request(&f["template"], "baselines", method);
        req.template = None;
        req.messages = Some(serde_json::from_value(f["messages"].clone()).unwrap());
        let r = run(&req, m.as_ref(), &Limits::default(), &|_| {}).unwrap();
        assert_eq!(r.prompt, f["rendered_prompt"].as_str().unwrap());
        assert_eq!(serde_json::to_value(&r.target_ids).unwrap(), f["target_ids"]);
        for (k, (got, want)) in r
            .target_log_probs
            .iter()
            .zip(floats(&f["target_logprobs"]))
            .enumerate()
        {
            close(*got, want, &format!("{path} target_logprobs[{k}]"));
        }
        compare(&r, &f[key], &format!("{path} {key}"));
    }
}

#[test]
fn every_method_on_tiny_gpt2_is_efficient_and_per_token() {
    let m = shared_model(TINY_GPT2);
    let t = read_json("tests/fixtures/tiny-gpt2/captum_t1.json")["template"].clone();
    let mut out = Vec::new();
    for method in [
        Method::FeatureAblation,
        Method::ShapleyValues,
        Method::ShapleyValueSampling,
        Method::Lime,
        Method::KernelShap,
    ] {
        let mut req = request(&t, "baselines", method);
        req.seed = Some(9);
        let r = run(&req, m.as_ref(), &Limits::default(), &|_| {}).unwrap();
        assert_eq!(r.token_attr.len(), r.target_ids.len());
        assert!(r
            .token_attr
            .iter()
            .flatten()
            .chain(&r.seq_attr)
            .all(|v| v.is_finite()));
        assert!(
            r.stats.unique_sequences <= 8,
            "{method:?}: at most the 2^3 coalitions"
        );
        let sampled = !matches!(method, Method::FeatureAblation | Method::ShapleyValues);
        assert_eq!(r.seq_attr_stderr.is_some(), sampled, "{method:?}");
        out.push(r);
    }
    // f(all) - f(none), from the exact Shapley values.
    let gap: f64 = out[1].seq_attr.iter().sum();
    let svs: f64 = out[2].seq_attr.iter().sum();
    let kernel: f64 = out[4].seq_attr.iter().sum();
    assert!((svs - gap).abs() < 1e-6, "{svs} vs {gap}");
    assert!((kernel - gap).abs() < 1e-3, "{kernel} vs {gap}");
    for r in &out[..3] {
        for f in 0..3 {
            let s: f64 = r.token_attr.iter().map(|row| row[f]).sum();
            assert!((s - r.seq_attr[f]).abs() < 1e-4, "{:?}", r.method);
        }
    }
    let f: f64 = out[4].token_attr.iter().map(|row| row[0]).sum();
    assert!(
        (f - out[4].seq_attr[0]).abs() < 1e-4,
        "kernel_shap is linear in the outputs"
    );
}

/// Contrastive FA and exact SV equal Captum's for the target minus Captum's for the contrast
/// (token rows: the target's, then the contrast's negated).
#[test]
fn smollm2_contrast_is_captum_target_minus_contrast() {
    let m = shared_model(SMOLLM2);
    let f = read_json("tests/fixtures/smollm2/captum_contrast_t1.json");
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    for (key, method) in [
        ("feature_ablation", Method::FeatureAblation),
        ("shapley_values", Method::ShapleyValues),
    ] {
        let mut template = f["template"].clone();
        template["target"] = f["target"].clone();
        let mut req = request(&template, "baselines", method);
        req.contrast_target = Some(f["contrast_target"].as_str().unwrap().into());
        let r = run(&req, m.as_ref(), &Limits::default(), &|_| {}).unwrap();
        assert_eq!(r.target_ids, ids(&f["target_ids"]));
        assert_eq!(r.contrast_ids.as_ref(), Some(&ids(&f["contrast_target_ids"])));
        let want = &f["difference"][key];
        compare(&r, want, &format!("contrast {key}"));
        assert_eq!(
            r.contrast_output_tokens.as_ref(),
            Some(&strings(&want["contrast_output_tokens"]))
        );
        for (got, want) in r
            .contrast_log_probs
            .as_ref()
            .unwrap()
            .iter()
            .zip(f["contrast_target_logprobs"].as_array().unwrap())
        {
            assert!(
                (got - want.as_f64().unwrap()).abs() < 1e-3,
                "contrast log-prob {got} vs {want}"
            );
        }
        let n = r.features.len();
        let coalitions = if method == Method::ShapleyValues {
            1 << n
        } else {
            n + 1
        };
        assert_eq!(
            r.stats.unique_sequences,
            2 * coalitions,
            "both continuations of every prompt"
        );
    }
}
