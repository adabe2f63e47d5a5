//! Chat input: messages whose contents hold `{placeholders}`, rendered with the model's chat
//! template.
//!
//! The template runs once, with a sentinel standing in for every placeholder occurrence. In the
//! rendered text the sentinels become `{name}` again and everything else (the template's markup
//! and the messages' own text) becomes literal text, braces escaped: an ordinary template. Every
//! coalition then fills in that one template, so the placeholders are the features and the
//! markup is the same for all of them. A check makes sure the template keeps message text as
//! given: rendering the messages with the values filled in must give the template's prompt.

mod jinja;
pub mod sandbox;

use serde::Serialize;

use super::template::{self, Piece};
use crate::error::{Error, Result};
use crate::request::{ChatMessage, Role};
use jinja::RenderError;
use sandbox::Sandbox;

/// A chat template and what transformers passes it besides the messages.
#[derive(Debug, Clone, Copy)]
pub struct ChatTemplate<'a> {
    /// The template's Jinja source.
    pub source: &'a str,
    /// Text of the beginning-of-sequence token, given to the template as `bos_token`.
    pub bos_token: Option<&'a str>,
    /// Text of the end-of-sequence token, given to the template as `eos_token`.
    pub eos_token: Option<&'a str>,
    /// The request field to blame when the template itself fails: `chat_template` when the
    /// request gave it, `messages` when it is the model's.
    pub field: &'static str,
    /// Where a template given in the request renders (the model's own render in-process).
    pub sandbox: Option<&'a Sandbox>,
}

/// A chat request, parsed: its messages' contents split into text and placeholders.
pub struct Chat<'a> {
    template: ChatTemplate<'a>,
    roles: Vec<Role>,
    contents: Vec<Vec<Piece>>,
    add_generation_prompt: bool,
}

impl Role {
    /// The role's name in the template's messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// The variables transformers' `apply_chat_template` gives a template.
#[derive(Serialize)]
struct Context<'a> {
    messages: Vec<Message<'a>>,
    add_generation_prompt: bool,
    tools: Option<()>,
    documents: Option<()>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bos_token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eos_token: Option<&'a str>,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'a str,
    content: String,
}

impl<'a> Chat<'a> {
    /// Parses each message's placeholders; no messages, an empty template or a bad placeholder
    /// is an [`Error::Invalid`] naming its field.
    pub fn new(
        template: ChatTemplate<'a>,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Self> {
        if messages.is_empty() {
            return Err(Error::invalid(
                "messages",
                "no messages: give at least one {\"role\", \"content\"}",
            ));
        }
        if template.source.trim().is_empty() {
            return Err(Error::invalid(template.field, "the chat template is empty"));
        }
        let contents = messages
            .iter()
            .enumerate()
            .map(|(i, m)| template::parse_text(&m.content, &format!("messages[{i}].content")))
            .collect::<Result<_>>()?;
        Ok(Chat {
            template,
            roles: messages.iter().map(|m| m.role).collect(),
            contents,
            add_generation_prompt,
        })
    }

    /// The rendered chat as a template: the markup as literal text, each placeholder as `{name}`.
    pub fn to_template(&self) -> Result<String> {
        let marker = self.marker();
        let mut names = Vec::new();
        let mut occurs_in = Vec::new();
        let rendered = self.render(|i, name| {
            names.push(name.to_string());
            occurs_in.push(i);
            format!("{marker}{}{marker}", names.len() - 1)
        });
        // An error may quote message text: its sentinels read as the placeholders again.
        let unmark = |text: String| {
            names.iter().enumerate().rev().fold(text, |t, (at, name)| {
                t.replace(&format!("{marker}{at}{marker}"), &format!("{{{name}}}"))
            })
        };
        let rendered = rendered.map_err(|e| self.render_error(e.map(unmark)))?;
        let mut seen = vec![false; names.len()];
        let mut out = String::new();
        let parts: Vec<&str> = rendered.split(marker).collect();
        for (k, part) in parts.iter().enumerate() {
            if k.is_multiple_of(2) {
                out.push_str(&template::escape(part));
                continue;
            }
            let Some(at) = part.parse::<usize>().ok().filter(|&at| at < names.len()) else {
                return Err(self.rewrites_messages());
            };
            seen[at] = true;
            out.push('{');
            out.push_str(&names[at]);
            out.push('}');
        }
        if parts.len().is_multiple_of(2) {
            return Err(self.rewrites_messages());
        }
        if let Some(at) = seen.iter().position(|s| !s) {
            return Err(Error::invalid(
                format!("messages[{}].content", occurs_in[at]),
                format!(
                    "the chat template leaves placeholder {{{}}} of this message out of the prompt",
                    names[at]
                ),
            ));
        }
        if out.is_empty() {
            return Err(Error::invalid(
                self.template.field,
                "the chat template renders nothing",
            ));
        }
        Ok(out)
    }

