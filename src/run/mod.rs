//! Runs one attribute request end to end: input -> method -> evaluator -> scorer.
//!
//! `evaluator` turns the methods' coalitions into prompts and scores them; `progress` is what
//! both report as sequences are scored; `plan` counts what a request would score.

pub(crate) mod evaluator;
mod gradient;
mod hierarchy;
mod plan;
mod progress;
mod warnings;

use std::sync::Arc;
use std::time::Instant;

use crate::attribution::{self, Evaluator, MethodFacts};
use crate::error::{Error, Result};
use crate::input::chat::sandbox::Sandbox;
use crate::input::{Input, Layouts};
use crate::model::Tokenizer;
use crate::request::{AttrTarget, AttributeRequest, AttributeResponse, BaselineSampling, Method};
use crate::scorer::Scorer;
pub(crate) use evaluator::check_sequence;
use evaluator::{exact_count, SequenceEvaluator};
pub(crate) use plan::DryScorer;
pub use plan::{plan, Plan};
pub use progress::Progress;

/// Per-request limits; the server maps its flags onto these.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Features of one request (exact methods may allow fewer).
    pub max_features: usize,
    /// Distinct sequences one request may send to the model.
    pub max_sequences: usize,
    /// Tokens of one sequence (prompt + target).
    pub max_tokens_per_sequence: usize,
    /// Largest `n_samples`.
    pub max_n_samples: usize,
    /// Largest `num_trials`.
    pub max_num_trials: usize,
    /// Largest `max_new_tokens` (tokens of a generated target).
    pub max_new_tokens: usize,
    /// Interpolation steps of integrated_gradients.
    pub max_n_steps: usize,
    /// Cells of one audit (the product of its sweep lists).
    pub max_audit_cells: usize,
    /// Where chat templates given in requests render; `None` refuses them.
    pub request_templates: Option<Arc<Sandbox>>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_features: 64,
            max_sequences: 20_000,
            max_tokens_per_sequence: 1024,
            max_n_samples: 2_000,
            max_num_trials: 20,
            max_new_tokens: 100,
            max_n_steps: 1_000,
            max_audit_cells: 1000,
            request_templates: None,
        }
    }
}

/// Default length of a generated target.
pub(crate) const DEFAULT_MAX_NEW_TOKENS: usize = 25;
/// `baseline_sampling` defaults to `exact` while the exact product needs at most this many
/// distinct sequences (and fits the request's limit).
pub(crate) const EXACT_DEFAULT_MAX_SEQUENCES: usize = 4096;

fn check_count(field: &str, value: Option<usize>, default: usize, max: usize) -> Result<usize> {
    let v = value.unwrap_or(default);
    if v == 0 {
        return Err(Error::invalid(field, "must be at least 1"));
    }
    if v > max {
        return Err(Error::too_large(
            field,
            format!("{v} is more than the limit of {max}"),
        ));
    }
    Ok(v)
}

/// The ids of a continuation given as text (`field` names it in errors): never empty.
pub(crate) fn encode_text(field: &str, text: &str, tokenizer: &Tokenizer) -> Result<Vec<u32>> {
    if text.is_empty() {
        return Err(Error::invalid(
            field,
            "it is empty; give the text to score, or leave it out",
        ));
    }
    let ids = tokenizer.encode(text)?;
    if ids.is_empty() {
        return Err(Error::invalid(field, format!("{text:?} tokenizes to nothing")));
    }
    Ok(ids)
}

/// The contrast's ids, when the request has one: not the target's, and fitting after `full`
/// (the unperturbed prompt) as the target does.
fn contrast_ids(
    request: &AttributeRequest,
    input: &Input,
    full: &[u32],
    target: &[u32],
    scorer: &dyn Scorer,
    limits: &Limits,
) -> Result<Option<Vec<u32>>> {
    let Some(text) = &request.contrast_target else {
        return Ok(None);
    };
    let ids = encode_text("contrast_target", text, scorer.tokenizer())?;
    if ids == target {
        return Err(Error::invalid(
            "contrast_target",
            "it is the same continuation as the target; contrast the target with a different one",
        ));
    }
    check_length(
        input,
        full.len(),
        ids.len(),
        (sequence_limit(scorer, limits), scorer.context_length()),
        "contrast_target",
    )?;
    Ok(Some(ids))
}

