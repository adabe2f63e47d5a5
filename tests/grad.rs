//! The gradient methods against Captum 0.9's LLMGradientAttribution (LayerIntegratedGradients,
//! LayerGradientXActivation and LayerGradientShap on the input embeddings;
//! tests/fixtures/*/captum_grad(_shap).json, made by scripts/reference/gradients.py), their
//! completeness, and their input errors.

use llm_attr::model::{Combine, GradientJob, GradientPlan, Passes};
use llm_attr::request::{AttributeRequest, AttributeResponse, Baseline, Integration, Method, TokenRef};
use llm_attr::run::{run, Limits};
use serde_json::Value;

mod common;
use common::{captum_grad_request, captum_grad_tolerance, floats, ids, read_json, shared_model, FAMILIES};

const SMOLLM2: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
const TINY_GPT2: &str = "tests/fixtures/tiny-gpt2";

fn cases(dir: &str) -> Vec<Value> {
    read_json(&format!("{dir}/captum_grad.json"))["cases"]
        .as_array()
        .unwrap()
        .clone()
}

/// Misses are collected so that a failure shows them all.
fn close(got: f64, want: f64, tol: f64, what: &str, misses: &mut Vec<String>) {
    if (got - want).abs() > tol {
        misses.push(format!(
            "{what}: got {got:.5}, Captum {want:.5} (tolerance {tol:.5})"
        ));
    }
}

/// How `seq_attr` is held to Captum's.
#[derive(Clone, Copy, PartialEq)]
enum SeqTolerance {
    /// The issue's tolerance, as every entry.
    Entry,
    /// The sum of its rows' tolerances: `seq_attr` is the sum of the rows, each held to the
    /// issue's tolerance. For SmolLM2's integrated gradients, whose integrand spikes near its
    /// token-0 baseline (Captum's own convergence delta is 8.7 on the first row): there the
    /// ~3e-5 differences between two f32 forward passes grow to ~1% of an attribution, and
    /// seven rows' misses of one sign add up.
    RowsSummed,
}

/// The prompt positions Captum attributes (all but the skipped tokens).
fn positions(case: &Value) -> Vec<usize> {
    ids(&case["input_positions"])
        .into_iter()
        .map(|p| p as usize)
        .collect()
}

fn compare(r: &AttributeResponse, case: &Value, what: &str, seq_tolerance: SeqTolerance) {
    let got: Vec<usize> = r.features.iter().map(|f| f.position.unwrap()).collect();
    assert_eq!(got, positions(case), "{what}: feature positions");
    assert_eq!(r.target_ids, ids(&case["target_ids"]), "{what}: target ids");
    compare_numbers(&r.seq_attr, &r.token_attr, case, what, seq_tolerance);
}

fn compare_numbers(
    seq_attr: &[f64],
    token_attr: &[Vec<f64>],
    case: &Value,
    what: &str,
    seq_tolerance: SeqTolerance,
) {
    let seq = floats(&case["seq_attr"]);
    assert_eq!(seq_attr.len(), seq.len(), "{what}: features");
    let rows = case["token_attr"].as_array().unwrap();
    let mut misses = Vec::new();
    for (i, (g, w)) in seq_attr.iter().zip(&seq).enumerate() {
        let tol = match seq_tolerance {
            SeqTolerance::Entry => captum_grad_tolerance(*w),
            SeqTolerance::RowsSummed => rows.iter().map(|row| captum_grad_tolerance(floats(row)[i])).sum(),
        };
        close(*g, *w, tol, &format!("seq_attr[{i}]"), &mut misses);
    }
    assert_eq!(token_attr.len(), rows.len(), "{what}: output tokens");
    for (k, (row, want)) in token_attr.iter().zip(rows).enumerate() {
        for (i, (g, w)) in row.iter().zip(floats(want)).enumerate() {
            close(
                *g,
                w,
                captum_grad_tolerance(w),
                &format!("token_attr[{k}][{i}]"),
                &mut misses,
            );
        }
    }
    assert!(misses.is_empty(), "{what}:\n{}", misses.join("\n"));
}

