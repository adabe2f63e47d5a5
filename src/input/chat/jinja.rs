//! Hugging Face chat templates, rendered as transformers' `apply_chat_template` renders them:
//! Jinja2 with `trim_blocks` and `lstrip_blocks`, loop controls, Python's string and dict
//! methods, and transformers' globals `raise_exception` and `strftime_now` and its `tojson`
//! (`json.dumps`, without Jinja's HTML escaping).

use std::fmt::Write as _;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{AutoEscape, Environment, Error as JinjaError, ErrorKind, Value};
use serde::{Deserialize, Serialize};

/// Why a template did not render.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RenderError {
    /// The template does not parse.
    Syntax(String),
    /// The template called `raise_exception(message)`.
    Raised(String),
    /// It needs more memory, output or time than a render may take (see `sandbox`).
    Limit(String),
    /// Any other failure while rendering.
    Failed(String),
}

impl RenderError {
    /// The same error with its message passed through `f`.
    pub(crate) fn map(self, f: impl FnOnce(String) -> String) -> Self {
        match self {
            RenderError::Syntax(m) => RenderError::Syntax(f(m)),
            RenderError::Raised(m) => RenderError::Raised(f(m)),
            RenderError::Limit(m) => RenderError::Limit(f(m)),
            RenderError::Failed(m) => RenderError::Failed(f(m)),
        }
    }
}

/// Instructions one render may run: far more than any real chat template needs, so that a
/// template given in a request cannot loop for long.
const FUEL: u64 = 5_000_000;

/// Renders `source` with `context` (its fields are the template's variables).
pub(super) fn render(source: &str, context: impl Serialize) -> Result<String, RenderError> {
    render_bounded(source, context, usize::MAX)
}

/// [`render`], failing once the output passes `max_bytes`.
pub(super) fn render_bounded(
    source: &str,
    context: impl Serialize,
    max_bytes: usize,
) -> Result<String, RenderError> {
    let env = environment();
    let template = env
        .template_from_str(source)
        .map_err(|e| RenderError::Syntax(describe(&e)))?;
    let mut out = Bounded {
        text: Vec::new(),
        max_bytes,
    };
    let rendered = template.render_captured_to(context, &mut out);
    if out.text.len() > max_bytes {
        return Err(RenderError::Limit(format!(
            "renders more than {} MB of text",
            max_bytes >> 20
        )));
    }
    rendered.map_err(|e| match raised(&e) {
        Some(message) => RenderError::Raised(message),
        None => RenderError::Failed(describe(&e)),
    })?;
    String::from_utf8(out.text).map_err(|e| RenderError::Failed(e.to_string()))
}

/// A writer that takes up to `max_bytes`, then one more byte to mark the overflow, and fails.
struct Bounded {
    text: Vec<u8>,
    max_bytes: usize,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = self.max_bytes.saturating_sub(self.text.len());
        if self.text.len() > self.max_bytes {
            return Err(std::io::Error::other("the output is too long"));
        }
        if buf.len() > room {
            self.text.extend_from_slice(&buf[..=room]);
            return Err(std::io::Error::other("the output is too long"));
        }
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_fuel(Some(FUEL));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    // Jinja2 prints values with Python's str(): True, None, ['a', 'b'].
    env.set_formatter(|out, _, value| {
        let text = match value.kind() {
            ValueKind::Undefined => String::new(),
            ValueKind::String => value.as_str().unwrap_or_default().to_string(),
            _ => py_repr(value),
        };
        out.write_str(&text).map_err(JinjaError::from)
    });
    env
}

/// Python's `repr` of a value (the parts of it chat templates may print).
fn py_repr(v: &Value) -> String {
    let join = |items: Vec<String>| items.join(", ");
    match v.kind() {
        ValueKind::None => "None".into(),
        ValueKind::Bool => if v.is_true() { "True" } else { "False" }.into(),
        ValueKind::Number if v.is_integer() => v.to_string(),
        ValueKind::Number => match f64::try_from(v.clone()) {
            Ok(x) if x.is_nan() => "nan".into(),
            Ok(x) if x.is_infinite() => if x > 0.0 { "inf" } else { "-inf" }.into(),
            Ok(x) => py_float(x),
            Err(_) => v.to_string(),
        },
        ValueKind::String => py_str_repr(v.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => match v.try_iter() {
            Ok(items) => format!("[{}]", join(items.map(|x| py_repr(&x)).collect())),
            Err(_) => v.to_string(),
        },
        ValueKind::Map => match v.try_iter() {
            Ok(keys) => {
                let entry = |k: Value| {
                    let value = v.get_item(&k).unwrap_or_default();
                    format!("{}: {}", py_repr(&k), py_repr(&value))
                };
                format!("{{{}}}", join(keys.map(entry).collect()))
            }
            Err(_) => v.to_string(),
        },
        _ => v.to_string(),
    }
}

fn py_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::from(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// The message of a `raise_exception` call, marking the error it returns.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

fn raise_exception(message: String) -> Result<Value, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, message.clone()).with_source(Raised(message)))
}

