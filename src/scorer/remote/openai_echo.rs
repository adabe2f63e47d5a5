//! The legacy OpenAI completion with `echo: true` and `logprobs`: the prompt comes back as
//! token strings with their log-probs (`logprobs.tokens`, `logprobs.token_logprobs`, the
//! first null), then the generated token. Text in, one prompt per request (llama-cpp-python
//! takes no more). Format: OpenAI's legacy Completions API (`choices[].logprobs{tokens,
//! token_logprobs, top_logprobs, text_offset}`), as vLLM `vllm/entrypoints/openai/protocol.py`
//! (`CompletionLogProbs`) and llama-cpp-python `llama_cpp/llama_types.py`
//! (`CompletionLogprobs`) give it.

use serde_json::{json, Value};

use super::protocol::{array, logprob, malformed, no_prompt_logprobs, Call, Echoed, Protocol, Tok};
use super::vllm::choices;
use crate::error::Result;

const P: Protocol = Protocol::OpenaiEcho;

pub(crate) fn score_call(model: &str, text: &str) -> Call {
    Call {
        path: "/v1/completions",
        body: json!({
            "model": model,
            "prompt": text,
            "echo": true,
            "logprobs": 1,
            "max_tokens": 1,
            "temperature": 0,
        }),
    }
}

pub(crate) fn parse_scores(body: &Value) -> Result<Echoed> {
    let c = *choices(P, body, 1)?
        .first()
        .ok_or_else(|| malformed(P, "no choice"))?;
    let lp = match c.get("logprobs") {
        Some(v @ Value::Object(_)) => v,
        _ => return Err(no_prompt_logprobs(P)),
    };
    let tokens = array(P, lp, "tokens")?;
    let values = array(P, lp, "token_logprobs")?;
    if tokens.len() != values.len() {
        return Err(malformed(P, "tokens and token_logprobs differ in length"));
    }
    Ok(Echoed {
        start: 0,
        tokens: tokens
            .iter()
            .map(|t| {
                let s = t.as_str().unwrap_or_default();
                match s.strip_prefix("token_id:").and_then(|n| n.parse().ok()) {
                    Some(id) => Tok::Id(id),
                    None => Tok::Text(s.to_string()),
                }
            })
            .collect(),
        logprobs: values.iter().map(|v| logprob(Some(v))).collect(),
    })
}

pub(crate) fn generate_call(model: &str, text: &str, max_new_tokens: usize) -> Call {
    Call {
        path: "/v1/completions",
        body: json!({"model": model, "prompt": text, "max_tokens": max_new_tokens, "temperature": 0}),
    }
}

/// The generated text (llm-attr encodes it).
pub(crate) fn parse_generated(body: &Value) -> Result<String> {
    let c = *choices(P, body, 1)?
        .first()
        .ok_or_else(|| malformed(P, "no choice"))?;
    Ok(c.get("text")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string())
}
