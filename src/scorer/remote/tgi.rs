//! Text Generation Inference's `/generate`: it takes text (one prompt per request), so the
//! sequence is sent decoded and `decoder_input_details` returns, per token TGI made of it,
//! `{id, text, logprob}` (the first's logprob null) in `details.prefill`; the alignment check
//! compares those ids with llm-attr's. Format: huggingface/text-generation-inference
//! `router/src/lib.rs` (`GenerateParameters.decoder_input_details`, `Details.prefill:
//! Vec<PrefillToken>`, `PrefillToken{id, text, logprob}`).

use serde_json::{json, Value};

use super::protocol::{array, logprob, malformed, no_prompt_logprobs, Call, Echoed, Protocol, Tok};
use crate::error::Result;

const P: Protocol = Protocol::Tgi;

/// One sequence, as text TGI tokenizes (with its own BOS where it adds one).
pub(crate) fn score_call(text: &str) -> Call {
    Call {
        path: "/generate",
        body: json!({
            "inputs": text,
            "parameters": {
                "max_new_tokens": 1,
                "do_sample": false,
                "details": true,
                "decoder_input_details": true,
            },
        }),
    }
}

pub(crate) fn parse_scores(body: &Value) -> Result<Echoed> {
    let details = body.get("details").ok_or_else(|| no_prompt_logprobs(P))?;
    let prefill = match details.get("prefill") {
        Some(Value::Array(l)) if !l.is_empty() => l,
        _ => return Err(no_prompt_logprobs(P)),
    };
    let mut e = Echoed::default();
    for t in prefill {
        let id = t
            .get("id")
            .and_then(Value::as_u64)
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| malformed(P, "a prefill token has no id"))?;
        e.tokens.push(Tok::Id(id));
        e.logprobs.push(logprob(t.get("logprob")));
    }
    Ok(e)
}

pub(crate) fn generate_call(text: &str, max_new_tokens: usize) -> Call {
    Call {
        path: "/generate",
        body: json!({
            "inputs": text,
            "parameters": {"max_new_tokens": max_new_tokens, "do_sample": false, "details": true},
        }),
    }
}

/// The generated ids (`details.tokens[].id`), special ones (the end token) left out.
pub(crate) fn parse_generated(body: &Value) -> Result<Vec<u32>> {
    let details = body.get("details").ok_or_else(|| malformed(P, "no details"))?;
    array(P, details, "tokens")?
        .iter()
        .filter(|t| !t.get("special").and_then(Value::as_bool).unwrap_or(false))
        .map(|t| {
            t.get("id")
                .and_then(Value::as_u64)
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| malformed(P, "a generated token has no id"))
        })
        .collect()
}