fn raised(e: &JinjaError) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(Raised(message)) = s.downcast_ref::<Raised>() {
            return Some(message.clone());
        }
        source = s.source();
    }
    None
}

/// The error and the line it happened on (minijinja's `Display` names the kind and the place).
fn describe(e: &JinjaError) -> String {
    e.to_string()
}

/// Today's local date and time in a `strftime` format, as Python's `datetime.now().strftime`.
fn strftime_now(format: String) -> Result<String, JinjaError> {
    let mut out = String::new();
    write!(out, "{}", chrono::Local::now().format(&format)).map_err(|_| {
        JinjaError::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: invalid format {format:?}"),
        )
    })?;
    Ok(out)
}

/// `json.dumps(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<String, JinjaError> {
    let indent = match kwargs.get::<Option<Value>>("indent")? {
        None => None,
        Some(v) if v.kind() == ValueKind::None => None,
        Some(v) => Some(match v.as_i64() {
            Some(n) => " ".repeat(n.max(0) as usize),
            None => v.as_str().map(str::to_string).ok_or_else(|| {
                JinjaError::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent is a number or a string",
                )
            })?,
        }),
    };
    let (item, key) = match kwargs.get::<Option<Value>>("separators")? {
        Some(v) if v.kind() != ValueKind::None => {
            let part = |i| -> Result<String, JinjaError> {
                Ok(v.get_item_by_index(i)?
                    .as_str()
                    .ok_or_else(|| {
                        JinjaError::new(ErrorKind::InvalidOperation, "tojson: separators are two strings")
                    })?
                    .to_string())
            };
            (part(0)?, part(1)?)
        }
        // Python's defaults: no space before a newline.
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let json = PyJson {
        indent,
        item,
        key,
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
    };
    kwargs.assert_all_used()?;
    let mut out = String::new();
    json.value(&mut out, value, 0)?;
    Ok(out)
}

/// What one `tojson` may write: far more than any chat's tools or messages, and a template
/// that nests a list in itself 64 times (2^64 items, a few bytes of memory) stops here.
const TOJSON_MAX_BYTES: usize = 4 << 20;

/// Python's `json.dumps` output format.
struct PyJson {
    indent: Option<String>,
    item: String,
    key: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

impl PyJson {
    fn value(&self, out: &mut String, v: &Value, depth: usize) -> Result<(), JinjaError> {
        if out.len() > TOJSON_MAX_BYTES {
            return Err(JinjaError::new(
                ErrorKind::InvalidOperation,
                format!("tojson: the JSON passes {} MB", TOJSON_MAX_BYTES >> 20),
            ));
        }
        match v.kind() {
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number if v.is_integer() => out.push_str(&v.to_string()),
            ValueKind::Number => {
                let x = f64::try_from(v.clone())?;
                out.push_str(&match x {
                    x if x.is_nan() => "NaN".into(),
                    x if x.is_infinite() && x > 0.0 => "Infinity".into(),
                    x if x.is_infinite() => "-Infinity".into(),
                    x => py_float(x),
                });
            }
            ValueKind::String => self.string(out, v.as_str().unwrap_or_default()),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                self.container(out, ('[', ']'), &items, depth, |out, item, depth| {
                    self.value(out, item, depth)
                })?;
            }
            ValueKind::Map => {
                let mut entries = Vec::new();
                for k in v.try_iter()? {
                    let value = v.get_item(&k)?;
                    let name = match k.as_str() {
                        Some(s) => s.to_string(),
                        None => k.to_string(),
                    };
                    entries.push((name, value));
                }
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                }
                self.container(out, ('{', '}'), &entries, depth, |out, (name, value), depth| {
                    self.string(out, name);
                    out.push_str(&self.key);
                    self.value(out, value, depth)
                })?;
            }
            kind => {
                return Err(JinjaError::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: a value of type {kind} is not JSON serializable"),
                ))
            }
        }
        Ok(())
    }

    fn container<T>(
        &self,
        out: &mut String,
        (open, close): (char, char),
        items: &[T],
        depth: usize,
        write: impl Fn(&mut String, &T, usize) -> Result<(), JinjaError>,
    ) -> Result<(), JinjaError> {
        out.push(open);
        if items.is_empty() {
            out.push(close);
            return Ok(());
        }
        let newline = |out: &mut String, depth: usize| {
            if let Some(indent) = &self.indent {
                out.push('\n');
                out.push_str(&indent.repeat(depth));
            }
        };
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push_str(&self.item);
            }
            newline(out, depth + 1);
            write(out, item, depth + 1)?;
        }
        newline(out, depth);
        out.push(close);
        Ok(())
    }

    fn string(&self, out: &mut String, s: &str) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && c > '~') => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// Python's `repr` of a finite float.
