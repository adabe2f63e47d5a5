//! Runs a gradient method (integrated_gradients, gradient_x_input, gradient_shap) as Captum's
//! LLMGradientAttribution does: one row per target token, the gradient of its log-prob with
//! respect to the input embeddings, summed over the embedding per prompt token; `seq_attr` is
//! the sum of the rows. The tensors are the scorer's business ([`Scorer::gradients`]).
//!
//! Beyond Captum, template and chat input work too: a placeholder's attribution is the sum
//! over the tokens of its value ([`crate::input::Input::feature_tokens`]), and the methods
//! that start from a baseline replace each of those tokens with token id 0. A
//! `contrast_target` adds the contrast's rows, negated, so that `seq_attr` attributes
//! f(target) - f(contrast) as the perturbation methods do.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{check_count, contrast_ids, parse_input, resolve_target, Limits, Progress};
use crate::attribution::{mean_and_stderr, GradientFacts, GradientPath, MethodFacts};
use crate::error::{Error, Result};
use crate::input::FeatureTokens;
use crate::model::{Combine, GradientJob, ScoreItem};
use crate::request::{AttrTarget, AttributeRequest, AttributeResponse, BaselineSampling, Stats};
use crate::scorer::Scorer;

/// The baseline token when the request gives none: Captum's TextTokenInput default, token id 0.
const DEFAULT_BASELINE_ID: u32 = 0;

