//! What the user attributes to: a template with placeholders or a text's tokens, turned into
//! features. A feature is made of slots (placeholders or token positions); each slot has its
//! value and one or more baselines. Rendering a choice per slot gives a prompt's token ids.

pub mod chat;
pub(crate) mod split;
pub mod template;
pub(crate) mod tokens;

use std::collections::BTreeMap;
use std::ops::Range;

use crate::error::{Error, Result};
use crate::model::Tokenizer;
use crate::request::{AttributeRequest, Baseline, ChatMessage, Feature, SegmentRef, SplitKind};
use chat::sandbox::Sandbox;
use chat::{Chat, ChatTemplate};
use split::Segmented;
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
        placeholders: Vec<Filled>,
        /// Per slot: value, then baselines.
        values: Vec<String>,
        baselines: Vec<Vec<String>>,
    },
    Tokens(tokens::TokenInput),
}

/// A placeholder and how its slots fill it in.
#[derive(Debug, Clone)]
struct Filled {
    name: String,
    fill: Fill,
}

#[derive(Debug, Clone)]
enum Fill {
    /// The whole value is one slot.
    Whole(usize),
    /// Split into segments, one slot each (`split`).
    Split(Segmented),
}

/// How a split placeholder's value is cut: the kind, and the byte ranges of its segments in
/// order, each a feature (true) or frozen in the prompt (false; a `hierarchy` leaves the
/// segments it does not refine whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    pub kind: SplitKind,
    pub ranges: Vec<(Range<usize>, bool)>,
}

/// Split placeholder -> its layout.
pub(crate) type Layouts = BTreeMap<String, Layout>;

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
        Self::with_layouts(req, tokenizer, templates, None)
    }

    /// [`Input::from_request`], with the split placeholders cut as `layouts` says instead of
    /// by `split` (a level of a `hierarchy`).
    pub(crate) fn with_layouts(
        req: &AttributeRequest,
        tokenizer: &Tokenizer,
        templates: Option<&Sandbox>,
        layouts: Option<&Layouts>,
    ) -> Result<Input> {
        check_chat_fields(req)?;
        let layouts = match layouts {
            Some(l) => l.clone(),
            None => default_layouts(req)?,
        };
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
                from_chat(req, messages, tokenizer, templates, &layouts)
            }
            (Some(t), None, None) => {
                no_token_fields(req)?;
                from_template(
                    TEMPLATE,
                    t,
                    req.values.as_ref(),
                    req.baselines.as_ref(),
                    req.mask.as_ref(),
                    &layouts,
                )
            }
            (None, Some(text), None) => {
                for (field, given) in [
                    ("values", req.values.is_some()),
                    ("baselines", req.baselines.is_some()),
                    ("mask", req.mask.is_some()),
                    ("split", req.split.is_some()),
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
                placeholders,
                values,
                ..
            } => {
                let (text, spans) = render_template_with_spans(pieces, placeholders, &|s| values[s].as_str());
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
                placeholders,
                values,
                baselines,
                ..
            } => {
                let pick = |s: usize| match choice.get(s).copied().flatten() {
                    None => values[s].as_str(),
                    Some(k) => baselines[s][k].as_str(),
                };
                let text = render_template_with_spans(pieces, placeholders, &pick).0;
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
    layouts: &Layouts,
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
        layouts,
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

/// Renders the template with each slot's text given by `text(slot)`; gives the byte range of
/// every slot's text in the result too (none for a segment left out).
fn render_template_with_spans(
    pieces: &[Piece],
    placeholders: &[Filled],
    text: split::SlotText,
) -> (String, Vec<(Range<usize>, usize)>) {
    let mut out = String::new();
    let mut spans = Vec::new();
    for p in pieces {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Slot(name) => match placeholders.iter().find(|f| &f.name == name).map(|f| &f.fill) {
                Some(Fill::Whole(s)) => {
                    let start = out.len();
                    out.push_str(text(*s));
                    spans.push((start..out.len(), *s));
                }
                Some(Fill::Split(segmented)) => segmented.render(&mut out, &mut spans, text),
                None => {}
            },
        }
    }
    (out, spans)
}

/// The layouts `split` asks for: every segment of each split placeholder's value a feature.
fn default_layouts(req: &AttributeRequest) -> Result<Layouts> {
    let Some(split) = &req.split else {
        return Ok(Layouts::new());
    };
    let mut out = Layouts::new();
    for (name, &kind) in split {
        // An unknown or valueless placeholder is reported with the others.
        let value = req
            .values
            .as_ref()
            .and_then(|v| v.get(name))
            .map_or("", String::as_str);
        let ranges = split::segments(value, kind)
            .into_iter()
            .map(|r| (r, true))
            .collect();
        out.insert(name.clone(), Layout { kind, ranges });
    }
    Ok(out)
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
    layouts: &Layouts,
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
    let unknown = |field: &str, key: &str| {
        Error::invalid(
            format!("{field}.{key}"),
            format!("unknown placeholder `{key}`: {} {}", source.has, listed()),
        )
    };
    for key in layouts.keys() {
        if !names.contains(key) {
            return Err(unknown("split", key));
        }
    }
    let values = values.ok_or_else(|| {
        Error::invalid(
            "values",
            format!("missing: give a value for every placeholder ({})", listed()),
        )
    })?;
    for key in values.keys() {
        if !names.contains(key) {
            return Err(unknown("values", key));
        }
    }
    let empty = BTreeMap::new();
    let baselines = baselines.unwrap_or(&empty);
    for (key, b) in baselines {
        if !names.contains(key) {
            return Err(unknown("baselines", key));
        }
        if matches!(b, Baseline::List(l) if l.is_empty()) {
            return Err(Error::invalid(
                format!("baselines.{key}"),
                "the list of baselines is empty; give at least one (\"\" removes the value)",
            ));
        }
    }
    let mut builder = Builder::default();
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
        match layouts.get(name) {
            None => builder.whole(name, value, b),
            Some(layout) => builder.split(name, value, b, layout)?,
        }
    }
    builder.group(mask, &names)?;
    let prompt =
        render_template_with_spans(&pieces, &builder.placeholders, &|s| builder.values[s].as_str()).0;
    Ok(Input {
        features: builder.features,
        slots: builder.slots,
        prompt,
        kind: Kind::Template {
            source,
            pieces,
            placeholders: builder.placeholders,
            values: builder.values,
            baselines: builder.baselines,
        },
    })
}