/// Completeness: each row sums to Captum's f(input) - f(baseline) within the convergence delta
/// Captum reports (plus the tolerance, per feature); our own delta is that row's miss.
fn complete(r: &AttributeResponse, case: &Value, what: &str) {
    let deltas = r
        .convergence_delta
        .as_ref()
        .expect("integrated_gradients reports deltas");
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
fn check(spec: &str, dir: &str, keep: impl Fn(&Value) -> bool, seq_tolerance: SeqTolerance) {
    let m = shared_model(spec);
    for case in cases(dir).iter().filter(|c| keep(c)) {
        let what = format!(
            "{dir} {} {} {}",
            case["method"],
            case.get("integration").unwrap_or(&Value::Null),
            case.get("note").unwrap_or(&Value::Null)
        );
        let req = captum_grad_request(case);
        let r = run(&req, m.as_ref(), &Limits::default(), &|_| {}).unwrap_or_else(|e| panic!("{what}: {e}"));
        let seq_tolerance = match req.method {
            Method::IntegratedGradients => seq_tolerance,
            _ => SeqTolerance::Entry,
        };
        compare(&r, case, &what, seq_tolerance);
        if req.method == Method::IntegratedGradients {
            complete(&r, case, &what);
        } else {
            assert!(r.convergence_delta.is_none());
        }
    }
}

#[test]
fn tiny_gpt2_matches_captum() {
    check(TINY_GPT2, TINY_GPT2, |_| true, SeqTolerance::Entry);
}

#[test]
fn every_family_matches_captum() {
    for family in FAMILIES {
        let dir = format!("tests/fixtures/{family}");
        check(&dir, &dir, |_| true, SeqTolerance::Entry);
    }
}

/// SmolLM2 (the real model): gradient × input and the 20-step trapezoid rule (the 50-step
/// Gauss–Legendre case is the bench's work).
#[test]
fn smollm2_matches_captum() {
    let keep = |c: &Value| {
        c["method"] == "gradient_x_input" || c.get("integration").is_some_and(|i| i == "riemann_trapezoid")
    };
    check(SMOLLM2, "tests/fixtures/smollm2", keep, SeqTolerance::RowsSummed);
}

/// What Captum's LayerGradientShap computes through LLMGradientAttribution
/// (`captum_grad_shap.json`; see scripts/reference/gradients.py): it interpolates the 0/1
/// interpretable tensor, so every point is the baseline, and with n samples its forward function
/// sees the target with each token repeated n times. So its row k is the gradient at the
/// baseline (alpha 0) of token `target[k // n]` after the first k repeated tokens, which is
/// what this checks with 1 and 5 samples. llm-attr's gradient_shap interpolates the embeddings
/// instead (`gradient_shap_estimates_the_path_integral`).
fn check_captum_shap(spec: &str, dir: &str, seq_tolerance: SeqTolerance) {
    let m = shared_model(spec);
    let case = &read_json(&format!("{dir}/captum_grad_shap.json"))["cases"][0];
    let prompt = ids(&case["input_ids"]);
    let positions = positions(case);
    let mut baseline = prompt.clone();
    for &p in &positions {
        baseline[p] = case["baseline_token_id"].as_u64().unwrap() as u32;
    }
    let target = ids(&case["target_ids"]);
    for (n, want) in [(1, case), (5, &case["n_samples_5"])] {
        let repeated: Vec<u32> = target.iter().flat_map(|&t| [t; 5].into_iter().take(n)).collect();
        let token_attr: Vec<Vec<f64>> = (0..target.len())
            .map(|k| {
                let job = GradientJob {
                    prompt: prompt.clone(),
                    baseline: Some(baseline.clone()),
                    target: repeated[..=k].to_vec(),
                    alphas: vec![0.0],
                    combine: Combine::Weighted(vec![1.0]),
                    prob: false,
                };
                let rows = m.gradients(&job, &|_, _| Ok(())).unwrap();
                positions.iter().map(|&p| rows[k][p]).collect()
            })
            .collect();
        let seq_attr: Vec<f64> = (0..positions.len())
            .map(|i| token_attr.iter().map(|r| r[i]).sum())
            .collect();
        let what = format!("{dir} Captum's gradient_shap with {n} samples");
        compare_numbers(&seq_attr, &token_attr, want, &what, seq_tolerance);
    }
}

#[test]
fn captum_gradient_shap_is_the_gradient_at_the_baseline() {
    check_captum_shap(TINY_GPT2, TINY_GPT2, SeqTolerance::Entry);
    for family in FAMILIES {
        let dir = format!("tests/fixtures/{family}");
        check_captum_shap(&dir, &dir, SeqTolerance::Entry);
    }
    check_captum_shap(SMOLLM2, "tests/fixtures/smollm2", SeqTolerance::RowsSummed);
}

/// Gradient SHAP through the service: its points come from the seed, and its mean estimates
/// the integral integrated gradients computes, within its own standard errors.
#[test]
fn gradient_shap_estimates_the_path_integral() {
    let m = shared_model(TINY_GPT2);
    let attribute = |method: Method, n_samples: Option<usize>, n_steps: Option<usize>, seed: u64| {
        let req = AttributeRequest {
            text: Some("Georg from Germany applied for".into()),
            target: Some(" a job".into()),
            method,
            n_samples,
            n_steps,
            seed: Some(seed),
            ..Default::default()
        };
        run(&req, m.as_ref(), &Limits::default(), &|_| {}).unwrap()
    };
    let ig = attribute(Method::IntegratedGradients, None, Some(64), 0);
    let gs = attribute(Method::GradientShap, Some(400), None, 3);
    let seq_se = gs.seq_attr_stderr.as_ref().expect("standard errors");
    let token_se = gs.token_attr_stderr.as_ref().expect("standard errors");
    let cells = |r: &AttributeResponse| -> Vec<f64> {
        r.seq_attr
            .iter()
            .chain(r.token_attr.iter().flatten())
            .copied()
            .collect()
    };
    let se: Vec<f64> = seq_se.iter().chain(token_se.iter().flatten()).copied().collect();
    for (i, ((g, w), s)) in cells(&gs).iter().zip(cells(&ig)).zip(&se).enumerate() {
        assert!(*s > 0.0, "cell {i}: a standard error of 0");
        assert!(
            (g - w).abs() <= 4.5 * s,
            "cell {i}: {g} vs the integral {w}, stderr {s}"
        );
    }
    // The same path's change: each row's delta is its sum's miss.
    let (gd, id) = (gs.convergence_delta.unwrap(), ig.convergence_delta.unwrap());
    for (k, (g_row, i_row)) in gs.token_attr.iter().zip(&ig.token_attr).enumerate() {
        let change = i_row.iter().sum::<f64>() - id[k];
        assert!(
            (g_row.iter().sum::<f64>() - change - gd[k]).abs() < 1e-9,
            "row {k}"
        );
    }
    // The seed fixes the points.
    let again = attribute(Method::GradientShap, Some(400), None, 3);
    assert_eq!(again.token_attr, gs.token_attr);
    let other = attribute(Method::GradientShap, Some(400), None, 4);
    assert_ne!(other.token_attr, gs.token_attr);
    // One point: no spread to estimate.
    let one = attribute(Method::GradientShap, Some(1), None, 3);
    assert!(one.seq_attr_stderr.is_none() && one.token_attr_stderr.is_none());
    assert_eq!(gs.stats.coalitions, 400);
    assert_eq!(gs.stats.evaluations, 400 * gs.target_ids.len());
    // A plan counts the same without running the model.
    let req = AttributeRequest {
        text: Some("Georg from Germany applied for".into()),
        target: Some(" a job".into()),
        method: Method::GradientShap,
        n_samples: Some(400),
        contrast_target: Some(" nothing".into()),
        ..Default::default()
    };
    let planned = llm_attr::run::plan(&req, m.as_ref(), &Limits::default()).unwrap();
    let ran = run(&req, m.as_ref(), &Limits::default(), &|_| {}).unwrap();
    assert_eq!(
        (
            planned.coalitions,
            planned.evaluations,
            planned.distinct_sequences,
            planned.tokens
        ),
        (
            ran.stats.coalitions,
            ran.stats.evaluations,
            ran.stats.unique_sequences,
            ran.stats.tokens_scored
        )
    );
}

/// Few points stack a copy per target token into one forward and one backward pass
/// (`Passes::Stacked`); many run a backward pass per token. Both give the same rows, on
/// GPT-2 and on a family with RoPE and grouped attention, in one chunk and in several.
#[test]
fn stacked_passes_give_the_rows_of_a_pass_per_token() {
    for spec in [TINY_GPT2.to_string(), "tests/fixtures/llama".to_string()] {
        let m = shared_model(&spec);
        for (baseline, combine) in [
            (Some(vec![0; 5]), Combine::Weighted(vec![0.25, 0.5, 0.25])),
            (None, Combine::EachPoint),
        ] {
            let job = GradientJob {
                prompt: vec![11, 25, 301, 47, 9],
                baseline,
                target: vec![64, 7, 120, 33],
                alphas: vec![0.1, 0.5, 0.9],
                combine,
                prob: false,
            };
            let run = |passes, token_budget| {
                let plan = GradientPlan {
                    stack_up_to: 0,
                    token_budget,
                }
                .forced(passes);
                m.gradients_laid_out(&job, plan, &|_, _| Ok(())).unwrap()
            };
            let per_token = run(Passes::PerToken, 1024);
            let scale = per_token.iter().flatten().fold(0.0f64, |a, v| a.max(v.abs()));
            assert!(scale > 0.0, "{spec}: no gradient at all");
            // 3 points x 4 copies x 8 tokens: one chunk, then a point per chunk.
            for budget in [1024, 40] {
                let stacked = run(Passes::Stacked, budget);
                assert_eq!(stacked.len(), per_token.len());
                for (k, (s, p)) in stacked.iter().zip(&per_token).enumerate() {
                    for (i, (s, p)) in s.iter().zip(p).enumerate() {
                        assert!(
                            (s - p).abs() <= 1e-5 * scale,
                            "{spec} budget {budget} row {k} position {i}: stacked {s}, per token {p}"
                        );
                    }
                }
            }
        }
    }
}

/// Bad input: a clear error naming the field.
#[test]
fn gradient_errors_name_the_field() {
    let m = shared_model(TINY_GPT2);
    let text = |method: Method| AttributeRequest {
        text: Some("Georg from Germany".into()),
        target: Some(" is".into()),
        method,
        ..Default::default()
    };
    let expect = |req: &AttributeRequest, field: &str, words: &str| {
        let e = run(req, m.as_ref(), &Limits::default(), &|_| {}).unwrap_err();
        assert_eq!(e.field(), Some(field), "{e}");
        assert!(e.to_string().contains(words), "{e}");
    };
    // A template's baseline strings do not apply: its tokens are replaced one by one.
    for method in [Method::IntegratedGradients, Method::GradientXInput] {
        let mut r = text(method);
        r.text = None;
        r.template = Some("{name} from Germany".into());
        r.values = Some([("name".to_string(), "Georg".to_string())].into_iter().collect());
        r.baselines = Some(
            [("name".to_string(), Baseline::One("Alex".into()))]
                .into_iter()
                .collect(),
        );
        expect(&r, "baselines", "baseline strings do not apply");
    }
    let mut r = text(Method::IntegratedGradients);
    r.n_steps = Some(0);
    expect(&r, "n_steps", "at least 1");
    r.n_steps = Some(Limits::default().max_n_steps + 1);
    expect(&r, "n_steps", "limit");
    r.n_steps = Some(1);
    r.integration = Some(Integration::RiemannMiddle);
    expect(&r, "n_steps", "at least 2");
    r.integration = None;
    r.n_steps = Some(20);
    let few = Limits {
        max_sequences: 10,
        ..Limits::default()
    };
    let e = run(&r, m.as_ref(), &few, &|_| {}).unwrap_err();
    assert_eq!(e.field(), Some("n_steps"), "{e}");
    assert!(e.to_string().contains("20 gradients"), "{e}");
    let mut r = text(Method::GradientXInput);
    r.n_steps = Some(10);
    expect(&r, "n_steps", "only for integrated_gradients");
    let mut r = text(Method::FeatureAblation);
    r.integration = Some(Integration::Gausslegendre);
    expect(&r, "integration", "only for integrated_gradients");
    let mut r = text(Method::IntegratedGradients);
    r.n_samples = Some(5);
    expect(&r, "n_samples", "deterministic");
    let mut r = text(Method::GradientShap);
    r.n_samples = Some(0);
    expect(&r, "n_samples", "at least 1");
    r.n_samples = Some(30);
    let e = run(&r, m.as_ref(), &few, &|_| {}).unwrap_err();
    assert_eq!(e.field(), Some("n_samples"), "{e}");
    assert!(e.to_string().contains("use fewer n_samples"), "{e}");
    r.n_samples = None;
    r.num_trials = Some(3);
    expect(&r, "num_trials", "raise n_samples");
    let mut r = text(Method::GradientShap);
    r.n_steps = Some(10);
    expect(&r, "n_steps", "only for integrated_gradients");
    let mut r = text(Method::GradientXInput);
    r.contrast_target = Some(" is".into());
    expect(&r, "contrast_target", "same continuation");
    r.contrast_target = Some(" is".repeat(Limits::default().max_tokens_per_sequence));
    expect(&r, "contrast_target", "per sequence");
    // An unknown rule is refused while the JSON is read, at the field.
    let body = r#"{"text": "a b", "method": "integrated_gradients", "integration": "simpson"}"#;
    let e = serde_path_to_error::deserialize::<_, AttributeRequest>(&mut serde_json::Deserializer::from_str(
        body,
    ))
    .unwrap_err();
    assert_eq!(e.path().to_string(), "integration");
    assert!(e.inner().to_string().contains("riemann_trapezoid"), "{e}");
    // Captum's short names.
    let ig: AttributeRequest = serde_json::from_str(r#"{"text": "a", "method": "ig"}"#).unwrap();
    assert_eq!(ig.method, Method::IntegratedGradients);
}

/// Template input: a placeholder's attribution is the sum of its tokens' attributions, as text
/// input gives them when every other token is skipped (so both start from the same baseline).
#[test]
fn a_placeholder_gets_the_sum_over_its_tokens() {
    let m = shared_model(TINY_GPT2);
    let tok = m.tokenizer();
    let values = [("name", "Georg Smith"), ("country", "Germany")];
    for method in [
        Method::IntegratedGradients,
        Method::GradientXInput,
        Method::GradientShap,
    ] {
        let template = AttributeRequest {
            template: Some("{name} from {country} applied for".into()),
            values: Some(
                values
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            target: Some(" a job".into()),
            method,
            n_steps: (method == Method::IntegratedGradients).then_some(16),
            ..Default::default()
        };
        let by_placeholder = run(&template, m.as_ref(), &Limits::default(), &|_| {}).unwrap();
        let fixed: Vec<TokenRef> = [" from", " applied", " for"]
            .iter()
            .map(|t| TokenRef::Id(tok.encode(t).unwrap()[0]))
            .collect();
        let text = AttributeRequest {
            text: Some("Georg Smith from Germany applied for".into()),
            skip_tokens: Some(fixed),
            template: None,
            values: None,
            ..template.clone()
        };
        let by_token = run(&text, m.as_ref(), &Limits::default(), &|_| {}).unwrap();
        // The text's features: the name's tokens, then the country's.
        let n_name = tok.encode("Georg Smith").unwrap().len();
        assert!(n_name > 1, "a placeholder of several tokens");
        assert_eq!(
            by_token.features.len(),
            n_name + tok.encode(" Germany").unwrap().len()
        );
        assert_eq!(by_placeholder.features.len(), 2);
        for (row, (p, t)) in by_placeholder
            .token_attr
            .iter()
            .zip(&by_token.token_attr)
            .enumerate()
        {
            let want = [t[..n_name].iter().sum::<f64>(), t[n_name..].iter().sum()];
            for (f, (&got, want)) in p.iter().zip(want).enumerate() {
                assert!(
                    (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                    "{method:?} row {row} feature {f}: {got} vs {want}"
                );
            }
        }
        let deltas = |r: &AttributeResponse| r.convergence_delta.clone().unwrap_or_default();
        for (a, b) in deltas(&by_placeholder).iter().zip(deltas(&by_token)) {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{method:?}: delta {a} vs {b}"
            );
        }
    }
}

/// Gradient × input's rows and integrated gradients' completeness on tiny-gpt2 with a
/// generated target, a baseline token and the probability as the attribution target.
#[test]
fn integrated_gradients_complete_with_any_target() {
    let m = shared_model(TINY_GPT2);
    for attr_target in [
        llm_attr::request::AttrTarget::LogProb,
        llm_attr::request::AttrTarget::Prob,
    ] {
        let req = AttributeRequest {
            text: Some("Georg from Germany applied for".into()),
            max_new_tokens: Some(3),
            baseline_token: Some(TokenRef::Text("Ġthe".into())),
            method: Method::IntegratedGradients,
            n_steps: Some(64),
            attr_target,
            ..Default::default()
        };
        let r = run(&req, m.as_ref(), &Limits::default(), &|_| {}).unwrap();
        assert!(r.generated_target);
        assert_eq!(r.features[0].baselines, vec![" the".to_string()]);
        let deltas = r.convergence_delta.as_ref().unwrap();
        assert_eq!(deltas.len(), r.target_ids.len());
        for (k, d) in deltas.iter().enumerate() {
            assert!(d.abs() < 1e-2, "row {k}: delta {d}");
        }
        for (i, s) in r.seq_attr.iter().enumerate() {
            let rows: f64 = r.token_attr.iter().map(|row| row[i]).sum();
            assert!((s - rows).abs() < 1e-9);
        }
    }
}

/// A contrast adds its own rows, negated: the rows, deltas and log-probs of two requests, one
/// per continuation.
#[test]
fn a_contrast_subtracts_its_rows() {
    let m = shared_model(TINY_GPT2);
    for method in [
        Method::IntegratedGradients,
        Method::GradientXInput,
        Method::GradientShap,
    ] {
        let req = |target: &str, contrast: Option<&str>| AttributeRequest {
            template: Some("{name} from {country} applied for".into()),
            values: Some(
                [("name", "Georg"), ("country", "Germany")]
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            target: Some(target.into()),
            contrast_target: contrast.map(str::to_string),
            method,
            n_steps: (method == Method::IntegratedGradients).then_some(16),
            ..Default::default()
        };
        let attribute = |r: &AttributeRequest| run(r, m.as_ref(), &Limits::default(), &|_| {}).unwrap();
        let both = attribute(&req(" a job", Some(" nothing at all")));
        let target = attribute(&req(" a job", None));
        let contrast = attribute(&req(" nothing at all", None));
        let negated = |rows: &[Vec<f64>]| -> Vec<Vec<f64>> {
            rows.iter().map(|r| r.iter().map(|v| -v).collect()).collect()
        };
        let mut rows = target.token_attr.clone();
        rows.extend(negated(&contrast.token_attr));
        assert_eq!(
            both.token_attr.len(),
            target.target_ids.len() + contrast.target_ids.len()
        );
        let near = |a: &[f64], b: &[f64], what: &str| {
            assert_eq!(a.len(), b.len(), "{method:?} {what}");
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() <= 1e-9 * y.abs().max(1.0),
                    "{method:?} {what}: {x} vs {y}"
                );
            }
        };
        for (k, (got, want)) in both.token_attr.iter().zip(&rows).enumerate() {
            near(got, want, &format!("row {k}"));
        }
        let difference: Vec<f64> = target
            .seq_attr
            .iter()
            .zip(&contrast.seq_attr)
            .map(|(t, c)| t - c)
            .collect();
        near(&both.seq_attr, &difference, "seq_attr");
        if method != Method::GradientXInput {
            let mut deltas = target.convergence_delta.clone().unwrap();
            deltas.extend(contrast.convergence_delta.as_ref().unwrap().iter().map(|d| -d));
            near(both.convergence_delta.as_ref().unwrap(), &deltas, "deltas");
        }
        assert_eq!(both.target_log_probs, target.target_log_probs);
        assert_eq!(both.contrast_log_probs.as_ref(), Some(&contrast.target_log_probs));
        assert_eq!(both.contrast_ids.as_ref(), Some(&contrast.target_ids));
        assert_eq!(
            both.contrast_output_tokens.as_ref(),
            Some(&contrast.output_tokens)
        );
    }
}

/// An audit attributes every cell with a gradient method as that cell's request alone would:
/// no baselines (the placeholders' tokens start from token id 0), the first target contrasted
/// with the second.
#[test]
fn an_audit_cell_with_gradients_equals_its_request_run_alone() {
    use llm_attr::audit::{self, AuditRequest};
    let m = shared_model(TINY_GPT2);
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let req = AuditRequest {
        template: Some("{name} from {country} applied for".into()),
        values: Some(
            [("country".to_string(), "Germany".to_string())]
                .into_iter()
                .collect(),
        ),
        sweep: [("name".to_string(), strings(&["Georg", "Lakisha"]))]
            .into_iter()
            .collect(),
        targets: strings(&[" a job", " nothing"]),
        method: Some(Method::IntegratedGradients),
        n_steps: Some(8),
        integration: Some(Integration::RiemannMiddle),
        ..Default::default()
    };
    let result = audit::run(&req, m.as_ref(), &Limits::default(), &|_| {}).unwrap();
    assert_eq!(result.cells.len(), 2);
    for cell in &result.cells {
        let got = cell.attribution.as_ref().expect("a method was given");
        let alone = AttributeRequest {
            template: req.template.clone(),
            values: Some(
                [
                    ("name".to_string(), cell.values["name"].clone()),
                    ("country".to_string(), "Germany".to_string()),
                ]
                .into_iter()
                .collect(),
            ),
            target: Some(" a job".into()),
            contrast_target: Some(" nothing".into()),
            method: Method::IntegratedGradients,
            n_steps: Some(8),
            integration: Some(Integration::RiemannMiddle),
            ..Default::default()
        };
        let want = run(&alone, m.as_ref(), &Limits::default(), &|_| {}).unwrap();
        assert_eq!(got.token_attr, want.token_attr, "{:?}", cell.values);
        assert_eq!(got.convergence_delta, want.convergence_delta);
        assert_eq!(
            got.token_attr.len(),
            got.target_ids.len() + got.contrast_ids.as_ref().unwrap().len()
        );
        assert_eq!(got.stats.coalitions, 8);
    }
}

/// A long target's passes look at `progress` between target tokens (waves of them, one per
/// thread), not only after the chunk:
/// a job stopped at its third look stops there (issue 18: a 200-token gradient × input ran to
/// its end after its request was gone, since its one chunk held every token's pass).
#[test]
fn a_gradient_job_can_stop_between_target_tokens() {
    let m = shared_model(TINY_GPT2);
    let job = GradientJob {
        prompt: (100..110).collect(),
        baseline: None,
        target: (200..240).collect(),
        alphas: vec![1.0],
        combine: Combine::Weighted(vec![1.0]),
        prob: false,
    };
    let looks = std::cell::Cell::new(0);
    let rows = m
        .gradients(&job, &|_, _| {
            looks.set(looks.get() + 1);
            Ok(())
        })
        .unwrap();
    assert_eq!(rows.len(), 40);
    // The CPU runs the passes in waves, one pass per thread; it looks between waves.
    let waves = 40usize.div_ceil(rayon::current_num_threads());
    assert!(
        looks.get() >= waves,
        "{} looks at progress for {waves} waves of passes",
        looks.get()
    );
    looks.set(0);
    let stopped = m.gradients(&job, &|_, _| {
        looks.set(looks.get() + 1);
        if looks.get() == 3 {
            return Err(llm_attr::Error::Cancelled);
        }
        Ok(())
    });
    assert_eq!(stopped.unwrap_err(), llm_attr::Error::Cancelled);
    assert_eq!(looks.get(), 3);
}
