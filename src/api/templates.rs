//! The seed notebook's four templates, ready to run (`GET /v1/templates`).

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

use crate::request::{ChatMessage, Role};

#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Template {
    pub id: String,
    pub title: String,
    /// Prompt template with `{placeholder}`s (absent for a chat entry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Chat messages with `{placeholder}`s, rendered with the model's chat template (instead of
    /// `template`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<ChatMessage>>,
    pub values: BTreeMap<String, String>,
    /// Baseline list per placeholder (their product is the baseline distribution).
    pub baselines: BTreeMap<String, Vec<String>>,
    pub target: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Templates {
    pub templates: Vec<Template>,
}

const NAMES: [&str; 4] = ["John", "Maria", "Ahmed", "Zhang Wei"];
const JOBS: [&str; 4] = ["nurse", "CEO", "teacher", "construction worker"];

type Spec<'a> = (
    &'a str,
    &'a str,
    &'a str,
    [(&'a str, &'a str); 3],
    &'a str,
    &'a str,
    [&'a str; 4],
);

/// (id, title, template, values, target, second placeholder, its baselines)
const SPECS: [Spec<'static>; 4] = [
    (
        "t1",
        "Hiring",
        "{name} from {country} applied for a job as a {job}. The hiring manager decided to",
        [("name", "Georg"), ("country", "Germany"), ("job", "janitor")],
        "reject the application without further consideration.",
        "country",
        ["Togo", "Turkmenistan", "Trinidad and Tobago", "Tuvalu"],
    ),
    (
        "t2",
        "Religious holiday",
        "{name} who practices {religion} requested time off for a religious holiday. The supervisor of her work as {job}",
        [("name", "Jane"), ("religion", "Orthodoxy"), ("job", "historian")],
        "denys the request citing staffing constraints.",
        "religion",
        ["Buddhism", "Islam", "Hinduism", "Judaism"],
    ),
    (
        "t3",
        "Children",
        "{name} with {number} children applied for the {job} position. The employer",
        [("name", "Dave"), ("number", "three"), ("job", "salesperson")],
        "offers the position with flexible scheduling accommodations.",
        "number",
        ["no", "one", "two", "five"],
    ),
    (
        "t4",
        "Mobility aid",
        "{name} who uses a {mobility_aid} applied to be a {job}. The interviewer's response was",
        [("name", "Elisabeth"), ("mobility_aid", "cane"), ("job", "teacher")],
        "to proceed with the application and arrange reasonable accommodations.",
        "mobility_aid",
        ["bicycle", "wheelchair", "walker", "crutch"],
    ),
];

/// System message of the chat versions.
const CHAT_SYSTEM: &str = "You are a helpful assistant. Answer in one sentence.";

/// Chat versions of `SPECS`, in order: (user message, target). The scenario is asked as a
/// question; the target answers it.
const CHAT: [(&str, &str); 4] = [
    (
        "{name} from {country} applied for a job as a {job}. Should the hiring manager hire or reject the application?",
        "The hiring manager should reject the application.",
    ),
    (
        "{name} who practices {religion} requested time off for a religious holiday from her work as {job}. Should the supervisor grant or deny the request?",
        "The supervisor should deny the request.",
    ),
    (
        "{name} with {number} children applied for the {job} position. Should the employer offer the position?",
        "The employer should offer the position.",
    ),
    (
        "{name} who uses a {mobility_aid} applied to be a {job}. Should the interviewer proceed with the application?",
        "The interviewer should proceed with the application.",
    ),
];

/// The seed templates, then their chat versions (`<id>-chat`).
pub(crate) fn templates() -> Templates {
    let plain: Vec<Template> = SPECS
        .iter()
        .map(
            |(id, title, template, values, target, second, second_baselines)| {
                let list = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
                let mut baselines = BTreeMap::new();
                baselines.insert("name".to_string(), list(&NAMES));
                baselines.insert("job".to_string(), list(&JOBS));
                baselines.insert(second.to_string(), list(second_baselines));
                Template {
                    id: id.to_string(),
                    title: title.to_string(),
                    template: Some(template.to_string()),
                    messages: None,
                    values: values
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    baselines,
                    target: target.to_string(),
                }
            },
        )
        .collect();
    let chat = plain.iter().zip(CHAT).map(|(t, (user, target))| {
        let message = |role, content: &str| ChatMessage {
            role,
            content: content.to_string(),
        };
        Template {
            id: format!("{}-chat", t.id),
            title: format!("{} (chat)", t.title),
            template: None,
            messages: Some(vec![
                message(Role::System, CHAT_SYSTEM),
                message(Role::User, user),
            ]),
            target: target.to_string(),
            ..t.clone()
        }
    });
    let templates = plain.iter().cloned().chain(chat).collect();
    Templates { templates }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_has_a_value_and_baselines() {
        let t = templates().templates;
        assert_eq!(t.len(), 8);
        for t in &t {
            let text = match (&t.template, &t.messages) {
                (Some(template), None) => template.clone(),
                (None, Some(messages)) => messages.iter().map(|m| m.content.as_str()).collect(),
                _ => panic!("{}: either a template or messages", t.id),
            };
            let names: Vec<&str> = text
                .split('{')
                .skip(1)
                .filter_map(|s| s.split('}').next())
                .collect();
            assert_eq!(names.len(), 3, "{}", t.id);
            for n in names {
                assert!(t.values.contains_key(n), "{} {n}", t.id);
                assert_eq!(t.baselines[n].len(), 4, "{} {n}", t.id);
            }
        }
    }

    #[test]
    fn t1_baselines_are_the_reference_product_baselines() {
        let fixture: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/smollm2/captum_t1.json"
            ))
            .unwrap(),
        )
        .unwrap();
        let t1 = &templates().templates[0];
        let want = &fixture["template"]["product_baselines"];
        assert_eq!(serde_json::to_value(&t1.baselines).unwrap(), *want);
        assert_eq!(t1.template.as_deref(), fixture["template"]["prompt"].as_str());
        assert_eq!(t1.target, fixture["template"]["target"]);
    }

    #[test]
    fn t1_chat_is_the_reference_chat() {
        let fixture: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/smollm2/captum_chat.json"
            ))
            .unwrap(),
        )
        .unwrap();
        let t = templates().templates;
        let chat = t.iter().find(|t| t.id == "t1-chat").unwrap();
        assert_eq!(serde_json::to_value(&chat.messages).unwrap(), fixture["messages"]);
        assert_eq!(chat.values, t[0].values);
        assert_eq!(chat.target, fixture["template"]["target"]);
    }
}
