//! An audit result as JSON, JSON lines (one cell a line) or CSV (one cell and target a row).

use super::AuditResult;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Json,
    Jsonl,
    Csv,
}

pub(crate) fn render(result: &AuditResult, format: Format) -> serde_json::Result<String> {
    Ok(match format {
        Format::Json => serde_json::to_string_pretty(result)? + "\n",
        Format::Jsonl => {
            let mut out = String::new();
            for cell in &result.cells {
                out += &serde_json::to_string(cell)?;
                out.push('\n');
            }
            out
        }
        Format::Csv => csv(result),
    })
}

/// RFC 4180 quoting; also quotes a field with an outer space, which targets often have.
fn field(s: &str) -> String {
    let needs = s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ');
    if needs {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn csv(result: &AuditResult) -> String {
    let mut header: Vec<String> = result.swept.iter().map(|s| field(s)).collect();
    header.extend(
        [
            "target",
            "log_prob",
            "log_prob_stderr",
            "token_log_probs",
            "n_contexts",
            "model",
        ]
        .map(String::from),
    );
    let mut out = header.join(",") + "\n";
    for cell in &result.cells {
        for t in &result.targets {
            let mut row: Vec<String> = result.swept.iter().map(|s| field(&cell.values[s])).collect();
            let stderr = cell
                .log_prob_stderr
                .as_ref()
                .and_then(|m| m.get(t))
                .map(f64::to_string)
                .unwrap_or_default();
            let tokens: Vec<String> = cell.token_log_probs[t].iter().map(f64::to_string).collect();
            row.extend([
                field(t),
                cell.log_prob[t].to_string(),
                stderr,
                tokens.join(" "),
                result.n_contexts.to_string(),
                field(&result.model),
            ]);
            out += &(row.join(",") + "\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_quoted_when_needed() {
        assert_eq!(field("Emily"), "Emily");
        assert_eq!(field(" hire"), "\" hire\"");
        assert_eq!(field("a,\"b\""), "\"a,\"\"b\"\"\"");
    }
}
