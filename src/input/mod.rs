//! What the user attributes to: a template with placeholders or a text's tokens, turned into
//! features. A feature is made of slots (placeholders or token positions); each slot has its
//! value and one or more baselines. Rendering a choice per slot gives a prompt's token ids.

pub mod chat;
pub mod template;
pub(crate) mod tokens;

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::model::Tokenizer;
use crate::request::{AttributeRequest, Baseline, ChatMessage, Feature};
use chat::sandbox::Sandbox;
use chat::{Chat, ChatTemplate};
use template::Piece;

/// One perturbable unit of the prompt: a placeholder or a token position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// Index of the feature it belongs to.
    pub feature: usize,
    /// Number of baselines it can take (at least 1).
    pub n_baselines: usize,
}

/// A parsed, validated input.
#[derive(Debug, Clone)]
pub struct Input {
    /// The features, in the order attributions report them.
    pub features: Vec<Feature>,
    /// Every perturbable unit, each pointing at its feature.
    pub slots: Vec<Slot>,
    /// The prompt with every feature at its value.
    pub prompt: String,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Template {
        source: Source,
        pieces: Vec<Piece>,
        /// Per slot: value, then baselines.
        names: Vec<String>,
        values: Vec<String>,
        baselines: Vec<Vec<String>>,
    },
    Tokens(tokens::TokenInput),
}

/// The unperturbed prompt as tokens, and which of them make each feature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FeatureTokens {
    pub ids: Vec<u32>,
    /// Per feature, its token positions in `ids` (none when its value tokenizes to nothing).
    pub positions: Vec<Vec<usize>>,
}

/// For each slot: `None` keeps the value, `Some(k)` puts in its k-th baseline.
pub type Choice = [Option<usize>];

/// Where a template's placeholders were written: the request field, and how errors speak of it.
#[derive(Debug, Clone, Copy)]
struct Source {
    field: &'static str,
    has: &'static str,
}

const TEMPLATE: Source = Source {
    field: "template",
    has: "the template has",
};
const MESSAGES: Source = Source {
    field: "messages",
    has: "the messages have",
};

impl Input {
    /// The request's input; a `chat_template` it gives renders in `templates`, and is refused
    /// without one (the server's `--allow-request-templates`).
    pub fn from_request(
        req: &AttributeRequest,
        tokenizer: &Tokenizer,
        templates: Option<&Sandbox>,
    ) -> Result<Input> {
        check_chat_fields(req)?;
        match (&req.template, &req.text, &req.messages) {
            (Some(_), Some(_), _) => Err(Error::invalid(
                "text",
                "give either `template` (with `values`) or `text`, not both",
            )),
            (None, None, None) => Err(Error::invalid(
                "template",
                "missing input: give `template` with `values`, `messages` with `values`, or `text` \
                 (every token is a feature)",
            )),
            (None, None, Some(messages)) => {
                no_token_fields(req)?;
                from_chat(req, messages, tokenizer, templates)
            }
            (Some(t), None, None) => {
                no_token_fields(req)?;
                from_template(
                    TEMPLATE,
                    t,
                    req.values.as_ref(),
                    req.baselines.as_ref(),
                    req.mask.as_ref(),
                )
            }
            (None, Some(text), None) => {
                for (field, given) in [
                    ("values", req.values.is_some()),
                    ("baselines", req.baselines.is_some()),
                    ("mask", req.mask.is_some()),
                ] {
                    if given {
                        return Err(Error::invalid(
                            field,
                            "only for template input; with `text` every token is a feature \
                             (use `skip_tokens` and `baseline_token`)",
                        ));
                    }
                }
                let t = tokens::TokenInput::new(
                    text,
                    req.skip_tokens.as_deref(),
                    req.baseline_token.as_ref(),
                    tokenizer,
                )?;
                let features = t.features(tokenizer);
                let slots = (0..features.len())
                    .map(|feature| Slot {
                        feature,
                        n_baselines: 1,
                    })
                    .collect();
                Ok(Input {
                    features,
                    slots,
                    prompt: text.clone(),
                    kind: Kind::Tokens(t),
                })
            }
            (_, _, Some(_)) => Err(Error::invalid(
                "messages",
                "give either `messages` or `template`/`text`, not both",
            )),
        }
    }

