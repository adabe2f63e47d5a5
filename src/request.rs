//! The attribute request and response: one schema for the CLI, the HTTP API and the web page.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One attribution. Either a template input (`template`, `values`, `baselines`, `mask`), a chat
/// input (`messages` instead of `template`) or a token input (`text`, `skip_tokens`,
/// `baseline_token`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttributeRequest {
    /// Template with named placeholders, e.g. `{name} from {country} ...`; `{{`/`}}` are literal braces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Value of every placeholder.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "unique_values"
    )]
    pub values: Option<BTreeMap<String, String>>,
    /// Baseline per placeholder: one string, or a list (the product of the lists is the baseline
    /// distribution, Captum's ProductBaselines). Missing: the empty string.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "unique_baselines"
    )]
    pub baselines: Option<BTreeMap<String, Baseline>>,
    /// Groups placeholders into one feature: placeholder -> group label. Placeholders with the
    /// same label are perturbed together and share one attribution.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "unique_mask"
    )]
    pub mask: Option<BTreeMap<String, serde_json::Value>>,
    /// Cuts a placeholder's value into segments, each one feature: placeholder -> `sentence`
    /// (Unicode UAX #29 sentences, English abbreviations kept whole), `paragraph` (separated by
    /// blank lines), `line` or `word` (separated by whitespace). A segment is named by its index
    /// and first words (`context[3] The cat sat…`); `mask` may group segments by that name's
    /// first part (`"context[3]": "g"`). An absent segment is removed with one whitespace run
    /// next to it; with a non-empty baseline for the placeholder it is replaced by the baseline.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "unique_split"
    )]
    pub split: Option<BTreeMap<String, SplitKind>>,
    /// Attributes the split placeholders level by level, coarse to fine (e.g. `["paragraph",
    /// "sentence"]`, ending with the kind in `split`): each level cuts only the `top_k` segments
    /// with the highest attributions of the level before into finer ones (AttriBoT); the rest
    /// stay in the prompt, unperturbed. The response is the finest level; `levels` holds all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hierarchy: Option<Vec<SplitKind>>,
    /// With `hierarchy`: how many segments of each level are cut into the next level's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    /// Chat input, instead of `template`: messages whose contents may hold `{placeholders}`
    /// (`values`, `baselines` and `mask` as for a template), rendered with the model's chat
    /// template. The placeholders are the features; the template's markup is never perturbed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<ChatMessage>>,
    /// Chat input: end the prompt with the assistant's turn header (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_generation_prompt: Option<bool>,
    /// Chat input: a Jinja chat template to use instead of the model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
    /// Token input: every token of `text` is a feature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Token input: tokens (strings or ids) that are never perturbed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_tokens: Option<Vec<TokenRef>>,
    /// Token input: the token (string or id) that replaces a perturbed token. Default: removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_token: Option<TokenRef>,
    /// Target continuation, encoded as given. Absent: the model's greedy continuation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// A second continuation contrasted with the target: the attributed quantity becomes
    /// log p(target) - log p(contrast_target) (with `attr_target: prob`, the difference of the
    /// probabilities). Both are scored for every perturbed prompt (the gradient methods
    /// differentiate both along the same path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contrast_target: Option<String>,
    /// Length of the greedy continuation when `target` is absent (default 25).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_new_tokens: Option<usize>,
    /// The attribution method (default `shapley_values`).
    #[serde(default, deserialize_with = "choice")]
    pub method: Method,
    /// What is attributed: the target's log-probability (`log_prob`, default) or its probability (`prob`).
    #[serde(default, deserialize_with = "choice")]
    pub attr_target: AttrTarget,
    /// Samples: permutations for shapley_value_sampling (default 25), perturbations for lime
    /// (default 50) and kernel_shap (default 25), points of the path for gradient_shap
    /// (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_samples: Option<usize>,
    /// Repeat the attribution this many times and average (default 1); gives standard errors.
    /// With one trial, sampling methods estimate their own standard errors (spread across
    /// permutations for shapley_value_sampling, a bootstrap of the samples for lime and
    /// kernel_shap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_trials: Option<usize>,
    /// Seed of every random choice (default 0); the same seed gives the same result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// `exact` averages over the whole product of baseline lists; `sample` draws one baseline
    /// per evaluation, as Captum does. Default: exact while the product is affordable (at most
    /// 4096 distinct sequences for the request), else sample.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_choice"
    )]
    pub baseline_sampling: Option<BaselineSampling>,
    /// integrated_gradients: points of the path integral from the baseline to the input
    /// (default 50, Captum's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_steps: Option<usize>,
    /// integrated_gradients: the quadrature rule (default `gausslegendre`, Captum's).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_choice"
    )]
    pub integration: Option<Integration>,
}

