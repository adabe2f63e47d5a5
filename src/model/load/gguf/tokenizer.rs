//! The tokenizer from a GGUF file's `tokenizer.ggml.*` metadata: byte-level BPE (`gpt2`) or
//! SentencePiece (`llama`), as transformers builds them.

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::Result;
use crate::model::tokenizer::{set_bos_eos, SpecialTokens};
use crate::model::Tokenizer;

use super::Gguf;

/// The tokenizer of a GGUF file, with its special tokens, BOS as `add_bos_token` says, and the
/// chat template.
pub fn tokenizer(file: &Gguf) -> Result<Tokenizer> {
    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    let types = token_types(file, tokens.len());
    let model = file.str("tokenizer.ggml.model")?;
    let (mut inner, bos_default) = match model {
        "gpt2" => (byte_level_bpe(file, &tokens)?, false),
        "llama" => (sentencepiece(file, &tokens)?, true),
        other => {
            return Err(file.error(format!(
            "unsupported tokenizer model `{other}` (supported: gpt2 (byte-level BPE), llama (SentencePiece))"
        )))
        }
    };
    // Control tokens (type 3) are special; user-defined ones (type 4) are matched as written.
    inner.add_special_tokens(&added(&tokens, &types, 3, true));
    inner.add_tokens(&added(&tokens, &types, 4, false));

    let text = |id: Option<usize>| id.and_then(|i| tokens.get(i)).map(|t| t.to_string());
    let (bos_id, eos_id) = (
        opt_id(file, "tokenizer.ggml.bos_token_id")?,
        opt_id(file, "tokenizer.ggml.eos_token_id")?,
    );
    let bos = text(bos_id);
    let add_bos = flag(file, "tokenizer.ggml.add_bos_token", bos_default)
        .then_some(bos.as_deref())
        .flatten();
    let add_eos = flag(file, "tokenizer.ggml.add_eos_token", false)
        .then(|| text(eos_id))
        .flatten();
    if add_bos.is_some() || add_eos.is_some() {
        set_bos_eos(&mut inner, add_bos, add_eos.as_deref())?;
    }
    let chat_template = match file.get("tokenizer.chat_template") {
        Some(Value::String(t)) => Some(t.clone()),
        _ => None,
    };
    Ok(
        Tokenizer::new(inner, end_ids(file, &tokens)?).with_special(SpecialTokens {
            bos,
            eos: text(eos_id),
            chat_template,
        }),
    )
}

/// `tokenizer.ggml.token_type`, or every token normal (1) when the file has none.
fn token_types(file: &Gguf, n: usize) -> Vec<usize> {
    match file.get("tokenizer.ggml.token_type") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                Value::I32(x) => *x as usize,
                Value::U32(x) => *x as usize,
                _ => 1,
            })
            .collect(),
        _ => vec![1; n],
    }
}

fn opt_id(file: &Gguf, key: &str) -> Result<Option<usize>> {
    file.get(key).map(|_| file.usize(key)).transpose()
}

fn flag(file: &Gguf, key: &str, default: bool) -> bool {
    match file.get(key) {
        Some(Value::Bool(b)) => *b,
        _ => default,
    }
}

/// The ids that end a generation: EOS, EOT, and ChatML's `<|im_end|>` where the vocabulary
/// has it.
fn end_ids(file: &Gguf, tokens: &[&str]) -> Result<Vec<u32>> {
    let mut eos = Vec::new();
    for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
        eos.extend(opt_id(file, key)?.map(|i| i as u32));
    }
    if let Some(i) = tokens.iter().position(|t| *t == "<|im_end|>") {
        eos.push(i as u32);
    }
    eos.sort_unstable();
    eos.dedup();
    if let Some(&i) = eos.iter().find(|&&i| i as usize >= tokens.len()) {
        return Err(file.error(format!(
            "end-of-sequence id {i} is outside the vocabulary of {}",
            tokens.len()
        )));
    }
    Ok(eos)
}

fn strings<'a>(file: &'a Gguf, key: &str) -> Result<Vec<&'a str>> {
    file.array(key)?
        .iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.as_str()),
            _ => Err(file.error(format!("`{key}` holds a non-string"))),
        })
        .collect()
}

fn vocab(tokens: &[&str]) -> Vocab {
    tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect()
}

/// Byte-level BPE (the `gpt2` tokenizer model) with the pre-tokenizer `tokenizer.ggml.pre` names.
fn byte_level_bpe(file: &Gguf, tokens: &[&str]) -> Result<tokenizers::Tokenizer> {
    let merges = strings(file, "tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| file.error(format!("bad merge `{m}` in tokenizer.ggml.merges")))
        })
        .collect::<Result<Vec<_>>>()?;
    let pre = file.str("tokenizer.ggml.pre").unwrap_or("default");
    // llama.cpp takes a word that is a token whole before merging, for Llama 3.
    let ignore_merges = matches!(pre, "llama-bpe" | "llama3");
    let bpe = BPE::builder()
        .vocab_and_merges(vocab(tokens), merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| file.error(format!("cannot build the BPE tokenizer: {e}")))?;

    let byte_level = ByteLevel::new(false, true, true);
    let pre_tokenizer: PreTokenizerWrapper = match pre {
        "default" | "gpt2" | "gpt-2" => byte_level.into(),
        // SmolLM2 splits numbers into single digits.
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
        "llama-bpe" | "llama3" => regex_then_bytes(file, LLAMA3_PATTERN)?,
        "qwen2" => regex_then_bytes(file, QWEN2_PATTERN)?,
        other => {
            return Err(file.error(format!(
                "unsupported pre-tokenizer `{other}` (supported: default, gpt2, smollm, llama-bpe, qwen2)"
            )))
        }
    };
    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner
        .with_pre_tokenizer(Some(pre_tokenizer))
        .with_post_processor(Some(ByteLevel::new(false, false, true)))
        .with_decoder(Some(ByteLevel::default()));
    if pre == "qwen2" {
        // As transformers' Qwen2 tokenizer.
        inner.with_normalizer(Some(tokenizers::normalizers::NFC));
    }
    Ok(inner)
}