    /// Checks that the messages rendered with `value` filled in give `prompt` (the template from
    /// [`Chat::to_template`] filled in with the same values): true unless the template trims,
    /// escapes or otherwise rewrites message text next to a placeholder.
    pub(crate) fn check_values<'v>(&self, value: impl Fn(&str) -> &'v str, prompt: &str) -> Result<()> {
        let direct = self
            .render(|_, name| value(name).to_string())
            .map_err(|e| self.render_error(e))?;
        if direct == prompt {
            return Ok(());
        }
        let at = direct
            .char_indices()
            .zip(prompt.chars())
            .find(|((_, a), b)| a != b)
            .map_or(direct.len().min(prompt.len()), |((at, _), _)| at);
        let around = |s: &str| -> String { s[at..].chars().take(30).collect() };
        Err(Error::invalid(
            "messages",
            format!(
                "the chat template rewrites message text next to a placeholder (it trims or escapes it), \
                 so the placeholders cannot be perturbed without perturbing its markup: at byte {at} the \
                 messages rendered with their values give {:?}, the prompt with the values filled in {:?}",
                around(&direct),
                around(prompt)
            ),
        ))
    }

    /// Renders the messages, each placeholder occurrence replaced by `fill(message index, name)`.
    fn render(
        &self,
        mut fill: impl FnMut(usize, &str) -> String,
    ) -> std::result::Result<String, RenderError> {
        let mut messages = Vec::with_capacity(self.contents.len());
        for (i, (role, pieces)) in self.roles.iter().zip(&self.contents).enumerate() {
            let mut content = String::new();
            for p in pieces {
                match p {
                    Piece::Text(t) => content.push_str(t),
                    Piece::Slot(name) => content.push_str(&fill(i, name)),
                }
            }
            messages.push(Message {
                role: role.as_str(),
                content,
            });
        }
        let context = Context {
            messages,
            add_generation_prompt: self.add_generation_prompt,
            tools: None,
            documents: None,
            bos_token: self.template.bos_token,
            eos_token: self.template.eos_token,
        };
        match self.template.sandbox {
            Some(sandbox) => sandbox.render(self.template.source, context),
            None => jinja::render(self.template.source, context),
        }
    }

    fn render_error(&self, e: RenderError) -> Error {
        match e {
            RenderError::Raised(message) => Error::invalid(
                "messages",
                format!("the chat template refuses these messages: {message}"),
            ),
            RenderError::Syntax(e) => Error::invalid(
                self.template.field,
                format!("the chat template does not parse: {e}"),
            ),
            RenderError::Limit(e) => Error::invalid(self.template.field, format!("the chat template {e}")),
            RenderError::Failed(e) => Error::invalid(
                self.template.field,
                format!("the chat template fails on these messages: {e}"),
            ),
        }
    }

    /// A character that occurs in neither the template nor the messages, to delimit sentinels.
    fn marker(&self) -> char {
        let used = |c: char| {
            self.template.source.contains(c)
                || self.contents.iter().flatten().any(|p| match p {
                    Piece::Text(t) | Piece::Slot(t) => t.contains(c),
                })
        };
        // Unicode's private use area: no template prints these on its own.
        ('\u{E000}'..='\u{F8FF}')
            .find(|&c| !used(c))
            .unwrap_or('\u{F0000}')
    }

    fn rewrites_messages(&self) -> Error {
        Error::invalid(
            "messages",
            "the chat template rewrites the text of the messages (it cuts into a placeholder), so the \
             placeholders cannot be found in the prompt it renders",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str =
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}\
        {{ '<|im_start|>system\\nBe brief.<|im_end|>\\n' }}{% endif %}\
        {{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}\
        {% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    fn template(source: &str) -> ChatTemplate<'_> {
        ChatTemplate {
            source,
            bos_token: Some("<s>"),
            eos_token: Some("</s>"),
            field: "messages",
            sandbox: None,
        }
    }

    fn msg(role: Role, content: &str) -> ChatMessage {
        ChatMessage {
            role,
            content: content.into(),
        }
    }

    fn to_template(source: &str, messages: &[ChatMessage]) -> Result<String> {
        Chat::new(template(source), messages, true)?.to_template()
    }

    #[test]
    fn markup_is_literal_and_placeholders_stay_placeholders() {
        let t = to_template(
            "{{ bos_token }}{% for m in messages %}{{ '{' + m.role + '} ' + m.content }}|{% endfor %}",
            &[msg(Role::User, "{name} likes {{braces}} and {name}")],
        )
        .unwrap();
        assert_eq!(t, "<s>{{user}} {name} likes {{braces}} and {name}|");
        let pieces = template::parse(&t).unwrap();
        assert_eq!(template::names(&pieces), vec!["name"]);
    }

    #[test]
    fn generation_prompt_and_default_system_message() {
        let messages = [msg(Role::User, "Hi {name}")];
        let with = Chat::new(template(CHATML), &messages, true)
            .unwrap()
            .to_template()
            .unwrap();
        assert_eq!(
            with,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi {name}<|im_end|>\n<|im_start|>assistant\n"
        );
        let without = Chat::new(template(CHATML), &messages, false)
            .unwrap()
            .to_template()
            .unwrap();
        assert!(!without.ends_with("assistant\n"), "{without}");
    }

    #[test]
    fn errors_name_the_field() {
        let field = |r: Result<String>| {
            let e = r.unwrap_err();
            (e.field().unwrap().to_string(), e.to_string())
        };
        let (f, _) = field(to_template(CHATML, &[]));
        assert_eq!(f, "messages");
        let (f, m) = field(to_template(
            "{{ raise_exception('System role not supported') }}",
            &[msg(Role::System, "{x}")],
        ));
        assert_eq!(f, "messages");
        assert!(m.ends_with("System role not supported"), "{m}");
        let (f, _) = field(to_template(
            CHATML,
            &[msg(Role::User, "a"), msg(Role::User, "{b")],
        ));
        assert_eq!(f, "messages[1].content");
        let (f, m) = field(to_template(
            "{% for m in messages if m.role != 'system' %}{{ m.content }}{% endfor %}",
            &[msg(Role::System, "{x}"), msg(Role::User, "{y}")],
        ));
        assert_eq!(f, "messages[0].content");
        assert!(m.contains("{x}"), "{m}");
        let (f, _) = field(to_template(
            "{{ messages[0].content[:2] }}",
            &[msg(Role::User, "{x}")],
        ));
        assert_eq!(f, "messages");
        let mut bad = template("{% for %}");
        bad.field = "chat_template";
        let (f, _) = field(Chat::new(bad, &[msg(Role::User, "{x}")], true).and_then(|c| c.to_template()));
        assert_eq!(f, "chat_template");
    }

    #[test]
    fn values_must_render_as_the_filled_in_template() {
        let trim = "{% for m in messages %}[{{ m.content | trim }}]{% endfor %}";
        let chat = Chat::new(template(trim), &[msg(Role::User, "{name} is here")], true).unwrap();
        assert_eq!(chat.to_template().unwrap(), "[{name} is here]");
        assert!(chat.check_values(|_| "Georg", "[Georg is here]").is_ok());
        // A value with a leading space is trimmed by the template but not in the filled-in one.
        let e = chat.check_values(|_| " Georg", "[ Georg is here]").unwrap_err();
        assert_eq!(e.field(), Some("messages"), "{e}");
    }
}