/// A JSON object into a map, refusing duplicate keys (serde would keep the last silently).
pub(crate) fn unique_keys<'de, D, V>(
    d: D,
    field: &'static str,
) -> Result<Option<BTreeMap<String, V>>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Visit<V>(std::marker::PhantomData<V>, &'static str);
    impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Visit<V> {
        type Value = Option<BTreeMap<String, V>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object with one entry per placeholder")
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = map.next_entry::<String, V>()? {
                if out.contains_key(&k) {
                    return Err(serde::de::Error::custom(format!(
                        "{}.{k}: duplicate name `{k}` (each placeholder appears once)",
                        self.1
                    )));
                }
                out.insert(k, v);
            }
            Ok(Some(out))
        }
    }
    d.deserialize_option(Visit(std::marker::PhantomData, field))
}

pub(crate) fn unique_values<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    unique_keys(d, "values")
}

pub(crate) fn unique_baselines<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, Baseline>>, D::Error> {
    unique_keys(d, "baselines")
}

fn unique_split<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, SplitKind>>, D::Error> {
    unique_keys(d, "split")
}

type Labels = Option<BTreeMap<String, serde_json::Value>>;

fn unique_mask<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Labels, D::Error> {
    unique_keys(d, "mask")
}

/// A choice field: an enum written as one of its names. serde_json reports a number, a
/// boolean, an array or `null` where an enum is expected as a syntax error with no field;
/// this makes every other type a data error that names the field and the allowed names.
pub(crate) fn choice<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    d.deserialize_any(Choice(std::marker::PhantomData))
}

/// An optional choice field: `null` is none, a name is a choice as in [`choice`].
pub(crate) fn optional_choice<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Named<T>(T);
    impl<'de, T: Deserialize<'de>> Deserialize<'de> for Named<T> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            choice(d).map(Named)
        }
    }
    Option::<Named<T>>::deserialize(d).map(|o| o.map(|n| n.0))
}

struct Choice<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Choice<T> {
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        // The derived enum lists its names when asked for one it does not know.
        let unknown = serde::de::value::StrDeserializer::<serde::de::value::Error>::new("");
        let names = T::deserialize(unknown).err().map(|e| e.to_string());
        match names.as_deref().and_then(|m| m.split_once("expected ")) {
            Some((_, names)) => f.write_str(names),
            None => f.write_str("a name"),
        }
    }

    fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<T, E> {
        T::deserialize(serde::de::value::StrDeserializer::new(name))
    }
}

/// A placeholder's baseline: one string, or a list of strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Baseline {
    /// One baseline value.
    One(String),
    /// Several baseline values; the product of all placeholders' lists is the baseline distribution.
    List(Vec<String>),
}

/// How a split placeholder's value is cut into segments (see `split`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SplitKind {
    /// Blank lines separate paragraphs.
    Paragraph,
    /// Line breaks separate lines.
    Line,
    /// Unicode UAX #29 sentence boundaries (every line break is one), English abbreviations
    /// such as "Dr.", "e.g." and "U.S." kept inside their sentence.
    Sentence,
    /// Whitespace separates words (punctuation stays with its word).
    Word,
}

/// One chat message; `content` may hold `{placeholders}` (`{{`/`}}` are literal braces).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// Who speaks: `system`, `user` or `assistant`.
    #[serde(deserialize_with = "choice")]
    pub role: Role,
    /// The message text; `{name}` marks a placeholder.
    pub content: String,
}

/// The speaker of a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Instructions that frame the conversation.
    System,
    /// The user's turn.
    User,
    /// The model's turn.
    Assistant,
}

/// A token named by its id or by its text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum TokenRef {
    /// A token id in the model's vocabulary.
    Id(u32),
    /// The text of exactly one token of the model's vocabulary.
    Text(String),
}