fn regex_then_bytes(file: &Gguf, pattern: &str) -> Result<PreTokenizerWrapper> {
    let split = Split::new(
        SplitPattern::Regex(pattern.into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| file.error(format!("tokenizer pattern: {e}")))?;
    Ok(Sequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into())
}

/// Llama 3's pre-tokenizer split.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's: as Llama 3's, with single digits.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// SentencePiece BPE (the `llama` tokenizer model) as transformers builds it from a GGUF:
/// byte-fallback BPE whose merges, when the file has none, come from the token scores (every
/// split of a token into two tokens, best-scored token first); spaces become `▁`, with one in
/// front of the text unless `tokenizer.ggml.add_space_prefix` is false. (llama.cpp also puts one
/// after every special token and in front of text that starts with a space; transformers does
/// not, and its tokenization is what Captum sees.)
fn sentencepiece(file: &Gguf, tokens: &[&str]) -> Result<tokenizers::Tokenizer> {
    let vocab = vocab(tokens);
    let merges: Vec<(String, String)> = match file.get("tokenizer.ggml.merges") {
        Some(_) => strings(file, "tokenizer.ggml.merges")?
            .into_iter()
            .filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
            .collect(),
        None => {
            let scores: Vec<f32> = file
                .array("tokenizer.ggml.scores")?
                .iter()
                .map(|v| match v {
                    Value::F32(x) => Ok(*x),
                    Value::F64(x) => Ok(*x as f32),
                    _ => Err(file.error("`tokenizer.ggml.scores` holds a non-number")),
                })
                .collect::<Result<_>>()?;
            if scores.len() != tokens.len() {
                return Err(file.error(format!("{} scores for {} tokens", scores.len(), tokens.len())));
            }
            merges_from_scores(tokens, &scores, &vocab)
        }
    };
    let unk = file
        .get("tokenizer.ggml.unknown_token_id")
        .map(|_| file.usize("tokenizer.ggml.unknown_token_id"))
        .transpose()?
        .and_then(|i| tokens.get(i));
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .fuse_unk(true)
        .byte_fallback(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk.to_string());
    }
    let bpe = builder
        .build()
        .map_err(|e| file.error(format!("cannot build the SentencePiece tokenizer: {e}")))?;
    let prefix = match file.get("tokenizer.ggml.add_space_prefix") {
        Some(Value::Bool(b)) => *b,
        _ => true,
    };
    let scheme = if prefix {
        PrependScheme::First
    } else {
        PrependScheme::Never
    };
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new("▁", " ")
            .map_err(|e| file.error(format!("tokenizer decoder: {e}")))?
            .into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner
        .with_pre_tokenizer(Some(Metaspace::new('▁', scheme, false)))
        .with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(inner)
}

/// transformers' `GGUFTokenizerSkeleton` merges: for every token, each split into two tokens
/// (ordered by the scores of the halves, best first), all sorted by the token's score, best
/// first (a stable sort, so ties keep vocabulary order).
fn merges_from_scores(tokens: &[&str], scores: &[f32], vocab: &Vocab) -> Vec<(String, String)> {
    let score = |t: &str| vocab.get(t).map(|&i| scores[i as usize]);
    let mut merges: Vec<(String, String, f32)> = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let mut local: Vec<(String, String, f32)> = token
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (l, r) = token.split_at(at);
                (score(l).is_some() && score(r).is_some()).then(|| (l.to_string(), r.to_string(), scores[i]))
            })
            .collect();
        local.sort_by(|a, b| {
            let key = |m: &(String, String, f32)| (score(&m.0), score(&m.1));
            key(b).partial_cmp(&key(a)).unwrap_or(std::cmp::Ordering::Equal)
        });
        merges.extend(local);
    }
    merges.sort_by(|a, b| b.2.partial_cmp(&a.2).unwrap_or(std::cmp::Ordering::Equal));
    merges.into_iter().map(|(l, r, _)| (l, r)).collect()
}

fn added(tokens: &[&str], types: &[usize], kind: usize, special: bool) -> Vec<AddedToken> {
    tokens
        .iter()
        .zip(types)
        .filter(|(_, &t)| t == kind)
        .map(|(s, _)| AddedToken::from(s.to_string(), special).normalized(false))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As transformers' `GGUFTokenizerSkeleton`: splits of each token into two tokens, the
    /// splits of better-scored tokens first.
    #[test]
    fn merges_come_from_scores() {
        let tokens = ["a", "b", "c", "ab", "abc", "bc"];
        let scores = [0.0, 0.0, 0.0, -1.0, -3.0, -2.0];
        let merges = merges_from_scores(&tokens, &scores, &vocab(&tokens));
        let pairs: Vec<(&str, &str)> = merges.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(pairs, [("a", "b"), ("b", "c"), ("a", "bc"), ("ab", "c")]);
    }
}
