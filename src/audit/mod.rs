//! Audits: one template over a grid of values (the product of the swept lists), scored for
//! several targets, each cell optionally averaged over contexts (the product of the other
//! placeholders' baselines) and attributed. Every cell's prompts go to the scorer together,
//! and identical prompts are scored once.
//!
//! The grid is one [`Input`] whose swept placeholders take their sweep lists, and whose other
//! placeholders take their baselines, as baselines: a cell in a context is a choice over its
//! slots, rendered as any perturbed prompt is.

pub(crate) mod export;
mod shared;
pub(crate) mod summary;
mod types;

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

pub use types::*;

use crate::error::{Error, Result};
use crate::input::Input;
use crate::model::{ScoreItem, Tokenizer};
use crate::request::{AttributeRequest, AttributeResponse, Baseline};
use crate::run::{self, DryScorer, Limits, Plan, Progress};
use crate::scorer::Scorer;
use shared::AuditScorer;
use summary::{estimate, rank_and_gap};

/// A validated audit: its grid of cells and contexts, and its targets' tokens.
struct Grid<'r> {
    request: &'r AuditRequest,
    input: Input,
    /// Swept placeholders in template order: slot, name, values.
    swept: Vec<(usize, String, Vec<String>)>,
    /// Slots averaged over, with their number of baselines (none for `single`).
    averaged: Vec<(usize, usize)>,
    /// Values of every placeholder, the swept and averaged ones filled in where not given.
    values: BTreeMap<String, String>,
    target_ids: Vec<Vec<u32>>,
}

/// The grid's distinct prompts, and for every cell and context the index of its prompt.
struct Prompts {
    ids: Vec<Vec<u32>>,
    at: Vec<Vec<usize>>,
}

/// Digits of `index` in the mixed radix `radices`, the last digit changing fastest.
fn digits(mut index: usize, radices: &[usize]) -> Vec<usize> {
    let mut out = vec![0; radices.len()];
    for (d, &r) in out.iter_mut().zip(radices).rev() {
        *d = index % r;
        index /= r;
    }
    out
}

fn product(sizes: impl Iterator<Item = usize>) -> usize {
    sizes.fold(1usize, usize::saturating_mul)
}

fn check_targets(targets: &[String], tokenizer: &Tokenizer) -> Result<Vec<Vec<u32>>> {
    if targets.is_empty() {
        return Err(Error::invalid(
            "targets",
            "give at least one target, e.g. [\" hire\", \" reject\"]",
        ));
    }
    let mut out = Vec::with_capacity(targets.len());
    for (i, t) in targets.iter().enumerate() {
        let field = format!("targets[{i}]");
        if targets[..i].contains(t) {
            return Err(Error::invalid(field, format!("{t:?} is listed twice")));
        }
        out.push(run::encode_text(&field, t, tokenizer)?);
    }
    Ok(out)
}