/// An attribution method. What each one samples, costs and allows is its row of
/// `Method::facts` (src/attribution/methods.rs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Captum's FeatureAblation: each feature replaced by its baseline on its own.
    #[serde(alias = "fa")]
    FeatureAblation,
    /// Exact Shapley values, over every coalition of features (the default).
    #[default]
    #[serde(alias = "sv")]
    ShapleyValues,
    /// Captum's ShapleyValueSampling: Shapley values estimated from random permutations.
    #[serde(alias = "svs")]
    ShapleyValueSampling,
    /// Captum's Lime: a weighted linear model fitted to random coalitions.
    Lime,
    /// Captum's KernelShap: a linear model fitted with the Shapley kernel's weights.
    #[serde(alias = "kernel")]
    KernelShap,
    /// ContextCite (Cohen-Wang et al., 2024): `n_samples` random coalitions keeping each feature
    /// with probability 1/2, and a Lasso (alpha 0.01) on the standardized coalitions fitted to
    /// the target's logit-probability, log p - log(1 - p) (`attr_target` `logit_prob`).
    #[serde(alias = "contextcite")]
    ContextCite,
    /// Captum's LayerIntegratedGradients on the input embeddings.
    #[serde(alias = "ig")]
    IntegratedGradients,
    /// Captum's LayerGradientXActivation on the input embeddings.
    #[serde(alias = "gxi")]
    GradientXInput,
    /// Captum's LayerGradientShap on the input embeddings, from the baseline tokens.
    #[serde(alias = "gs")]
    GradientShap,
}

/// How integrated_gradients approximates its path integral (Captum's `method`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Integration {
    /// Gauss-Legendre quadrature (the default).
    #[default]
    Gausslegendre,
    /// Trapezoid rule on evenly spaced points.
    RiemannTrapezoid,
    /// Riemann sum at the left end of each interval.
    RiemannLeft,
    /// Riemann sum at the right end of each interval.
    RiemannRight,
    /// Riemann sum at the middle of each interval.
    RiemannMiddle,
}

/// The quantity attributed for the target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttrTarget {
    /// log p of the target (the default).
    #[default]
    LogProb,
    /// p of the target, the probability itself.
    Prob,
    /// log p - log(1 - p), ContextCite's response (always with context_cite).
    LogitProb,
}

impl AttrTarget {
    /// The attributed value of a log-prob: itself, or its probability.
    pub fn of(self, log_prob: f64) -> f64 {
        match self {
            AttrTarget::LogProb => log_prob,
            AttrTarget::Prob => log_prob.exp(),
            // A log-prob rounded to 0 would give an infinite logit: it is taken as -1e-12.
            AttrTarget::LogitProb => {
                let lp = log_prob.min(-1e-12);
                lp - (-lp.exp_m1()).ln()
            }
        }
    }
}

/// How the product of the baseline lists is used (see `baseline_sampling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BaselineSampling {
    /// Average over every combination of baselines.
    Exact,
    /// Draw one combination of baselines per evaluation, as Captum does.
    Sample,
}

/// One input feature: a placeholder (or mask group) or a token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Feature {
    /// Placeholder name, mask group label, or the token's text.
    pub name: String,
    /// The value used in the prompt (for a group, the values joined by ", ").
    pub value: String,
    /// Baselines it is compared against.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub baselines: Vec<String>,
    /// Placeholders in this feature (template input).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placeholders: Vec<String>,
    /// The segments of split placeholders in this feature (`split`), with where they are in
    /// their placeholder's value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<SegmentRef>,
    /// Token id and position in the prompt (token input).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<u32>,
    /// Index of the token in the prompt's tokens (token input).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<usize>,
}

/// One segment of a split placeholder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SegmentRef {
    /// The placeholder whose value it was cut from.
    pub placeholder: String,
    /// What the value was cut into.
    pub kind: SplitKind,
    /// Its index among the placeholder's segments that are features.
    pub index: usize,
    /// Where its text is in the placeholder's value, in characters (Unicode scalar values):
    /// `[start, end)`.
    pub start: usize,
    /// Where its text ends (exclusive).
    pub end: usize,
}

/// One level of a `hierarchy`: its features and their attributions.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Level {
    /// The kind the split placeholders are cut into at this level.
    pub kind: SplitKind,
    /// The features of this level.
    pub features: Vec<Feature>,
    /// One attribution per feature of this level.
    pub seq_attr: Vec<f64>,
    /// One row per target token, one column per feature of this level.
    pub token_attr: Vec<Vec<f64>>,
    /// Indices of the features cut into the next level (empty at the last).
    #[serde(default)]
    pub refined: Vec<usize>,
    /// What this level cost.
    pub stats: Stats,
}

