//! The audit request and result: one schema for the CLI and the HTTP API.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::request::{
    choice, optional_choice, AttrTarget, AttributeResponse, Baseline, BaselineSampling, ChatMessage,
    Integration, Method, SplitKind,
};

/// A template over a grid of values (the product of the `sweep` lists), scored for every
/// target, optionally averaged over contexts and attributed per cell.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditRequest {
    /// Template with named placeholders, as for attributions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Chat input instead of `template`: `{role, content}` messages whose contents hold the
    /// placeholders, rendered with the model's chat template, as for attributions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<ChatMessage>>,
    /// Chat input: end the prompt with the assistant's turn header (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_generation_prompt: Option<bool>,
    /// Chat input: a Jinja chat template to use instead of the model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
    /// Values of the placeholders. Optional for swept placeholders, and for averaged ones
    /// under `contexts: "average"` (their first baseline stands in).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::request::unique_values"
    )]
    pub values: Option<BTreeMap<String, String>>,
    /// Placeholders that are not swept, cut into segments that are the attribution's features,
    /// as for attributions (`{"context": "sentence"}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<BTreeMap<String, SplitKind>>,
    /// Placeholder -> the values it takes; the grid is the product of these lists, in the
    /// order the placeholders appear in the template.
    #[serde(deserialize_with = "unique_sweep")]
    pub sweep: BTreeMap<String, Vec<String>>,
    /// Continuations scored in every cell (at least one). The summary contrasts the first two.
    pub targets: Vec<String>,
    /// Baselines of placeholders that are not swept: the contexts averaged over with
    /// `contexts: "average"`, and the attribution baselines of those placeholders.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::request::unique_baselines"
    )]
    pub baselines: Option<BTreeMap<String, Baseline>>,
    /// `single` (default): each cell is one prompt; `average`: each cell is the mean over the
    /// other placeholders' baselines.
    #[serde(default, deserialize_with = "choice")]
    pub contexts: Contexts,
    /// Attribute every cell with this method as well (target: `targets[0]`, contrasted with
    /// `targets[1]` when there is one).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_choice"
    )]
    pub method: Option<Method>,
    /// What `method` attributes: `log_prob` (default) or `prob`.
    #[serde(default, deserialize_with = "choice")]
    pub attr_target: AttrTarget,
    /// Samples of `method`, as in an attribution request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_samples: Option<usize>,
    /// Trials averaged per attribution, as in an attribution request (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_trials: Option<usize>,
    /// Seed of every random choice (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// `exact` or `sample` for the attributions, as in an attribution request.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_choice"
    )]
    pub baseline_sampling: Option<BaselineSampling>,
    /// integrated_gradients: points of the path (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_steps: Option<usize>,
    /// integrated_gradients: the quadrature rule (default `gausslegendre`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_choice"
    )]
    pub integration: Option<Integration>,
}

fn unique_sweep<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Vec<String>>, D::Error> {
    crate::request::unique_keys(d, "sweep").map(Option::unwrap_or_default)
}

/// `single`: every cell is one prompt (the other placeholders at their values). `average`:
/// every cell is the mean over the product of the other placeholders' baselines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Contexts {
    /// Every cell is one prompt, the other placeholders at their values (the default).
    #[default]
    Single,
    /// Every cell is the mean over the product of the other placeholders' baselines.
    Average,
}

/// An audit's scores for every cell of the grid, and a summary per swept placeholder.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditResult {
    /// The model's spec, as `GET /v1/model` reports it.
    pub model: String,
    /// The scored continuations, as in the request.
    pub targets: Vec<String>,
    /// Swept placeholders, in template order; cells run through them row-major (the last
    /// changes fastest).
    pub swept: Vec<String>,
    /// How each cell was scored: `single` or `average`.
    pub contexts: Contexts,
    /// Prompts averaged in each cell (1 for `single`).
    pub n_contexts: usize,
    /// Each target's tokens as a person reads them.
    pub target_tokens: BTreeMap<String, Vec<String>>,
    /// The method every cell was attributed with, when the request named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Method>,
    /// One entry per cell of the grid, in the order given by `swept`.
    pub cells: Vec<AuditCell>,
    /// Per swept placeholder, one row per value in sweep order.
    pub summary: BTreeMap<String, Vec<SummaryRow>>,
    /// What the audit cost.
    pub stats: AuditStats,
}

/// One cell of the grid: its values, each target's log p and, optionally, its attribution.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditCell {
    /// The swept placeholders' values.
    pub values: BTreeMap<String, String>,
    /// log p of each whole target (mean over contexts).
    pub log_prob: BTreeMap<String, f64>,
    /// log p of each target token (mean over contexts).
    pub token_log_probs: BTreeMap<String, Vec<f64>>,
    /// log p(targets[0]) - log p(targets[1]); absent with one target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contrast: Option<f64>,
    /// Standard error of `log_prob` across contexts (`contexts: "average"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_prob_stderr: Option<BTreeMap<String, f64>>,
    /// The cell's attribution, when the request names a method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribution: Option<Box<AttributeResponse>>,
}

/// How one value of a swept placeholder scores, over the rest of the grid.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SummaryRow {
    /// The placeholder's value.
    pub value: String,
    /// Mean log p of each target over the prompts with this value (the other swept
    /// placeholders' values and the contexts).
    pub mean_log_prob: BTreeMap<String, f64>,
    /// Mean of log p(targets[0]) - log p(targets[1]); null with one target.
    pub contrast: Option<f64>,
    /// 95% Student-t intervals of the means, when more than one prompt is averaged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci: Option<BTreeMap<String, [f64; 2]>>,
    /// 95% Student-t interval of `contrast`, when more than one prompt is averaged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contrast_ci: Option<[f64; 2]>,
    /// 1 = highest contrast (or highest mean log p of the only target).
    pub rank: usize,
    /// Contrast (or mean log p) minus that of the rank-1 value: zero or negative.
    pub gap: f64,
    /// Prompts averaged.
    pub n: usize,
}

/// What an audit cost.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct AuditStats {
    /// Cells in the grid.
    pub cells: usize,
    /// Distinct sequences (prompt + target) scored, attributions included.
    pub distinct_sequences: usize,
    /// Tokens fed to the model.
    pub tokens: usize,
    /// Wall-clock seconds the audit took.
    pub seconds: f64,
}
