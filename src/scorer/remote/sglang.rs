//! SGLang's native `/generate` with `input_ids`: `return_logprob` and `logprob_start_len: s`
//! give `meta_info.input_token_logprobs`, one `[logprob, token_id, text]` per input position
//! from s on, the first always null. llm-attr asks from the position before the target, so
//! every target token has its log-prob. Format: sgl-project/sglang `python/sglang/srt/
//! managers/io_struct.py` (`GenerateReqInput`) and `scheduler_output_processor_mixin.py`
//! (`add_input_logprob_return_values`: "Always pad the first one with None").

use serde_json::{json, Value};

use super::protocol::{logprob, malformed, no_prompt_logprobs, sequence, Call, Echoed, Protocol, Tok};
use crate::error::Result;
use crate::model::ScoreItem;

const P: Protocol = Protocol::Sglang;

/// Where log-probs start for `item`: the last prompt token (its own log-prob is the null).
fn start(item: &ScoreItem) -> usize {
    item.prompt.len().saturating_sub(1)
}

pub(crate) fn score_call(items: &[ScoreItem]) -> Call {
    let ids: Vec<Vec<u32>> = items.iter().map(sequence).collect();
    let starts: Vec<usize> = items.iter().map(start).collect();
    Call {
        path: "/generate",
        body: json!({
            "input_ids": ids,
            "sampling_params": {"max_new_tokens": 1, "temperature": 0},
            "return_logprob": true,
            "logprob_start_len": starts,
        }),
    }
}

/// The answers in order: a list for a list of prompts (one object for one).
fn answers(body: &Value, n: usize) -> Result<Vec<&Value>> {
    let list: Vec<&Value> = match body {
        Value::Array(l) => l.iter().collect(),
        one @ Value::Object(_) => vec![one],
        _ => return Err(malformed(P, "neither a list nor an object")),
    };
    if list.len() != n {
        return Err(malformed(P, format!("{} answers to {n} prompts", list.len())));
    }
    Ok(list)
}

pub(crate) fn parse_scores(body: &Value, items: &[ScoreItem]) -> Result<Vec<Echoed>> {
    answers(body, items.len())?
        .into_iter()
        .zip(items)
        .map(|(a, item)| {
            let list = a
                .pointer("/meta_info/input_token_logprobs")
                .and_then(Value::as_array)
                .filter(|l| !l.is_empty())
                .ok_or_else(|| no_prompt_logprobs(P))?;
            let mut e = Echoed {
                start: start(item),
                ..Echoed::default()
            };
            for entry in list {
                let (lp, id) = triple(entry)?;
                e.tokens.push(Tok::Id(id));
                e.logprobs.push(lp);
            }
            Ok(e)
        })
        .collect()
}

/// `[logprob, token_id, text]` (`logprob` may be null).
fn triple(entry: &Value) -> Result<(Option<f64>, u32)> {
    let id = entry
        .get(1)
        .and_then(Value::as_u64)
        .and_then(|x| u32::try_from(x).ok())
        .ok_or_else(|| malformed(P, "a log-prob entry is not [logprob, token_id, text]"))?;
    Ok((logprob(entry.get(0)), id))
}

pub(crate) fn generate_call(prompt: &[u32], max_new_tokens: usize) -> Call {
    Call {
        path: "/generate",
        body: json!({
            "input_ids": prompt,
            "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0},
            "return_logprob": true,
        }),
    }
}

/// The generated ids, from `meta_info.output_token_logprobs`.
pub(crate) fn parse_generated(body: &Value) -> Result<Vec<u32>> {
    let a = answers(body, 1)?
        .into_iter()
        .next()
        .ok_or_else(|| malformed(P, "no answer"))?;
    let list = a
        .pointer("/meta_info/output_token_logprobs")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed(P, "no meta_info.output_token_logprobs"))?;
    list.iter().map(|e| triple(e).map(|t| t.1)).collect()
}