fn py_float(x: f64) -> String {
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let plain = format!("{x}");
        if plain.contains('.') {
            plain
        } else {
            plain + ".0"
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(source: &str, context: serde_json::Value) -> String {
        render(source, context).unwrap_or_else(|e| panic!("{source}: {e:?}"))
    }

    #[test]
    fn raise_exception_passes_its_message_on() {
        let t = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}ok";
        assert_eq!(
            render(t, json!({"messages": [{"role": "system"}]})),
            Err(RenderError::Raised("Conversation must start with user".into()))
        );
        assert_eq!(ok(t, json!({"messages": [{"role": "user"}]})), "ok");
        // Raised inside a macro and a loop, too.
        let t = "{% macro f(m) %}{{ raise_exception('bad ' + m) }}{% endmacro %}{% for m in ms %}{{ f(m) }}{% endfor %}";
        assert_eq!(
            render(t, json!({"ms": ["x"]})),
            Err(RenderError::Raised("bad x".into()))
        );
    }

    #[test]
    fn other_failures_are_not_raised_exceptions() {
        assert!(matches!(
            render("{% if %}", json!({})),
            Err(RenderError::Syntax(_))
        ));
        assert!(matches!(
            render("{{ nothing.at.all }}", json!({})),
            Err(RenderError::Failed(_))
        ));
        assert!(matches!(
            render(
                "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
                json!({})
            ),
            Err(RenderError::Failed(_))
        ));
    }

    #[test]
    fn tojson_is_pythons_json_dumps() {
        let ctx = json!({"tool": {"name": "f<x>", "b": [1, 2.5, true, null], "é": "a\"\n"}, "empty": []});
        // Insertion order, Python's separators, no HTML escaping, non-ASCII kept.
        assert_eq!(
            ok(
                "{{ {'name': 'f<x>', 'b': [1, 2.5, true, none], 'é': 'a\"\n'} | tojson }}",
                json!({})
            ),
            r#"{"name": "f<x>", "b": [1, 2.5, true, null], "é": "a\"\n"}"#
        );
        assert_eq!(
            ok("{{ tool | tojson(indent=2, sort_keys=true) }}", ctx.clone()),
            "{\n  \"b\": [\n    1,\n    2.5,\n    true,\n    null\n  ],\n  \"name\": \"f<x>\",\n  \"é\": \"a\\\"\\n\"\n}"
        );
        assert_eq!(ok("{{ empty | tojson(indent=4) }}", ctx.clone()), "[]");
        assert_eq!(
            ok(
                "{{ tool['é'] | tojson(ensure_ascii=true) }}{{ '😀' | tojson(ensure_ascii=true) }}",
                ctx
            ),
            r#""a\"\n""\ud83d\ude00""#
        );
        assert_eq!(
            ok("{{ [1e20, 1e-5, 0.1, 3.0] | tojson }}", json!({})),
            "[1e+20, 1e-05, 0.1, 3.0]"
        );
    }

    #[test]
    fn namespace_and_loop_controls() {
        let t = "{% set ns = namespace(found=false, n=0) %}\
                 {% for m in ms %}{% if m == 'skip' %}{% continue %}{% endif %}\
                 {% if m == 'stop' %}{% break %}{% endif %}{% set ns.n = ns.n + 1 %}\
                 {% if m == 'x' %}{% set ns.found = true %}{% endif %}\
                 [{{ loop.index }}/{{ loop.index0 }}{% if loop.first %} first{% endif %}{% if loop.last %} last{% endif %}]\
                 {% endfor %}{{ ns.n }} {{ ns.found }}";
        assert_eq!(
            ok(t, json!({"ms": ["a", "skip", "x", "stop", "b"]})),
            "[1/0 first][3/2]2 True"
        );
        assert_eq!(ok(t, json!({"ms": ["a", "b"]})), "[1/0 first][2/1 last]2 False");
    }

    #[test]
    fn trims_blocks_and_python_methods() {
        // trim_blocks drops the newline after a tag; lstrip_blocks the indentation before one.
        let t = "{% for m in ms %}\n    {% if m.strip().startswith('a') %}\n{{ m.strip().upper() }}|{{ m.replace('a', 'o') }}\n    {% endif %}\n{% endfor %}";
        assert_eq!(ok(t, json!({"ms": [" ab ", "b"]})), "AB| ob \n");
        assert_eq!(
            ok(
                "{{ d.items() | list | length }} {{ 'a,b'.split(',') }}",
                json!({"d": {"x": 1}})
            ),
            "1 ['a', 'b']"
        );
    }

    #[test]
    fn values_print_as_python_prints_them() {
        assert_eq!(
            ok(
                "{{ [true, none, 1.5, \"it's\", 'a\\nb'] }} {{ {'a': 1} }} {{ 2 > 1 }}{{ undefined_name }}",
                json!({})
            ),
            "[True, None, 1.5, \"it's\", 'a\\nb'] {'a': 1} True"
        );
    }

    #[test]
    fn strftime_now_formats_today() {
        let year = ok("{{ strftime_now('%Y') }}", json!({}));
        assert_eq!(year.len(), 4, "{year}");
        assert!(year.starts_with('2'), "{year}");
        assert!(matches!(
            render("{{ strftime_now('%Q') }}", json!({})),
            Err(RenderError::Failed(_))
        ));
    }
}