    /// The token input behind this input, if it is one.
    pub fn tokens(&self) -> Option<&tokens::TokenInput> {
        match &self.kind {
            Kind::Tokens(t) => Some(t),
            Kind::Template { .. } => None,
        }
    }

    pub(crate) fn n_features(&self) -> usize {
        self.features.len()
    }

    /// The request field that holds the features (for errors about their number).
    pub(crate) fn features_field(&self) -> &'static str {
        match self.kind {
            Kind::Template { source, .. } => source.field,
            Kind::Tokens(_) => "text",
        }
    }

    /// The request field that defines what an absent feature becomes.
    pub(crate) fn baselines_field(&self) -> &'static str {
        match self.kind {
            Kind::Template { .. } => "baselines",
            Kind::Tokens(_) => "baseline_token",
        }
    }

    /// True when every slot has a single baseline (no baseline sampling needed).
    pub(crate) fn single_baselines(&self) -> bool {
        self.slots.iter().all(|s| s.n_baselines == 1)
    }

    /// The unperturbed prompt's token ids and the positions of each feature's tokens, for the
    /// gradient methods, which attribute to positions. A text's feature is its token; a
    /// template's placeholder owns every token whose text overlaps its value (a token across
    /// two values goes to the first).
    pub(crate) fn feature_tokens(&self, tokenizer: &Tokenizer) -> Result<FeatureTokens> {
        let (ids, positions) = match &self.kind {
            Kind::Tokens(t) => (t.ids.clone(), t.positions.iter().map(|&p| vec![p]).collect()),
            Kind::Template {
                pieces,
                names,
                values,
                ..
            } => {
                let (text, spans) = render_template_with_spans(pieces, names, |s| &values[s]);
                let (ids, offsets) = tokenizer.encode_prompt_with_offsets(&text)?;
                let mut positions = vec![Vec::new(); self.features.len()];
                for (p, &(a, b)) in offsets.iter().enumerate() {
                    if let Some((_, s)) = spans.iter().find(|(r, _)| a < r.end && r.start < b) {
                        positions[self.slots[*s].feature].push(p);
                    }
                }
                (ids, positions)
            }
        };
        if ids.is_empty() {
            return Err(Error::invalid(self.features_field(), "the prompt is empty"));
        }
        Ok(FeatureTokens { ids, positions })
    }

    /// Token ids of the prompt for one choice per slot. Fails with a clear error if the prompt
    /// comes out empty (the first target token needs a context).
    pub fn render(&self, tokenizer: &Tokenizer, choice: &Choice) -> Result<Vec<u32>> {
        let ids = match &self.kind {
            Kind::Template {
                pieces,
                names,
                values,
                baselines,
                ..
            } => {
                let text = render_template(pieces, names, |s| match choice[s] {
                    None => &values[s],
                    Some(k) => &baselines[s][k],
                });
                tokenizer.encode_prompt(&text)?
            }
            Kind::Tokens(t) => t.render(choice),
        };
        if ids.is_empty() {
            let (field, what) = if choice.iter().all(Option::is_none) {
                (self.features_field(), "the prompt is empty")
            } else {
                (
                    self.baselines_field(),
                    "with these baselines a perturbed prompt is empty, and the first target token needs \
                     a context: give a non-empty baseline or keep some text outside the features",
                )
            };
            return Err(Error::invalid(field, what));
        }
        Ok(ids)
    }
}

/// Chat-only fields without `messages`.
fn check_chat_fields(req: &AttributeRequest) -> Result<()> {
    if req.messages.is_some() {
        return Ok(());
    }
    for (field, given) in [
        ("chat_template", req.chat_template.is_some()),
        ("add_generation_prompt", req.add_generation_prompt.is_some()),
    ] {
        if given {
            return Err(Error::invalid(field, "only for chat input (`messages`)"));
        }
    }
    Ok(())
}