/// A template's slots, one per placeholder or segment, before `mask` groups them into features.
#[derive(Default)]
struct Builder {
    placeholders: Vec<Filled>,
    /// Per slot: the name `mask` knows it by (`name`, or `name[i]` for a segment), the feature
    /// name it has alone, and its segment.
    keys: Vec<(String, String, Option<SegmentRef>)>,
    values: Vec<String>,
    baselines: Vec<Vec<String>>,
    slots: Vec<Slot>,
    features: Vec<Feature>,
}

impl Builder {
    fn push_slot(&mut self, key: (String, String, Option<SegmentRef>), value: &str, b: &[String]) -> usize {
        self.keys.push(key);
        self.values.push(value.to_string());
        self.baselines.push(b.to_vec());
        self.keys.len() - 1
    }

    fn whole(&mut self, name: &str, value: &str, b: Vec<String>) {
        let s = self.push_slot((name.to_string(), name.to_string(), None), value, &b);
        self.placeholders.push(Filled {
            name: name.to_string(),
            fill: Fill::Whole(s),
        });
    }

    fn split(&mut self, name: &str, value: &str, b: Vec<String>, layout: &Layout) -> Result<()> {
        if layout.ranges.is_empty() {
            return Err(Error::invalid(
                format!("values.{name}"),
                format!(
                    "split into {} segments, the value has none: it is empty or only whitespace; give \
                     it text, or leave it out of `split`",
                    kind_name(layout.kind)
                ),
            ));
        }
        let first = self.keys.len();
        let mut next = first;
        let segmented = Segmented::new(value, &layout.ranges, || {
            next += 1;
            next - 1
        });
        let chars = |byte: usize| value.get(..byte).map_or(0, |v| v.chars().count());
        let actives = layout.ranges.iter().filter(|(_, a)| *a).map(|(r, _)| r);
        for (index, ((_, text), r)) in segmented.active().zip(actives).enumerate() {
            let segment = SegmentRef {
                placeholder: name.to_string(),
                kind: layout.kind,
                index,
                start: chars(r.start),
                end: chars(r.end),
            };
            let key = (
                format!("{name}[{index}]"),
                split::segment_name(name, index, text),
                Some(segment),
            );
            self.push_slot(key, text, &b);
        }
        self.placeholders.push(Filled {
            name: name.to_string(),
            fill: Fill::Split(segmented),
        });
        Ok(())
    }

