//! vLLM's OpenAI-compatible `/v1/completions` with token-id prompts: `prompt_logprobs: 0`
//! gives, per prompt position, a map from the token id there to its log-prob (first: null).
//! Format: vllm-project/vllm `vllm/entrypoints/openai/protocol.py` (`CompletionResponseChoice.
//! prompt_logprobs: list[dict[int, Logprob] | None]`, `Logprob{logprob, rank, decoded_token}`).

use serde_json::{json, Value};

use super::protocol::{array, logprob, malformed, no_prompt_logprobs, sequence, Call, Echoed, Protocol, Tok};
use crate::error::Result;
use crate::model::ScoreItem;

const P: Protocol = Protocol::Vllm;

/// One request scoring every item (the whole sequence is the prompt; one token is generated).
pub(crate) fn score_call(model: &str, items: &[ScoreItem]) -> Call {
    let prompts: Vec<Vec<u32>> = items.iter().map(sequence).collect();
    Call {
        path: "/v1/completions",
        body: json!({
            "model": model,
            "prompt": prompts,
            "max_tokens": 1,
            "temperature": 0,
            "prompt_logprobs": 0,
        }),
    }
}

/// The choices in prompt order (by `index`).
pub(crate) fn choices(protocol: Protocol, body: &Value, n: usize) -> Result<Vec<&Value>> {
    let list = array(protocol, body, "choices")?;
    let mut out: Vec<Option<&Value>> = vec![None; n];
    for (i, c) in list.iter().enumerate() {
        let at = c.get("index").and_then(Value::as_u64).map_or(i, |x| x as usize);
        if let Some(slot) = out.get_mut(at) {
            *slot = Some(c);
        }
    }
    out.into_iter()
        .enumerate()
        .map(|(i, c)| c.ok_or_else(|| malformed(protocol, format!("no choice for prompt {i} of {n}"))))
        .collect()
}

/// Each item's positions as the server scored them.
pub(crate) fn parse_scores(body: &Value, items: &[ScoreItem]) -> Result<Vec<Echoed>> {
    let choices = choices(P, body, items.len())?;
    items
        .iter()
        .zip(choices)
        .map(|(item, c)| {
            let list = match c.get("prompt_logprobs") {
                Some(Value::Array(l)) => l,
                _ => return Err(no_prompt_logprobs(P)),
            };
            Ok(echoed(&sequence(item), list))
        })
        .collect()
}

/// Position p's map holds the token there (and, with more top log-probs, others): the entry
/// of llm-attr's token when present, else the first (a mismatch the alignment check names).
fn echoed(seq: &[u32], list: &[Value]) -> Echoed {
    let mut e = Echoed::default();
    for (p, entry) in list.iter().enumerate() {
        let Some(map) = entry.as_object() else {
            e.tokens.push(Tok::Id(seq.get(p).copied().unwrap_or(u32::MAX)));
            e.logprobs.push(None);
            continue;
        };
        let ours = seq.get(p).map(u32::to_string);
        let found = ours.and_then(|k| map.get(&k).map(|v| (k, v)));
        let Some((key, v)) = found.or_else(|| map.iter().next().map(|(k, v)| (k.clone(), v))) else {
            e.tokens.push(Tok::Text(String::new()));
            e.logprobs.push(None);
            continue;
        };
        e.tokens.push(key.parse().map(Tok::Id).unwrap_or(Tok::Text(key)));
        e.logprobs.push(logprob(v.get("logprob")));
    }
    e
}

/// Greedy continuation: token ids come back as `token_id:N` strings.
pub(crate) fn generate_call(model: &str, prompt: &[u32], max_new_tokens: usize) -> Call {
    Call {
        path: "/v1/completions",
        body: json!({
            "model": model,
            "prompt": prompt,
            "max_tokens": max_new_tokens,
            "temperature": 0,
            "logprobs": 0,
            "return_tokens_as_token_ids": true,
        }),
    }
}

/// The generated ids (`logprobs.tokens` as `token_id:N`), else `Err(text)` to re-encode.
pub(crate) fn parse_generated(body: &Value) -> Result<std::result::Result<Vec<u32>, String>> {
    let c = *choices(P, body, 1)?
        .first()
        .ok_or_else(|| malformed(P, "no choice"))?;
    let ids: Option<Vec<u32>> = c
        .pointer("/logprobs/tokens")
        .and_then(Value::as_array)
        .and_then(|t| {
            t.iter()
                .map(|s| s.as_str()?.strip_prefix("token_id:")?.parse().ok())
                .collect()
        });
    match ids {
        Some(ids) => Ok(Ok(ids)),
        None => Ok(Err(c
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string())),
    }
}