/// Token-input fields with a template or chat input.
fn no_token_fields(req: &AttributeRequest) -> Result<()> {
    for (field, given) in [
        ("skip_tokens", req.skip_tokens.is_some()),
        ("baseline_token", req.baseline_token.is_some()),
    ] {
        if given {
            return Err(Error::invalid(
                field,
                "only for token input (`text`); a template's baselines go in `baselines`",
            ));
        }
    }
    Ok(())
}

/// Renders the messages with the chat template into a template (see [`chat`]) and reads it as a
/// template input.
fn from_chat(
    req: &AttributeRequest,
    messages: &[ChatMessage],
    tokenizer: &Tokenizer,
    templates: Option<&Sandbox>,
) -> Result<Input> {
    let template = match (&req.chat_template, tokenizer.chat_template()) {
        (Some(source), _) => ChatTemplate {
            source,
            bos_token: tokenizer.bos_token(),
            eos_token: tokenizer.eos_token(),
            field: "chat_template",
            sandbox: Some(templates.ok_or_else(|| {
                Error::invalid(
                    "chat_template",
                    "this server does not run chat templates given in requests (its operator can \
                     allow them with --allow-request-templates); leave chat_template out to use the \
                     model's own",
                )
            })?),
        },
        (None, Some(source)) => ChatTemplate {
            source,
            bos_token: tokenizer.bos_token(),
            eos_token: tokenizer.eos_token(),
            field: "messages",
            sandbox: None,
        },
        (None, None) => {
            return Err(Error::invalid(
                "messages",
                "the model has no chat template: give one in `chat_template`, or use `template`",
            ))
        }
    };
    let chat = Chat::new(template, messages, req.add_generation_prompt.unwrap_or(true))?;
    let input = from_template(
        MESSAGES,
        &chat.to_template()?,
        req.values.as_ref(),
        req.baselines.as_ref(),
        req.mask.as_ref(),
    )?;
    let value = |name: &str| {
        req.values
            .as_ref()
            .and_then(|v| v.get(name))
            .map_or("", String::as_str)
    };
    chat.check_values(value, &input.prompt)?;
    Ok(input)
}

fn render_template<'v>(pieces: &[Piece], names: &[String], value: impl Fn(usize) -> &'v str) -> String {
    render_template_with_spans(pieces, names, value).0
}

/// [`render_template`], with the byte range of every placeholder's value and its slot.
fn render_template_with_spans<'v>(
    pieces: &[Piece],
    names: &[String],
    value: impl Fn(usize) -> &'v str,
) -> (String, Vec<(std::ops::Range<usize>, usize)>) {
    let mut out = String::new();
    let mut spans = Vec::new();
    for p in pieces {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Slot(name) => {
                let s = names.iter().position(|n| n == name).unwrap_or(0);
                let start = out.len();
                out.push_str(value(s));
                spans.push((start..out.len(), s));
            }
        }
    }
    (out, spans)
}

fn mask_label(name: &str, v: &serde_json::Value) -> Result<String> {
    match v {
        serde_json::Value::String(s) if !s.is_empty() => Ok(s.clone()),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        _ => Err(Error::invalid(
            format!("mask.{name}"),
            "a group label is a non-empty string or a number",
        )),
    }
}