/// Placeholder names of the template (or of the messages' contents), in order of first
/// appearance.
fn placeholders(request: &AuditRequest) -> Result<Vec<String>> {
    let texts: Vec<&str> = match (&request.template, &request.messages) {
        (Some(t), None) => vec![t.as_str()],
        (None, Some(m)) => m.iter().map(|m| m.content.as_str()).collect(),
        (Some(_), Some(_)) => {
            return Err(Error::invalid(
                "messages",
                "give either `messages` or `template`, not both",
            ))
        }
        (None, None) => {
            return Err(Error::invalid(
                "template",
                "missing input: give `template` or `messages`, with `values`",
            ))
        }
    };
    let mut names: Vec<String> = Vec::new();
    for text in texts {
        let pieces = crate::input::template::parse(text)?;
        for name in crate::input::template::names(&pieces) {
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
    }
    Ok(names)
}

fn check_sweep(request: &AuditRequest, names: &[String]) -> Result<()> {
    if request.sweep.is_empty() {
        return Err(Error::invalid(
            "sweep",
            "give at least one placeholder to sweep, e.g. {\"name\": [\"Emily\", \"Jamal\"]}",
        ));
    }
    let listed = names
        .iter()
        .map(|n| format!("{{{n}}}"))
        .collect::<Vec<_>>()
        .join(", ");
    for (name, list) in &request.sweep {
        let field = format!("sweep.{name}");
        if !names.contains(name) {
            return Err(Error::invalid(
                field,
                format!("unknown placeholder `{name}`: the template has {listed}"),
            ));
        }
        if list.is_empty() {
            return Err(Error::invalid(
                field,
                "the list is empty; give at least one value",
            ));
        }
        if let Some((i, v)) = list.iter().enumerate().find(|(i, v)| list[..*i].contains(v)) {
            return Err(Error::invalid(
                format!("{field}[{i}]"),
                format!("{v:?} is listed twice"),
            ));
        }
    }
    if let Some(name) = request
        .split
        .iter()
        .flat_map(|s| s.keys())
        .find(|k| request.sweep.contains_key(*k))
    {
        return Err(Error::invalid(
            format!("split.{name}"),
            format!("`{name}` is swept; split the placeholders that are not"),
        ));
    }
    if let Some(name) = request
        .baselines
        .iter()
        .flat_map(|b| b.keys())
        .find(|k| request.sweep.contains_key(*k))
    {
        return Err(Error::invalid(
            format!("baselines.{name}"),
            format!("`{name}` is swept; baselines are for the placeholders that are not"),
        ));
    }
    Ok(())
}

/// An attribute request with the audit's input (template or chat) and nothing else.
fn input_of(request: &AuditRequest) -> AttributeRequest {
    AttributeRequest {
        template: request.template.clone(),
        messages: request.messages.clone(),
        add_generation_prompt: request.add_generation_prompt,
        chat_template: request.chat_template.clone(),
        split: request.split.clone(),
        ..Default::default()
    }
}

fn first_baseline(b: &Baseline) -> Option<&String> {
    match b {
        Baseline::One(s) => Some(s),
        Baseline::List(l) => l.first(),
    }
}

impl<'r> Grid<'r> {
    fn new(request: &'r AuditRequest, tokenizer: &Tokenizer, limits: &Limits) -> Result<Self> {
        let target_ids = check_targets(&request.targets, tokenizer)?;
        let names = placeholders(request)?;
        check_sweep(request, &names)?;
        let average = request.contexts == Contexts::Average;
        let empty = BTreeMap::new();
        let given = request.baselines.as_ref().unwrap_or(&empty);
        let mut values = request.values.clone().unwrap_or_default();
        for (name, list) in &request.sweep {
            values.entry(name.clone()).or_insert_with(|| list[0].clone());
        }
        if average {
            for (name, b) in given {
                if let Some(first) = first_baseline(b) {
                    values.entry(name.clone()).or_insert_with(|| first.clone());
                }
            }
        }
        let mut baselines = given.clone();
        for (name, list) in &request.sweep {
            baselines.insert(name.clone(), Baseline::List(list.clone()));
        }
        let whole = AttributeRequest {
            values: Some(values.clone()),
            baselines: Some(baselines),
            ..input_of(request)
        };
        let input = Input::from_request(&whole, tokenizer, limits.request_templates.as_deref())?;
        let slot_name = |s: usize| input.features[input.slots[s].feature].placeholders[0].clone();
        let mut swept = Vec::new();
        let mut averaged = Vec::new();
        for (s, slot) in input.slots.iter().enumerate() {
            let name = slot_name(s);
            if let Some(list) = request.sweep.get(&name) {
                swept.push((s, name, list.clone()));
            } else if average && given.contains_key(&name) {
                averaged.push((s, slot.n_baselines));
            }
        }
        if average && averaged.is_empty() {
            return Err(Error::invalid(
                "contexts",
                "\"average\" averages over the baselines of placeholders that are not swept: give \
                 `baselines` for at least one of them",
            ));
        }
        let grid = Grid {
            request,
            input,
            swept,
            averaged,
            values,
            target_ids,
        };
        grid.check_size(limits)?;
        Ok(grid)
    }

    fn check_size(&self, limits: &Limits) -> Result<()> {
        let cells = self.n_cells();
        if cells > limits.max_audit_cells {
            return Err(Error::too_large(
                "sweep",
                format!("{cells} cells exceed the limit of {}", limits.max_audit_cells),
            ));
        }
        let targets = self.target_ids.len();
        let sequences = product([cells, self.n_contexts(), targets].into_iter());
        if sequences > limits.max_sequences {
            return Err(Error::too_large(
                if self.averaged.is_empty() {
                    "sweep"
                } else {
                    "baselines"
                },
                format!(
                    "{cells} cells x {} contexts x {targets} targets need {sequences} sequences, more \
                     than the limit of {}",
                    self.n_contexts(),
                    limits.max_sequences
                ),
            ));
        }
        Ok(())
    }

    fn n_cells(&self) -> usize {
        product(self.swept.iter().map(|(_, _, l)| l.len()))
    }

    fn n_contexts(&self) -> usize {
        product(self.averaged.iter().map(|&(_, n)| n))
    }

    fn cell_digits(&self, cell: usize) -> Vec<usize> {
        let radices: Vec<usize> = self.swept.iter().map(|(_, _, l)| l.len()).collect();
        digits(cell, &radices)
    }

    fn cell_values(&self, cell: usize) -> BTreeMap<String, String> {
        self.swept
            .iter()
            .zip(self.cell_digits(cell))
            .map(|((_, name, list), d)| (name.clone(), list[d].clone()))
            .collect()
    }

    /// The slots' choices for `cell` in `context`.
    fn choice(&self, cell: usize, context: usize) -> Vec<Option<usize>> {
        let mut choice = vec![None; self.input.slots.len()];
        for ((s, _, _), d) in self.swept.iter().zip(self.cell_digits(cell)) {
            choice[*s] = Some(d);
        }
        let radices: Vec<usize> = self.averaged.iter().map(|&(_, n)| n).collect();
        for (&(s, _), d) in self.averaged.iter().zip(digits(context, &radices)) {
            choice[s] = Some(d);
        }
        choice
    }

    fn prompts(&self, tokenizer: &Tokenizer) -> Result<Prompts> {
        let mut index: HashMap<Vec<u32>, usize> = HashMap::new();
        let mut prompts = Vec::new();
        let mut at = Vec::with_capacity(self.n_cells());
        for cell in 0..self.n_cells() {
            let mut row = Vec::with_capacity(self.n_contexts());
            for context in 0..self.n_contexts() {
                let ids = self.input.render(tokenizer, &self.choice(cell, context))?;
                let k = *index.entry(ids.clone()).or_insert_with(|| {
                    prompts.push(ids);
                    prompts.len() - 1
                });
                row.push(k);
            }
            at.push(row);
        }
        Ok(Prompts { ids: prompts, at })
    }

    /// Every prompt with every target, prompt-major.
    fn items(&self, prompts: &[Vec<u32>], limits: &Limits, context_length: usize) -> Result<Vec<ScoreItem>> {
        let mut items = Vec::with_capacity(prompts.len() * self.target_ids.len());
        for p in prompts {
            for t in &self.target_ids {
                let item = ScoreItem {
                    prompt: p.clone(),
                    target: t.clone(),
                };
                run::check_sequence(
                    &item,
                    limits.max_tokens_per_sequence.min(context_length),
                    self.input.features_field(),
                )?;
                items.push(item);
            }
        }
        Ok(items)
    }

    /// The attribute request of one cell: the cell's values; the other values of a swept
    /// placeholder as its baselines; the request's baselines for the rest; the first target,
    /// contrasted with the second. A gradient method gets no baselines: it starts from each
    /// placeholder's tokens replaced by token id 0.
    fn cell_request(&self, cell: usize) -> Option<AttributeRequest> {
        let r = self.request;
        let method = r.method?;
        let cell_values = self.cell_values(cell);
        let mut values = self.values.clone();
        let mut baselines = r.baselines.clone().unwrap_or_default();
        for (_, name, list) in &self.swept {
            let own = &cell_values[name];
            let others: Vec<String> = list.iter().filter(|v| *v != own).cloned().collect();
            values.insert(name.clone(), own.clone());
            baselines.insert(
                name.clone(),
                if others.is_empty() {
                    Baseline::One(String::new())
                } else {
                    Baseline::List(others)
                },
            );
        }
        Some(AttributeRequest {
            values: Some(values),
            baselines: method.facts().gradient.is_none().then_some(baselines),
            target: r.targets.first().cloned(),
            contrast_target: r.targets.get(1).cloned(),
            method,
            attr_target: r.attr_target,
            n_samples: r.n_samples,
            num_trials: r.num_trials,
            seed: r.seed,
            baseline_sampling: r.baseline_sampling,
            n_steps: r.n_steps,
            integration: r.integration,
            ..input_of(r)
        })
    }

    /// The cells' attribute requests (none without a method).
    fn cell_requests(&self) -> Vec<(usize, AttributeRequest)> {
        (0..self.n_cells())
            .filter_map(|c| self.cell_request(c).map(|r| (c, r)))
            .collect()
    }
}

/// Counts what `request` would score, without scoring: the audit run against a scorer that
/// scores nothing, so the counts (and the errors) are the real run's.
pub fn plan(request: &AuditRequest, scorer: &dyn Scorer, limits: &Limits) -> Result<Plan> {
    let dry = DryScorer::new(scorer);
    let (_, plan) = execute(request, &dry, limits, 0, &|_| {})?;
    Ok(Plan {
        tokens_after_reuse: dry.after_reuse(),
        ..plan
    })
}

/// Runs `request` against `scorer`. `progress` counts the distinct sequences scored, out of
/// the total the plan counts first.
pub fn run(
    request: &AuditRequest,
    scorer: &dyn Scorer,
    limits: &Limits,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<AuditResult> {
    let total = plan(request, scorer, limits)?.distinct_sequences;
    execute(request, scorer, limits, total, progress).map(|(result, _)| result)
}

/// The audit and what it cost: every cell's prompts in one call to the scorer, then the cells'
/// attributions, all through one [`AuditScorer`].
fn execute(
    request: &AuditRequest,
    scorer: &dyn Scorer,
    limits: &Limits,
    total: usize,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(AuditResult, Plan)> {
    let started = Instant::now();
    let tokenizer = scorer.tokenizer();
    let grid = Grid::new(request, tokenizer, limits)?;
    let Prompts { ids: prompts, at } = grid.prompts(tokenizer)?;
    let items = grid.items(&prompts, limits, scorer.context_length())?;
    let shared = AuditScorer::new(scorer, total, progress);
    let scores = shared.score(items, &|_, _| {})?;
    // Whole-target log p of every prompt and target (prompt-major).
    let totals: Vec<f64> = scores
        .iter()
        .map(|s| s.iter().map(|&v| f64::from(v)).sum())
        .collect();

    let mut plan = Plan {
        features: grid.input.n_features(),
        ..Plan::default()
    };
    let mut attributions: Vec<Option<AttributeResponse>> = vec![None; grid.n_cells()];
    for (cell, r) in grid.cell_requests() {
        let a = run::run(&r, &shared, limits, &|_| {})?;
        if shared.sequences() > limits.max_sequences {
            return Err(Error::too_large(
                "method",
                format!(
                    "attributing every cell needs more than {} distinct sequences; sweep fewer values, or \
                     use fewer samples or a cheaper method",
                    limits.max_sequences
                ),
            ));
        }
        plan.coalitions += a.stats.coalitions;
        plan.evaluations += a.stats.evaluations;
        attributions[cell] = Some(a);
    }
    plan.distinct_sequences = shared.sequences();
    plan.tokens = shared.tokens();

    let cells = attributions
        .into_iter()
        .enumerate()
        .map(|(cell, attribution)| {
            let mut c = cell_result(&grid, cell, &at[cell], &scores, &totals);
            c.attribution = attribution.map(Box::new);
            c
        })
        .collect();
    let result = AuditResult {
        model: scorer.info().spec.clone(),
        targets: request.targets.clone(),
        swept: grid.swept.iter().map(|(_, n, _)| n.clone()).collect(),
        contexts: request.contexts,
        n_contexts: grid.n_contexts(),
        target_tokens: request
            .targets
            .iter()
            .zip(&grid.target_ids)
            .map(|(t, ids)| (t.clone(), tokenizer.pretty_tokens(ids)))
            .collect(),
        method: request.method,
        cells,
        summary: summarize(&grid, &at, &totals),
        stats: AuditStats {
            cells: grid.n_cells(),
            distinct_sequences: plan.distinct_sequences,
            tokens: plan.tokens,
            seconds: started.elapsed().as_secs_f64(),
        },
    };
    Ok((result, plan))
}

/// One cell: its prompts' log-probs averaged over contexts.
fn cell_result(
    grid: &Grid,
    cell: usize,
    prompts: &[usize],
    scores: &[Vec<f32>],
    totals: &[f64],
) -> AuditCell {
    let targets = &grid.request.targets;
    let n_t = targets.len();
    let mut log_prob = BTreeMap::new();
    let mut token_log_probs = BTreeMap::new();
    let mut stderr = BTreeMap::new();
    for (j, t) in targets.iter().enumerate() {
        let samples: Vec<f64> = prompts.iter().map(|&p| totals[p * n_t + j]).collect();
        let e = estimate(&samples);
        log_prob.insert(t.clone(), e.mean);
        if let Some(se) = e.stderr {
            stderr.insert(t.clone(), se);
        }
        let k = prompts.len() as f64;
        let mut tokens = vec![0.0; grid.target_ids[j].len()];
        for &p in prompts {
            for (m, &v) in tokens.iter_mut().zip(&scores[p * n_t + j]) {
                *m += f64::from(v) / k;
            }
        }
        token_log_probs.insert(t.clone(), tokens);
    }
    AuditCell {
        values: grid.cell_values(cell),
        contrast: (n_t > 1).then(|| log_prob[&targets[0]] - log_prob[&targets[1]]),
        log_prob,
        token_log_probs,
        log_prob_stderr: (grid.request.contexts == Contexts::Average && !stderr.is_empty()).then_some(stderr),
        attribution: None,
    }
}

/// Per swept placeholder and value: means, contrast and intervals over every prompt with
/// that value, then ranks.
fn summarize(grid: &Grid, at: &[Vec<usize>], totals: &[f64]) -> BTreeMap<String, Vec<SummaryRow>> {
    let targets = &grid.request.targets;
    let n_t = targets.len();
    let mut out = BTreeMap::new();
    for (i, (_, name, list)) in grid.swept.iter().enumerate() {
        let mut rows: Vec<SummaryRow> = list
            .iter()
            .enumerate()
            .map(|(v, value)| {
                let prompts: Vec<usize> = (0..grid.n_cells())
                    .filter(|&c| grid.cell_digits(c)[i] == v)
                    .flat_map(|c| at[c].iter().copied())
                    .collect();
                let per_target: Vec<Vec<f64>> = (0..n_t)
                    .map(|j| prompts.iter().map(|&p| totals[p * n_t + j]).collect())
                    .collect();
                let estimates: Vec<_> = per_target.iter().map(|s| estimate(s)).collect();
                let contrast = (n_t > 1).then(|| {
                    let d: Vec<f64> = per_target[0]
                        .iter()
                        .zip(&per_target[1])
                        .map(|(a, b)| a - b)
                        .collect();
                    estimate(&d)
                });
                let ci: Option<BTreeMap<String, [f64; 2]>> = targets
                    .iter()
                    .zip(&estimates)
                    .map(|(t, e)| e.ci.map(|c| (t.clone(), c)))
                    .collect();
                SummaryRow {
                    value: value.clone(),
                    mean_log_prob: targets
                        .iter()
                        .zip(&estimates)
                        .map(|(t, e)| (t.clone(), e.mean))
                        .collect(),
                    contrast: contrast.map(|e| e.mean),
                    ci,
                    contrast_ci: contrast.and_then(|e| e.ci),
                    rank: 0,
                    gap: 0.0,
                    n: prompts.len(),
                }
            })
            .collect();
        let score: Vec<f64> = rows
            .iter()
            .map(|r| r.contrast.unwrap_or(r.mean_log_prob[&targets[0]]))
            .collect();
        for (r, (rank, gap)) in rows.iter_mut().zip(rank_and_gap(&score)) {
            r.rank = rank;
            r.gap = gap;
        }
        out.insert(name.clone(), rows);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_row_major() {
        let r = [2, 3];
        let all: Vec<Vec<usize>> = (0..6).map(|i| digits(i, &r)).collect();
        assert_eq!(
            all,
            vec![
                vec![0, 0],
                vec![0, 1],
                vec![0, 2],
                vec![1, 0],
                vec![1, 1],
                vec![1, 2]
            ]
        );
        assert_eq!(digits(0, &[]), Vec::<usize>::new());
    }
}
