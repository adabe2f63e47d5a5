//! The wire protocols a remote scorer speaks, and what every one of them answers in the same
//! shape: per scored position, the token the server says it scored and its log-prob.

use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::ScoreItem;

/// How to ask a server for prompt log-probs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// Probe the server once at start.
    Auto,
    /// vLLM: `/v1/completions` with token-id prompts and `prompt_logprobs`.
    Vllm,
    /// SGLang: native `/generate` with `input_ids` and `return_logprob`.
    Sglang,
    /// Text Generation Inference: `/generate` with `decoder_input_details` (text in).
    Tgi,
    /// The legacy OpenAI form: `/v1/completions` with `echo` and `logprobs`.
    OpenaiEcho,
}

impl Protocol {
    /// The name `--remote-protocol` takes.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Auto => "auto",
            Protocol::Vllm => "vllm",
            Protocol::Sglang => "sglang",
            Protocol::Tgi => "tgi",
            Protocol::OpenaiEcho => "openai-echo",
        }
    }

    /// Whether one request may carry several prompts.
    pub(crate) fn takes_lists(self) -> bool {
        !matches!(self, Protocol::Tgi)
    }

    /// How to turn prompt log-probs on, for the error a server without them gets.
    pub(crate) fn how_to_enable(self) -> &'static str {
        match self {
            Protocol::Vllm => "vLLM returns prompt_logprobs unless started with --max-logprobs 0",
            Protocol::Sglang => "SGLang returns them with return_logprob (not with --skip-tokenizer-init)",
            Protocol::Tgi => "TGI returns details.prefill with decoder_input_details (TGI 1.0 or newer)",
            Protocol::OpenaiEcho | Protocol::Auto => {
                "llama-cpp-python needs --logits_all true; vLLM answers echo with logprobs"
            }
        }
    }
}

/// The token a server says it scored at a position.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    Id(u32),
    Text(String),
}

/// One sequence as the server scored it: `tokens[j]` and `logprobs[j]` are about position
/// `start + j` of the sequence (prompt then target); `None`: no log-prob (the first token).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Echoed {
    pub start: usize,
    pub tokens: Vec<Tok>,
    pub logprobs: Vec<Option<f64>>,
}

/// One request of one protocol: the path under the server's root and its JSON body.
pub(crate) struct Call {
    pub path: &'static str,
    pub body: Value,
}

/// What the server is, as the start-up probe found it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ServerFacts {
    pub protocol: Protocol,
    pub model: String,
    /// What the server reports that pins the weights (a commit, a path); part of the score
    /// cache's key.
    pub revision: String,
    /// Most tokens of one sequence (prompt + generated) the server takes, where it says.
    pub context: Option<usize>,
}

/// The sequence of an item: prompt then target.
pub(crate) fn sequence(item: &ScoreItem) -> Vec<u32> {
    let mut s = item.prompt.clone();
    s.extend_from_slice(&item.target);
    s
}

/// A server answer that is not in the protocol's shape.
pub(crate) fn malformed(protocol: Protocol, what: impl std::fmt::Display) -> Error {
    Error::remote(
        format!("the server's answer is not a {} answer: {what}", protocol.name()),
        false,
    )
}

/// A server that answered without prompt log-probs.
pub(crate) fn no_prompt_logprobs(protocol: Protocol) -> Error {
    Error::remote(
        format!(
            "the server returned no prompt log-probs to the {} protocol ({})",
            protocol.name(),
            protocol.how_to_enable()
        ),
        false,
    )
}

/// A JSON number or null as a log-prob (`NaN` and missing read as `None`).
pub(crate) fn logprob(v: Option<&Value>) -> Option<f64> {
    v.and_then(Value::as_f64).filter(|x| !x.is_nan())
}

/// `v[key]` as an array, or the protocol's shape error naming `key`.
pub(crate) fn array<'a>(protocol: Protocol, v: &'a Value, key: &str) -> Result<&'a Vec<Value>> {
    v.get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| malformed(protocol, format!("no {key} list")))
}