/// What a run cost.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Stats {
    /// Coalition evaluations the method asked for.
    pub evaluations: usize,
    /// Distinct coalitions among them.
    #[serde(default)]
    pub coalitions: usize,
    /// Distinct perturbed prompts scored by the model.
    pub unique_sequences: usize,
    /// Tokens fed to the model.
    pub tokens_scored: usize,
    /// Of the tokens the model ran (not the score cache's), those it computed for this request.
    #[serde(default)]
    pub tokens_computed: usize,
    /// And those whose keys and values it reused instead: a prefix computed once for several
    /// sequences, or kept in the prefix cache from earlier work.
    #[serde(default)]
    pub tokens_reused: usize,
    /// Wall-clock seconds the run took.
    pub seconds: f64,
}

/// The result of one attribution: the features, the target, and how much each feature moves it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AttributeResponse {
    /// The model's spec, as `GET /v1/model` reports it.
    pub model: String,
    /// The method that ran.
    pub method: Method,
    /// What was attributed: `log_prob` or `prob`.
    pub attr_target: AttrTarget,
    /// How the baselines were used: `exact` or `sample`.
    pub baseline_sampling: BaselineSampling,
    /// The prompt with every feature at its own value.
    pub prompt: String,
    /// The attributed continuation: the request's `target`, or the model's greedy one.
    pub target: String,
    /// True when the target is the model's greedy continuation.
    pub generated_target: bool,
    /// Token ids of `target`.
    pub target_ids: Vec<u32>,
    /// The features, in the order of `seq_attr` and of the columns of `token_attr`.
    pub features: Vec<Feature>,
    /// Target tokens as a person reads them (Captum's output_tokens).
    pub output_tokens: Vec<String>,
    /// Unperturbed log p of each target token.
    pub target_log_probs: Vec<f64>,
    /// Unperturbed log p of the whole target.
    pub target_log_prob: f64,
    /// The contrasted continuation, when the request gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contrast_target: Option<String>,
    /// Token ids of `contrast_target`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contrast_ids: Option<Vec<u32>>,
    /// The contrast's tokens as a person reads them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contrast_output_tokens: Option<Vec<String>>,
    /// Unperturbed log p of each contrast token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contrast_log_probs: Option<Vec<f64>>,
    /// Unperturbed log p of the whole contrast.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contrast_log_prob: Option<f64>,
    /// One attribution per feature for the whole target (with a contrast: for the difference).
    pub seq_attr: Vec<f64>,
    /// Rows: output tokens, then (with a contrast) the contrast's tokens, negated; columns:
    /// features.
    pub token_attr: Vec<Vec<f64>>,
    /// Standard errors of `seq_attr` (sampling methods, or num_trials > 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq_attr_stderr: Option<Vec<f64>>,
    /// Standard errors of `token_attr`, in its shape (when `seq_attr_stderr` is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_attr_stderr: Option<Vec<Vec<f64>>>,
    /// integrated_gradients: per output token, the row's sum minus f(input) - f(baseline)
    /// (Captum's convergence delta; small when the integral is well approximated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub convergence_delta: Option<Vec<f64>>,
    /// With `hierarchy`: every level, coarse to fine (the response itself is the last; its
    /// `stats` add up all levels').
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub levels: Option<Vec<Level>>,
    /// What may make the numbers mislead, in plain words (empty when nothing does).
    #[serde(default)]
    pub warnings: Vec<Warning>,
    /// What the run cost.
    pub stats: Stats,
}

/// A caveat about a result: a machine-readable `code` and a sentence for people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Warning {
    /// What kind of caveat it is.
    pub code: WarningCode,
    /// The caveat in a sentence for people.
    pub message: String,
    /// The rows of `token_attr` it concerns, when it concerns some.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rows: Vec<usize>,
}

/// The kinds of [`Warning`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WarningCode {
    /// A gradient row's sum misses f(input) - f(baseline) by more than a tenth of it: the
    /// attributions do not add up (integrated gradients, gradient SHAP).
    ConvergenceDelta,
}