/// Tokens one sequence may have: the request limit, or the model's context if shorter.
fn sequence_limit(scorer: &dyn Scorer, limits: &Limits) -> usize {
    limits.max_tokens_per_sequence.min(scorer.context_length())
}

/// Distinct sequences `exact` baseline sampling would need for `method`, saturating (an upper
/// bound for the sampling methods).
fn exact_sequences(input: &Input, method: Method, n_samples: usize, trials: usize) -> usize {
    let n = input.n_features();
    let all_absent = vec![false; n];
    let product = exact_count(input, &all_absent);
    // Every coalition together: prod over slots of (baselines + 1).
    let everything = input
        .slots
        .iter()
        .fold(1usize, |a, s| a.saturating_mul(s.n_baselines + 1));
    match method {
        Method::FeatureAblation => (0..n).fold(1usize, |acc, i| {
            let mut c = vec![true; n];
            c[i] = false;
            acc.saturating_add(exact_count(input, &c))
        }),
        Method::ShapleyValues => everything,
        _ => everything.min(
            (method.facts().evaluations)(n, n_samples)
                .saturating_mul(trials)
                .saturating_mul(product),
        ),
    }
}

/// The unperturbed sequence (the prompt, then a target of `target` tokens, the last of which
/// is never fed) must fit `limit`. The prompt is to blame when it leaves no room for a target,
/// else `target_field` (`target`, or `max_new_tokens` for a generated target).
fn check_length(
    input: &Input,
    prompt: usize,
    target: usize,
    (limit, scorer_context): (usize, usize),
    target_field: &str,
) -> Result<()> {
    let len = prompt + target - 1;
    if len <= limit {
        return Ok(());
    }
    let (field, target) = match target_field {
        _ if prompt >= limit => (input.features_field(), format!("a target of {target} tokens")),
        "max_new_tokens" => (target_field, format!("up to {target} generated tokens")),
        _ => (target_field, format!("a target of {target} tokens")),
    };
    Err(Error::too_large(
        field,
        format!(
            "the prompt ({prompt} tokens) and {target} need {len} tokens, {} tokens over the limit of \
             {limit} tokens per sequence ({})",
            len - limit,
            limit_source(limit, scorer_context)
        ),
    ))
}

/// What sets a sequence limit: the server's flag, or the model's context when it is shorter.
fn limit_source(limit: usize, context_length: usize) -> &'static str {
    if limit >= context_length {
        "the model's context length"
    } else {
        "--max-tokens"
    }
}

/// `n_steps` and `integration` only for the methods that integrate.
fn check_integration_fields(request: &AttributeRequest, facts: &MethodFacts) -> Result<()> {
    if facts.gradient.is_some_and(|g| g.path.takes_steps()) {
        return Ok(());
    }
    for (field, given) in [
        ("n_steps", request.n_steps.is_some()),
        ("integration", request.integration.is_some()),
    ] {
        if given {
            return Err(Error::invalid(
                field,
                format!("only for integrated_gradients, not {}", request.method.name()),
            ));
        }
    }
    Ok(())
}

/// The request's input (its split placeholders cut as `layouts` says, when given), if it has no
/// more features than the limits allow.
fn parse_input(
    request: &AttributeRequest,
    scorer: &dyn Scorer,
    limits: &Limits,
    layouts: Option<&Layouts>,
) -> Result<Input> {
    let input = Input::with_layouts(
        request,
        scorer.tokenizer(),
        limits.request_templates.as_deref(),
        layouts,
    )?;
    let n = input.n_features();
    if n <= limits.max_features {
        return Ok(input);
    }
    // Segments: blame the split that makes the most.
    let mut segments = std::collections::BTreeMap::<&str, usize>::new();
    for seg in input.features.iter().flat_map(|f| &f.segments) {
        *segments.entry(seg.placeholder.as_str()).or_default() += 1;
    }
    match segments.iter().max_by_key(|(_, k)| **k) {
        Some((name, k)) => Err(Error::too_large(
            format!("split.{name}"),
            format!(
                "`{name}` splits into {k} segments, {n} features in all, more than the limit of {} \
                 (--max-features): split it into coarser segments, or attribute level by level with \
                 `hierarchy` (e.g. [\"paragraph\", \"sentence\"]) and `top_k`",
                limits.max_features
            ),
        )),
        None => Err(Error::too_large(
            input.features_field(),
            format!("{n} features are more than the limit of {}", limits.max_features),
        )),
    }
}

