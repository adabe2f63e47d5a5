//! Runs a gradient method (integrated_gradients, gradient_x_input) as Captum's
//! LLMGradientAttribution does: one row per target token, the gradient of its log-prob with
//! respect to the input embeddings, summed over the embedding per prompt token; `seq_attr` is
//! the sum of the rows. The tensors are the scorer's business ([`Scorer::gradients`]).
//!
//! Beyond Captum, template and chat input work too: a placeholder's attribution is the sum
//! over the tokens of its value ([`crate::input::Input::feature_tokens`]), and integrated
//! gradients start from the prompt with each of those tokens replaced by token id 0. A
//! `contrast_target` adds the contrast's rows, negated, so that `seq_attr` attributes
//! f(target) - f(contrast) as the perturbation methods do.

use std::time::Instant;

use super::{check_count, check_length, contrast_ids, parse_input, resolve_target, Limits, Progress};
use crate::attribution::integration::Rule;
use crate::attribution::GradientFacts;
use crate::error::{Error, Result};
use crate::input::FeatureTokens;
use crate::model::{GradientJob, ScoreItem};
use crate::request::{AttrTarget, AttributeRequest, AttributeResponse, BaselineSampling, Stats};
use crate::scorer::Scorer;

/// The baseline token of integrated gradients when the request gives none: Captum's
/// TextTokenInput default, token id 0.
const DEFAULT_BASELINE_ID: u32 = 0;