pub(super) fn run(
    request: &AttributeRequest,
    facts: &MethodFacts,
    gradient: GradientFacts,
    scorer: &dyn Scorer,
    limits: &Limits,
    progress: &(dyn Fn(Progress) + Sync),
    started: Instant,
) -> Result<AttributeResponse> {
    let method = request.method;
    let path = gradient.path;
    check_sampling_fields(request, path)?;
    let (alphas, combine) = points(request, facts, path, limits)?;
    let input = parse_input(request, scorer, limits, None)?;
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
    let contrast = contrast_ids(request, &input, &prompt, &target_ids, scorer, limits)?;
    let continuations = Continuation::all(&target_ids, contrast.as_ref());
    let outputs: usize = continuations.iter().map(|c| c.ids.len()).sum();
    let gradients = check_gradients(alphas.len(), outputs, path, limits)?;

    // The baseline: the prompt with every feature token replaced by the baseline token.
    let baseline_id = input
        .tokens()
        .and_then(|t| t.baseline)
        .unwrap_or(DEFAULT_BASELINE_ID);
    let baseline = path.starts_at_baseline().then(|| {
        let mut ids = prompt.clone();
        for &p in positions.iter().flatten() {
            ids[p] = baseline_id;
        }
        ids
    });
    let ends = score_ends(scorer, &prompt, baseline.as_ref(), &continuations)?;
    let changes = ends.changes(&continuations, request.attr_target);

    let job = GradientJob {
        prompt: prompt.clone(),
        baseline,
        // Each continuation's, in `signed_rows`.
        target: Vec::new(),
        alphas,
        combine,
        prob: request.attr_target == AttrTarget::Prob,
    };
    let by_point = signed_rows(scorer, &job, &continuations, progress)?;
    let summary = summarize(&by_point, &positions);
    let convergence_delta = path.starts_at_baseline().then(|| {
        summary
            .row_sums
            .iter()
            .zip(&changes)
            .map(|(sum, change)| sum - change)
            .collect()
    });

    let mut features = input.features.clone();
    for f in &mut features {
        f.baselines = if path.starts_at_baseline() {
            vec![tokenizer.decode(&[baseline_id])?]
        } else {
            Vec::new()
        };
    }
    let target_log_probs = ends.log_probs(0);
    let contrast_log_probs = contrast.as_ref().map(|_| ends.log_probs(1));
    let n_points = job.alphas.len();
    let tokens_scored: usize = continuations
        .iter()
        .map(|c| n_points * (prompt.len() + c.ids.len() - 1))
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
        seq_attr: summary.seq_attr,
        token_attr: summary.token_attr,
        seq_attr_stderr: summary.seq_attr_stderr,
        token_attr_stderr: summary.token_attr_stderr,
        contrast_target: request.contrast_target.clone(),
        contrast_output_tokens: contrast.as_ref().map(|c| tokenizer.pretty_tokens(c)),
        contrast_log_prob: contrast_log_probs.as_ref().map(|l| l.iter().sum()),
        contrast_log_probs,
        contrast_ids: contrast,
        levels: None,
        warnings: super::warnings::convergence(convergence_delta.as_deref(), &changes),
        convergence_delta,
        stats: Stats {
            // One gradient per output token and point.
            evaluations: gradients,
            // The distinct points of the path.
            coalitions: n_points,
            unique_sequences: n_points * continuations.len() + ends.items,
            tokens_scored: tokens_scored + ends.tokens,
            // The gradient passes reuse no prefix.
            tokens_computed: tokens_scored + ends.tokens,
            tokens_reused: 0,
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

impl Continuation {
    /// The target's rows, then the contrast's, negated: the attributed quantity is
    /// f(target) - f(contrast), as with the perturbation methods.
    fn all(target: &[u32], contrast: Option<&Vec<u32>>) -> Vec<Continuation> {
        let target = Continuation {
            ids: target.to_vec(),
            sign: 1.0,
        };
        let contrast = contrast.map(|c| Continuation {
            ids: c.clone(),
            sign: -1.0,
        });
        std::iter::once(target).chain(contrast).collect()
    }
}

/// Every continuation scored unperturbed: `at[i][0]`, continuation i's log-probs after the
/// prompt, and `at[i][1]` after the baseline (for the methods that start from one).
struct Ends {
    at: Vec<Vec<Vec<f32>>>,
    /// Sequences and tokens scored.
    items: usize,
    tokens: usize,
}

fn score_ends(
    scorer: &dyn Scorer,
    prompt: &[u32],
    baseline: Option<&Vec<u32>>,
    continuations: &[Continuation],
) -> Result<Ends> {
    let starts: Vec<&[u32]> = std::iter::once(prompt).chain(baseline.map(|b| &b[..])).collect();
    let items: Vec<ScoreItem> = continuations
        .iter()
        .flat_map(|c| {
            starts.iter().map(|s| ScoreItem {
                prompt: s.to_vec(),
                target: c.ids.clone(),
            })
        })
        .collect();
    let tokens = items.iter().map(ScoreItem::input_len).sum();
    let n = items.len();
    let scores = scorer.score(items, &|_, _| {})?;
    Ok(Ends {
        at: scores.chunks(starts.len()).map(<[_]>::to_vec).collect(),
        items: n,
        tokens,
    })
}

impl Ends {
    /// Continuation i's log-probs after the prompt.
    fn log_probs(&self, i: usize) -> Vec<f64> {
        self.at[i][0].iter().map(|&v| f64::from(v)).collect()
    }

    /// What each row's sum should come to, ±(f(input) - f(baseline)), in the rows' order (0
    /// without a baseline).
    fn changes(&self, continuations: &[Continuation], attr_target: AttrTarget) -> Vec<f64> {
        let value = |lp: f32| attr_target.of(f64::from(lp));
        continuations
            .iter()
            .zip(&self.at)
            .flat_map(|(c, at)| {
                (0..c.ids.len()).map(move |k| match at.get(1) {
                    Some(base) => c.sign * (value(at[0][k]) - value(base[k])),
                    None => 0.0,
                })
            })
            .collect()
    }
}

/// The points of the path and how they make rows: the input alone (gradient × input), a
/// quadrature rule (integrated gradients), or uniformly random points drawn from the request's
/// seed (gradient SHAP, as Captum's LayerInputBaselineXGradient draws its coefficients).
fn points(
    request: &AttributeRequest,
    facts: &MethodFacts,
    path: GradientPath,
    limits: &Limits,
) -> Result<(Vec<f64>, Combine)> {
    Ok(match path {
        GradientPath::Input => (vec![1.0], Combine::Weighted(vec![1.0])),
        GradientPath::Rule { default_n_steps } => {
            let n = check_count("n_steps", request.n_steps, default_n_steps, limits.max_n_steps)?;
            let rule = request.integration.unwrap_or_default().rule(n)?;
            (rule.alphas, Combine::Weighted(rule.weights))
        }
        GradientPath::Sampled => {
            let n = check_count(
                "n_samples",
                request.n_samples,
                facts.default_n_samples,
                limits.max_n_samples,
            )?;
            let mut rng = ChaCha8Rng::seed_from_u64(request.seed.unwrap_or(0));
            let alphas = (0..n).map(|_| rng.random::<f64>()).collect();
            (alphas, Combine::EachPoint)
        }
    })
}

/// One backward pass per output token and point: bounded like the perturbation methods'
/// sequences. Returns their number.
fn check_gradients(points: usize, outputs: usize, path: GradientPath, limits: &Limits) -> Result<usize> {
    let gradients = points.saturating_mul(outputs);
    if gradients <= limits.max_sequences {
        return Ok(gradients);
    }
    let (field, fewer) = match path.points_field() {
        Some(field) => (field, format!("fewer {field}")),
        None => ("target", "fewer".to_string()),
    };
    Err(Error::too_large(
        field,
        format!(
            "{points} points for {outputs} target tokens need {gradients} gradients, more than \
             the limit of {} (--max-sequences); use {fewer} or a shorter target",
            limits.max_sequences
        ),
    ))
}

/// `rows[s][r][p]`: point s's row r (the target's tokens, then the contrast's, negated) at
/// prompt position p. A weighted job has a single "point", its weighted sum.
fn signed_rows(
    scorer: &dyn Scorer,
    job: &GradientJob,
    continuations: &[Continuation],
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Vec<Vec<Vec<f64>>>> {
    let points = job.combine.rows_per_token(job.alphas.len());
    let prompt_len = job.prompt.len();
    let mut by_point = vec![Vec::new(); points];
    let n = continuations.len();
    for (i, c) in continuations.iter().enumerate() {
        let job = GradientJob {
            target: c.ids.clone(),
            ..job.clone()
        };
        let n_rows = job.n_rows();
        let rows = scorer.gradients(job, &|done, total| {
            progress(Progress {
                done: i * total + done,
                total: n * total,
            })
        })?;
        if rows.len() != n_rows || rows.iter().any(|r| r.len() != prompt_len) {
            return Err(Error::Internal("gradient rows of the wrong shape".into()));
        }
        // Row k * points + s is target token k at point s.
        for (r, row) in rows.into_iter().enumerate() {
            by_point[r % points].push(row.into_iter().map(|v| c.sign * v).collect());
        }
    }
    Ok(by_point)
}

/// The response's numbers from every point's rows: the mean over the points, and its standard
/// error when there are several.
struct Summary {
    seq_attr: Vec<f64>,
    token_attr: Vec<Vec<f64>>,
    seq_attr_stderr: Option<Vec<f64>>,
    token_attr_stderr: Option<Vec<Vec<f64>>>,
    /// Each row's sum over every prompt position (skipped tokens too), averaged over the
    /// points: what its convergence delta compares with f(input) - f(baseline).
    row_sums: Vec<f64>,
}

/// A feature's attribution is the sum over its tokens (one token for text input); `seq_attr`
/// is the sum of the rows. Both are averaged over the points.
fn summarize(by_point: &[Vec<Vec<f64>>], positions: &[Vec<usize>]) -> Summary {
    // Per point: seq_attr, then the token_attr rows.
    let per_point: Vec<Vec<Vec<f64>>> = by_point
        .iter()
        .map(|rows| {
            let token: Vec<Vec<f64>> = rows
                .iter()
                .map(|r| {
                    positions
                        .iter()
                        .map(|ps| ps.iter().map(|&p| r[p]).sum())
                        .collect()
                })
                .collect();
            let seq = (0..positions.len())
                .map(|f| token.iter().map(|r| r[f]).sum())
                .collect();
            std::iter::once(seq).chain(token).collect()
        })
        .collect();
    let refs: Vec<&Vec<Vec<f64>>> = per_point.iter().collect();
    let (mut mean, mut stderr) = mean_and_stderr(&refs);
    let points = by_point.len();
    let row_sums = (0..by_point[0].len())
        .map(|r| {
            by_point
                .iter()
                .map(|rows| rows[r].iter().sum::<f64>())
                .sum::<f64>()
                / points as f64
        })
        .collect();
    let token_attr = mean.split_off(1);
    let token_attr_stderr = stderr.split_off(1);
    Summary {
        seq_attr: mean.remove(0),
        token_attr,
        seq_attr_stderr: (points > 1).then(|| stderr.remove(0)),
        token_attr_stderr: (points > 1).then_some(token_attr_stderr),
        row_sums,
    }
}

/// The sampling fields: `n_samples` only for gradient SHAP, which draws its points; never
/// trials (more points do the same) or baseline sampling (there is one baseline).
fn check_sampling_fields(request: &AttributeRequest, path: GradientPath) -> Result<()> {
    let name = request.method.name();
    let sampled = path == GradientPath::Sampled;
    let why = if sampled {
        format!(
            "{name} takes its standard errors from its own points, all from one baseline; raise \
             n_samples for more points"
        )
    } else {
        format!("{name} is exact and deterministic and draws no samples")
    };
    for (field, given) in [
        ("n_samples", request.n_samples.is_some() && !sampled),
        ("num_trials", request.num_trials.is_some_and(|t| t != 1)),
        ("baseline_sampling", request.baseline_sampling.is_some()),
    ] {
        if given {
            return Err(Error::invalid(field, why));
        }
    }
    Ok(())
}
