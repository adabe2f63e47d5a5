//! Template strings: `{name}` placeholders, `{{`/`}}` literal braces (Python's `str.format`).

use crate::error::{Error, Result};

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Literal text, with `{{`/`}}` already read as single braces.
    Text(String),
    /// A placeholder, by name.
    Slot(String),
}

/// Splits a template into text and placeholders. A placeholder may appear more than once (every
/// occurrence gets the same value, as with `str.format`). Errors name the field `template`.
pub fn parse(template: &str) -> Result<Vec<Piece>> {
    if template.is_empty() {
        return Err(Error::invalid("template", "the template is empty"));
    }
    parse_text(template, "template")
}

/// Splits text that may hold placeholders (a template, a chat message) into pieces; it may be
/// empty. Errors name `field`.
pub(crate) fn parse_text(template: &str, field: &str) -> Result<Vec<Piece>> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = template.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            '{' if matches!(chars.peek(), Some((_, '{'))) => {
                chars.next();
                text.push('{');
            }
            '}' if matches!(chars.peek(), Some((_, '}'))) => {
                chars.next();
                text.push('}');
            }
            '}' => {
                return Err(Error::invalid(
                    field,
                    format!(
                    "unbalanced braces: '}}' at byte {at} closes nothing (write '}}}}' for a literal brace)"
                ),
                ))
            }
            '{' => {
                let mut name = String::new();
                let mut closed = false;
                for (inner_at, c) in chars.by_ref() {
                    match c {
                        '}' => {
                            closed = true;
                            break;
                        }
                        '{' => {
                            return Err(Error::invalid(
                                field,
                                format!(
                                    "unbalanced braces: '{{' at byte {inner_at} inside the placeholder opened at \
                                     byte {at} (write '{{{{' for a literal brace)"
                                ),
                            ))
                        }
                        _ => name.push(c),
                    }
                }
                if !closed {
                    return Err(Error::invalid(
                        field,
                        format!("unbalanced braces: '{{' at byte {at} is never closed (write '{{{{' for a literal brace)"),
                    ));
                }
                check_name(&name, at, field)?;
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Slot(name));
            }
            _ => text.push(c),
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

fn check_name(name: &str, at: usize, field: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(
            field,
            format!(
                "the placeholder at byte {at} has no name: write {{name}} (positional {{}} is not supported)"
            ),
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(Error::invalid(
            field,
            format!(
                "placeholder {{{name}}} at byte {at}: names use letters, digits, '_' and '-' only \
                 (found {bad:?}; format specs and conversions are not supported)"
            ),
        ));
    }
    Ok(())
}

/// `text` as literal template text: braces doubled, so that `parse` gives `text` back.
pub fn escape(text: &str) -> String {
    text.replace('{', "{{").replace('}', "}}")
}

/// Placeholder names in order of first appearance.
pub fn names(pieces: &[Piece]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for p in pieces {
        if let Piece::Slot(name) = p {
            if !out.contains(&name.as_str()) {
                out.push(name);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(r: Result<Vec<Piece>>) -> String {
        let e = r.unwrap_err();
        assert_eq!(e.field(), Some("template"), "{e}");
        e.to_string()
    }

    #[test]
    fn parses_placeholders_and_literal_braces() {
        let p = parse("{{x}} {name} from {country}}} {name}").unwrap();
        assert_eq!(
            p,
            vec![
                Piece::Text("{x} ".into()),
                Piece::Slot("name".into()),
                Piece::Text(" from ".into()),
                Piece::Slot("country".into()),
                Piece::Text("} ".into()),
                Piece::Slot("name".into()),
            ]
        );
        assert_eq!(names(&p), vec!["name", "country"]);
    }

    #[test]
    fn escaped_text_parses_back_to_itself() {
        let text = "{% if x %}{{ y }}{% endif %} }{";
        assert_eq!(parse(&escape(text)).unwrap(), vec![Piece::Text(text.into())]);
    }

    #[test]
    fn message_text_may_be_empty_and_errors_name_its_field() {
        assert_eq!(parse_text("", "messages[0].content").unwrap(), vec![]);
        let e = parse_text("a {b", "messages[1].content").unwrap_err();
        assert_eq!(e.field(), Some("messages[1].content"), "{e}");
    }

    #[test]
    fn rejects_bad_templates() {
        assert!(field(parse("")).contains("empty"));
        assert!(field(parse("a {name")).contains("never closed"));
        assert!(field(parse("a } b")).contains("closes nothing"));
        assert!(field(parse("a {na{me}}")).contains("inside the placeholder"));
        assert!(field(parse("a {} b")).contains("no name"));
        assert!(field(parse("a {x:>3} b")).contains("format specs"));
        assert!(field(parse("a {x.y} b")).contains("names use"));
    }
}