pub(super) fn run(
    request: &AttributeRequest,
    facts: GradientFacts,
    scorer: &dyn Scorer,
    limits: &Limits,
    progress: &(dyn Fn(Progress) + Sync),
    started: Instant,
) -> Result<AttributeResponse> {
    let method = request.method;
    no_sampling_fields(request)?;
    let n_steps = check_count(
        "n_steps",
        request.n_steps,
        facts.default_n_steps,
        limits.max_n_steps,
    )?;
    // Gradient × input: the gradient at the input itself.
    let rule = if facts.integrates {
        request.integration.unwrap_or_default().rule(n_steps)?
    } else {
        Rule {
            alphas: vec![1.0],
            weights: vec![1.0],
        }
    };
    let input = parse_input(request, scorer, limits)?;
    if request.baselines.is_some() {
        return Err(Error::invalid(
            "baselines",
            format!(
                "{} replaces each token of a placeholder's value with token id 0 (or starts from the \
                 zero embedding); baseline strings do not apply",
                method.name()
            ),
        ));
    }
    let tokenizer = scorer.tokenizer();
    let FeatureTokens {
        ids: prompt,
        positions,
    } = input.feature_tokens(tokenizer)?;
    let (target_ids, generated) = resolve_target(request, &input, &prompt, scorer, limits)?;
    let contrast = contrast_ids(request, tokenizer, &target_ids)?;
    if let Some(c) = &contrast {
        let limit = limits.max_tokens_per_sequence.min(scorer.context_length());
        check_length(&input, prompt.len(), c.len(), limit, "contrast_target")?;
    }
    // The target's rows, then the contrast's, negated: the attributed quantity is
    // f(target) - f(contrast), as with the perturbation methods.
    let continuations: Vec<Continuation> = std::iter::once(Continuation {
        ids: target_ids.clone(),
        sign: 1.0,
    })
    .chain(contrast.iter().map(|c| Continuation {
        ids: c.clone(),
        sign: -1.0,
    }))
    .collect();
    let outputs: usize = continuations.iter().map(|c| c.ids.len()).sum();
    // One backward pass per output token and step: bounded like the perturbation methods'
    // sequences.
    let gradients = n_steps.saturating_mul(outputs);
    if gradients > limits.max_sequences {
        return Err(Error::too_large(
            if facts.integrates { "n_steps" } else { "target" },
            format!(
                "{n_steps} steps for {outputs} target tokens need {gradients} gradients, more than \
                 the limit of {} (--max-sequences); use fewer steps or a shorter target",
                limits.max_sequences
            ),
        ));
    }

    // Integrated gradients start from the prompt with every feature token replaced by the
    // baseline token; gradient × input from the zero embedding.
    let baseline_id = input
        .tokens()
        .and_then(|t| t.baseline)
        .unwrap_or(DEFAULT_BASELINE_ID);
    let baseline = facts.integrates.then(|| {
        let mut ids = prompt.clone();
        for &p in positions.iter().flatten() {
            ids[p] = baseline_id;
        }
        ids
    });
    // Every continuation after the prompt, then (integrated gradients) after the baseline.
    let starts: Vec<&Vec<u32>> = std::iter::once(&prompt).chain(&baseline).collect();
    let items: Vec<ScoreItem> = continuations
        .iter()
        .flat_map(|c| {
            starts.iter().map(|s| ScoreItem {
                prompt: s.to_vec(),
                target: c.ids.clone(),
            })
        })
        .collect();
    let scored_tokens: usize = items.iter().map(ScoreItem::input_len).sum();
    let n_scored = items.len();
    let scores = scorer.score(items, &|_, _| {})?;
    let scores: Vec<&[Vec<f32>]> = scores.chunks(starts.len()).collect();
    let value = |lp: f32| match request.attr_target {
        AttrTarget::LogProb => f64::from(lp),
        AttrTarget::Prob => f64::from(lp).exp(),
    };

    let mut rows = Vec::with_capacity(outputs);
    let mut deltas = Vec::with_capacity(outputs);
    for (i, c) in continuations.iter().enumerate() {
        let job = GradientJob {
            prompt: prompt.clone(),
            baseline: baseline.clone(),
            target: c.ids.clone(),
            alphas: rule.alphas.clone(),
            weights: rule.weights.clone(),
            prob: request.attr_target == AttrTarget::Prob,
        };
        let n = continuations.len();
        let own = scorer.gradients(job, &|done, total| {
            progress(Progress {
                done: i * total + done,
                total: n * total,
            })
        })?;
        if own.len() != c.ids.len() || own.iter().any(|r| r.len() != prompt.len()) {
            return Err(Error::Internal("gradient rows of the wrong shape".into()));
        }
        for (k, r) in own.into_iter().enumerate() {
            // Captum's delta: the row's sum over every position minus f(input) - f(baseline).
            if facts.integrates {
                let change = value(scores[i][0][k]) - value(scores[i][1][k]);
                deltas.push(c.sign * (r.iter().sum::<f64>() - change));
            }
            rows.push(r.into_iter().map(|v| c.sign * v).collect::<Vec<f64>>());
        }
    }
    // A feature's attribution is the sum over its tokens (one token for text input).
    let token_attr: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| {
            positions
                .iter()
                .map(|ps| ps.iter().map(|&p| r[p]).sum())
                .collect()
        })
        .collect();
    let seq_attr = (0..positions.len())
        .map(|f| token_attr.iter().map(|r| r[f]).sum())
        .collect();

    let mut features = input.features.clone();
    for f in &mut features {
        f.baselines = if facts.integrates {
            vec![tokenizer.decode(&[baseline_id])?]
        } else {
            Vec::new()
        };
    }
    let log_probs = |i: usize| -> Vec<f64> { scores[i][0].iter().map(|&v| f64::from(v)).collect() };
    let target_log_probs = log_probs(0);
    let contrast_log_probs = contrast.as_ref().map(|_| log_probs(1));
    let tokens_scored: usize = continuations
        .iter()
        .map(|c| n_steps * (prompt.len() + c.ids.len() - 1))
        .sum();
    Ok(AttributeResponse {
        model: scorer.info().spec.clone(),
        method,
        attr_target: request.attr_target,
        baseline_sampling: BaselineSampling::Exact,
        prompt: input.prompt.clone(),
        target: match &request.target {
            Some(t) => t.clone(),
            None => tokenizer.decode(&target_ids)?,
        },
        generated_target: generated,
        output_tokens: tokenizer.pretty_tokens(&target_ids),
        features,
        target_log_prob: target_log_probs.iter().sum(),
        target_log_probs,
        seq_attr,
        token_attr,
        seq_attr_stderr: None,
        token_attr_stderr: None,
        contrast_target: request.contrast_target.clone(),
        contrast_output_tokens: contrast.as_ref().map(|c| tokenizer.pretty_tokens(c)),
        contrast_log_prob: contrast_log_probs.as_ref().map(|l| l.iter().sum()),
        contrast_log_probs,
        contrast_ids: contrast,
        convergence_delta: facts.integrates.then_some(deltas),
        stats: Stats {
            // One gradient per output token and step.
            evaluations: gradients,
            // The distinct points of the path.
            coalitions: n_steps,
            unique_sequences: n_steps * continuations.len() + n_scored,
            tokens_scored: tokens_scored + scored_tokens,
            seconds: started.elapsed().as_secs_f64(),
        },
        target_ids,
    })
}

/// A continuation whose log-prob (or prob) is differentiated: the target (`sign` 1) or the
/// contrast (`sign` -1).
struct Continuation {
    ids: Vec<u32>,
    sign: f64,
}

/// Gradient methods are exact and deterministic: the sampling fields do not apply.
fn no_sampling_fields(request: &AttributeRequest) -> Result<()> {
    for (field, given) in [
        ("n_samples", request.n_samples.is_some()),
        ("num_trials", request.num_trials.is_some_and(|t| t != 1)),
        ("baseline_sampling", request.baseline_sampling.is_some()),
    ] {
        if given {
            return Err(Error::invalid(
                field,
                format!(
                    "{} is exact and deterministic and draws no samples",
                    request.method.name()
                ),
            ));
        }
    }
    Ok(())
}