fn from_template(
    source: Source,
    template: &str,
    values: Option<&BTreeMap<String, String>>,
    baselines: Option<&BTreeMap<String, Baseline>>,
    mask: Option<&BTreeMap<String, serde_json::Value>>,
) -> Result<Input> {
    let pieces = template::parse(template)?;
    let names: Vec<String> = template::names(&pieces).into_iter().map(str::to_string).collect();
    if names.is_empty() {
        return Err(Error::invalid(
            source.field,
            format!(
                "{} no placeholders: write {{name}} where a value goes ({{{{ and }}}} are literal braces)",
                source.has
            ),
        ));
    }
    let listed = || {
        names
            .iter()
            .map(|n| format!("{{{n}}}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let empty = BTreeMap::new();
    let values = values.ok_or_else(|| {
        Error::invalid(
            "values",
            format!("missing: give a value for every placeholder ({})", listed()),
        )
    })?;
    for key in values.keys() {
        if !names.contains(key) {
            return Err(Error::invalid(
                format!("values.{key}"),
                format!("unknown placeholder `{key}`: {} {}", source.has, listed()),
            ));
        }
    }
    let baselines = baselines.unwrap_or(&empty);
    for (key, b) in baselines {
        if !names.contains(key) {
            return Err(Error::invalid(
                format!("baselines.{key}"),
                format!("unknown placeholder `{key}`: {} {}", source.has, listed()),
            ));
        }
        if matches!(b, Baseline::List(l) if l.is_empty()) {
            return Err(Error::invalid(
                format!("baselines.{key}"),
                "the list of baselines is empty; give at least one (\"\" removes the value)",
            ));
        }
    }
    let empty_mask = BTreeMap::new();
    let mask = mask.unwrap_or(&empty_mask);
    let mut labels = BTreeMap::new();
    for (key, v) in mask {
        if !names.contains(key) {
            return Err(Error::invalid(
                format!("mask.{key}"),
                format!("unknown placeholder `{key}`: {} {}", source.has, listed()),
            ));
        }
        labels.insert(key.as_str(), mask_label(key, v)?);
    }
    for (key, label) in &labels {
        if let Some(other) = names
            .iter()
            .find(|n| *n == label && labels.get(n.as_str()) != Some(label))
        {
            return Err(Error::invalid(
                format!("mask.{key}"),
                format!(
                    "group label `{label}` is also the name of placeholder `{other}`, which is not in the \
                     group: two features would be named `{label}`; choose another label"
                ),
            ));
        }
    }

    let mut slot_values = Vec::new();
    let mut slot_baselines = Vec::new();
    let mut slots = Vec::new();
    let mut features: Vec<Feature> = Vec::new();
    for name in &names {
        let value = values.get(name).ok_or_else(|| {
            Error::invalid(
                format!("values.{name}"),
                format!("missing value for placeholder {{{name}}}"),
            )
        })?;
        let b = match baselines.get(name) {
            None => vec![String::new()],
            Some(Baseline::One(s)) => vec![s.clone()],
            Some(Baseline::List(l)) => l.clone(),
        };
        let label = labels.get(name.as_str()).cloned().unwrap_or_else(|| name.clone());
        let feature = match features.iter().position(|f| f.name == label) {
            Some(i) => i,
            None => {
                features.push(Feature {
                    name: label,
                    value: String::new(),
                    baselines: Vec::new(),
                    placeholders: Vec::new(),
                    token_id: None,
                    position: None,
                });
                features.len() - 1
            }
        };
        features[feature].placeholders.push(name.clone());
        slots.push(Slot {
            feature,
            n_baselines: b.len(),
        });
        slot_values.push(value.clone());
        slot_baselines.push(b);
    }
    for (i, f) in features.iter_mut().enumerate() {
        let members: Vec<usize> = (0..slots.len()).filter(|&s| slots[s].feature == i).collect();
        f.value = members
            .iter()
            .map(|&s| slot_values[s].as_str())
            .collect::<Vec<_>>()
            .join(", ");
        f.baselines = if members.len() == 1 {
            slot_baselines[members[0]].clone()
        } else if members.iter().all(|&s| slot_baselines[s].len() == 1) {
            vec![members
                .iter()
                .map(|&s| slot_baselines[s][0].as_str())
                .collect::<Vec<_>>()
                .join(", ")]
        } else {
            members
                .iter()
                .flat_map(|&s| slot_baselines[s].iter().map(move |b| (s, b)))
                .map(|(s, b)| format!("{}: {b}", names[s]))
                .collect()
        };
    }
    let prompt = render_template(&pieces, &names, |s| &slot_values[s]);
    Ok(Input {
        features,
        slots,
        prompt,
        kind: Kind::Template {
            source,
            pieces,
            names,
            values: slot_values,
            baselines: slot_baselines,
        },
    })
}