    /// Makes the features: each slot alone, or with the others of its `mask` label.
    fn group(&mut self, mask: Option<&BTreeMap<String, serde_json::Value>>, names: &[String]) -> Result<()> {
        let labels = self.labels(mask, names)?;
        for (s, (key, own, segment)) in self.keys.iter().enumerate() {
            let label = labels.get(key.as_str()).cloned().unwrap_or_else(|| own.clone());
            let feature = match self.features.iter().position(|f| f.name == label) {
                Some(i) => i,
                None => {
                    self.features.push(Feature {
                        name: label,
                        value: String::new(),
                        baselines: Vec::new(),
                        placeholders: Vec::new(),
                        segments: Vec::new(),
                        token_id: None,
                        position: None,
                    });
                    self.features.len() - 1
                }
            };
            let f = &mut self.features[feature];
            f.placeholders.push(key.clone());
            f.segments.extend(segment.clone());
            self.slots.push(Slot {
                feature,
                n_baselines: self.baselines[s].len(),
            });
        }
        for (i, f) in self.features.iter_mut().enumerate() {
            let members: Vec<usize> = (0..self.slots.len())
                .filter(|&s| self.slots[s].feature == i)
                .collect();
            describe(f, &members, &self.keys, &self.values, &self.baselines);
        }
        Ok(())
    }

    /// `mask`'s label per key, checked: every key names a placeholder or a segment, and no label
    /// is the name of a placeholder outside its group.
    fn labels(
        &self,
        mask: Option<&BTreeMap<String, serde_json::Value>>,
        names: &[String],
    ) -> Result<BTreeMap<String, String>> {
        let mut labels = BTreeMap::new();
        let Some(mask) = mask else {
            return Ok(labels);
        };
        let known = |k: &str| self.keys.iter().any(|(key, _, _)| key == k);
        for (key, v) in mask {
            if !known(key) {
                let split = self
                    .keys
                    .iter()
                    .any(|(k, _, _)| k.starts_with(&format!("{key}[")));
                let message = if split {
                    format!(
                        "`{key}` is split into segments: name them ({key}[0], {key}[1], ...) to group them"
                    )
                } else {
                    let listed: Vec<&str> = self.keys.iter().map(|(k, _, _)| k.as_str()).take(12).collect();
                    format!(
                        "unknown placeholder or segment `{key}`: the features are {}",
                        listed.join(", ")
                    )
                };
                return Err(Error::invalid(format!("mask.{key}"), message));
            }
            labels.insert(key.clone(), mask_label(key, v)?);
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
        Ok(labels)
    }
}

/// A feature's value and baselines from its members' (slots').
fn describe(
    f: &mut Feature,
    members: &[usize],
    keys: &[(String, String, Option<SegmentRef>)],
    values: &[String],
    baselines: &[Vec<String>],
) {
    let segments = members.iter().all(|&s| keys[s].2.is_some());
    let join = if segments { " " } else { ", " };
    f.value = members
        .iter()
        .map(|&s| values[s].as_str())
        .collect::<Vec<_>>()
        .join(join);
    f.baselines = if members.len() == 1
        || (segments && members.iter().all(|&s| baselines[s] == baselines[members[0]]))
    {
        members.first().map(|&s| baselines[s].clone()).unwrap_or_default()
    } else if members.iter().all(|&s| baselines[s].len() == 1) {
        vec![members
            .iter()
            .map(|&s| baselines[s][0].as_str())
            .collect::<Vec<_>>()
            .join(", ")]
    } else {
        members
            .iter()
            .flat_map(|&s| baselines[s].iter().map(move |b| (s, b)))
            .map(|(s, b)| format!("{}: {b}", keys[s].0))
            .collect()
    };
}

/// `sentence`, `paragraph`, ...
pub(crate) fn kind_name(kind: SplitKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