/// The target's ids, and whether they are the model's greedy continuation of `full` (the
/// unperturbed prompt) because the request gave no target.
fn resolve_target(
    request: &AttributeRequest,
    input: &Input,
    full: &[u32],
    scorer: &dyn Scorer,
    limits: &Limits,
) -> Result<(Vec<u32>, bool)> {
    resolve_target_as(request, input, full, scorer, limits, None)
}

/// [`resolve_target`], or `given` (an earlier level's target) checked against this prompt.
fn resolve_target_as(
    request: &AttributeRequest,
    input: &Input,
    full: &[u32],
    scorer: &dyn Scorer,
    limits: &Limits,
    given: Option<&(Vec<u32>, bool)>,
) -> Result<(Vec<u32>, bool)> {
    let tokenizer = scorer.tokenizer();
    if let Some((ids, generated)) = given {
        let field = if *generated { "max_new_tokens" } else { "target" };
        let limit = (sequence_limit(scorer, limits), scorer.context_length());
        check_length(input, full.len(), ids.len(), limit, field)?;
        return Ok((ids.clone(), *generated));
    }
    let limit = (sequence_limit(scorer, limits), scorer.context_length());
    match &request.target {
        Some(t) => {
            let ids = encode_text("target", t, tokenizer)?;
            check_length(input, full.len(), ids.len(), limit, "target")?;
            Ok((ids, false))
        }
        None => {
            let max_new = check_count(
                "max_new_tokens",
                request.max_new_tokens,
                DEFAULT_MAX_NEW_TOKENS,
                limits.max_new_tokens,
            )?;
            // Before generating: the longest target it may produce must fit.
            check_length(input, full.len(), max_new, limit, "max_new_tokens")?;
            if scorer.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let ids = scorer.generate(full, max_new)?;
            if ids.is_empty() {
                return Err(Error::invalid(
                    "target",
                    "the model generated nothing to attribute; give a target",
                ));
            }
            Ok((ids, true))
        }
    }
}

/// What a level of a `hierarchy` fixes for the run: how the split placeholders are cut, and
/// the target (generated once, at the first level).
#[derive(Debug, Clone, Default)]
pub(crate) struct LevelSetup {
    pub layouts: Option<Layouts>,
    pub target: Option<(Vec<u32>, bool)>,
}

/// The attributed quantity: context_cite's is always the logit-probability; the gradient
/// methods differentiate log p or p only.
fn attr_target(request: &AttributeRequest, facts: &MethodFacts) -> Result<AttrTarget> {
    match (request.method, request.attr_target) {
        (Method::ContextCite, AttrTarget::Prob) => Err(Error::invalid(
            "attr_target",
            "context_cite fits ContextCite's response, the target's logit-probability: leave \
             attr_target out (or give logit_prob)",
        )),
        (Method::ContextCite, _) => Ok(AttrTarget::LogitProb),
        (_, AttrTarget::LogitProb) if facts.gradient.is_some() => Err(Error::invalid(
            "attr_target",
            format!(
                "{} differentiates log_prob or prob, not logit_prob",
                request.method.name()
            ),
        )),
        (_, t) => Ok(t),
    }
}

/// Runs `request` against `scorer`. `progress` is called as sequences are scored.
pub fn run(
    request: &AttributeRequest,
    scorer: &dyn Scorer,
    limits: &Limits,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<AttributeResponse> {
    hierarchy::check_fields(request)?;
    if request.hierarchy.is_some() {
        return hierarchy::run(request, scorer, limits, progress);
    }
    run_level(request, scorer, limits, progress, &LevelSetup::default())
}

/// One attribution, with the split placeholders cut and the target as `setup` says.
fn run_level(
    request: &AttributeRequest,
    scorer: &dyn Scorer,
    limits: &Limits,
    progress: &(dyn Fn(Progress) + Sync),
    setup: &LevelSetup,
) -> Result<AttributeResponse> {
    let started = Instant::now();
    let method = request.method;
    let facts = method.facts();
    check_integration_fields(request, &facts)?;
    let attr_target = attr_target(request, &facts)?;
    if let Some(g) = facts.gradient {
        if !scorer.info().gradients {
            return Err(Error::invalid(
                "method",
                format!(
                    "{} needs the model's gradients, which a model served by an inference \
                     server does not give; use a perturbation method",
                    method.name()
                ),
            ));
        }
        return gradient::run(request, &facts, g, scorer, limits, progress, started);
    }
    let n_samples = check_count(
        "n_samples",
        request.n_samples,
        facts.default_n_samples,
        limits.max_n_samples,
    )?;
    let trials = check_count("num_trials", request.num_trials, 1, limits.max_num_trials)?;
    let tokenizer = scorer.tokenizer();
    let input = parse_input(request, scorer, limits, setup.layouts.as_ref())?;
    let n = input.n_features();
    method.check_features(n, n_samples, limits.max_sequences)?;

    let sampling = match request.baseline_sampling {
        _ if input.single_baselines() => BaselineSampling::Exact,
        Some(s) => s,
        None => {
            let need = exact_sequences(&input, method, n_samples, trials);
            if need <= EXACT_DEFAULT_MAX_SEQUENCES.min(limits.max_sequences) {
                BaselineSampling::Exact
            } else {
                BaselineSampling::Sample
            }
        }
    };
    let seed = request.seed.unwrap_or(0);

    let full = input.render(tokenizer, &vec![None; input.slots.len()])?;
    let (target_ids, generated) =
        resolve_target_as(request, &input, &full, scorer, limits, setup.target.as_ref())?;
    let contrast = contrast_ids(request, &input, &full, &target_ids, scorer, limits)?;

    let mut ev = SequenceEvaluator::new(
        &input,
        scorer,
        target_ids.clone(),
        attr_target,
        sampling,
        seed,
        limits.max_sequences,
        limits.max_tokens_per_sequence,
        progress,
    )?;
    if !facts.samples {
        ev.set_limit_field("method");
    }
    if let Some(c) = &contrast {
        ev.set_contrast(c.clone());
    }
    let mut rng = attribution::method_rng(seed);
    let result = attribution::attribute_trials(method, &mut ev, n_samples, trials, &mut rng)?;
    let mut log_probs: Vec<f64> = ev.target_log_probs()?.into_iter().map(f64::from).collect();
    let contrast_log_probs = log_probs.split_off(target_ids.len());
    debug_assert_eq!(ev.n_outputs(), result.attr.len());

    let mut stats = ev.stats.clone();
    stats.seconds = started.elapsed().as_secs_f64();
    let (seq_attr_stderr, token_attr_stderr) = match result.stderr {
        Some(se) => (Some(se[0].clone()), Some(se[1..].to_vec())),
        None => (None, None),
    };
    Ok(AttributeResponse {
        model: scorer.info().spec.clone(),
        method,
        attr_target,
        baseline_sampling: sampling,
        prompt: input.prompt.clone(),
        target: match &request.target {
            Some(t) => t.clone(),
            None => tokenizer.decode(&target_ids)?,
        },
        generated_target: generated,
        output_tokens: tokenizer.pretty_tokens(&target_ids),
        target_ids,
        features: input.features.clone(),
        target_log_prob: log_probs.iter().sum(),
        target_log_probs: log_probs,
        contrast_target: request.contrast_target.clone(),
        contrast_output_tokens: contrast.as_ref().map(|c| tokenizer.pretty_tokens(c)),
        contrast_log_prob: contrast.as_ref().map(|_| contrast_log_probs.iter().sum()),
        contrast_log_probs: contrast.as_ref().map(|_| contrast_log_probs),
        contrast_ids: contrast,
        seq_attr: result.attr[0].clone(),
        token_attr: result.attr[1..].to_vec(),
        seq_attr_stderr,
        token_attr_stderr,
        convergence_delta: None,
        levels: None,
        warnings: Vec::new(),
        stats,
    })
}
