//! A thin wrapper over `tokenizers::Tokenizer`: encoding as transformers does (prompts with the
//! special tokens the post-processor adds, targets without), decoding, output tokens as a person
//! reads them, and the chat template and special-token strings a chat renderer needs.

use tokenizers::processors::sequence::Sequence;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::processors::PostProcessorWrapper;

use crate::error::{Error, Result};

/// Byte range of `text` a token came from.
pub(crate) type Offsets = Vec<(usize, usize)>;

/// What tokenizer_config.json (or GGUF metadata) says beyond the vocabulary.
#[derive(Debug, Clone, Default)]
pub(crate) struct SpecialTokens {
    pub bos: Option<String>,
    pub eos: Option<String>,
    /// Jinja source of the chat template.
    pub chat_template: Option<String>,
}

/// The model's tokenizer, with the ids that end a generation and its chat template.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    eos: Vec<u32>,
    special: SpecialTokens,
}

impl Tokenizer {
    /// `eos`: ids that end a greedy generation.
    pub fn new(inner: tokenizers::Tokenizer, eos: Vec<u32>) -> Self {
        Tokenizer {
            inner,
            eos,
            special: SpecialTokens::default(),
        }
    }

    pub(crate) fn with_special(mut self, special: SpecialTokens) -> Self {
        self.special = special;
        self
    }

    /// The model's chat template (tokenizer_config.json `chat_template`, chat_template.jinja, or
    /// GGUF `tokenizer.chat_template`).
    pub fn chat_template(&self) -> Option<&str> {
        self.special.chat_template.as_deref()
    }

    /// The beginning-of-sequence token as text (e.g. `<s>`), for chat templates.
    pub fn bos_token(&self) -> Option<&str> {
        self.special.bos.as_deref()
    }

    /// The end-of-sequence token as text (e.g. `</s>`), for chat templates.
    pub fn eos_token(&self) -> Option<&str> {
        self.special.eos.as_deref()
    }

    /// Loads a `tokenizer.json`.
    pub fn from_file(path: &std::path::Path, eos: Vec<u32>) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::Model(format!("cannot read tokenizer {}: {e}", path.display())))?;
        Ok(Tokenizer::new(inner, eos))
    }

    /// GPT-2's byte-level BPE from the older `vocab.json` + `merges.txt` pair (repos without
    /// a `tokenizer.json`), configured as Hugging Face's `GPT2TokenizerFast` is.
    pub(crate) fn byte_level_bpe(
        vocab: &std::path::Path,
        merges: &std::path::Path,
    ) -> Result<tokenizers::Tokenizer> {
        use tokenizers::models::bpe::BPE;
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        let path = |p: &std::path::Path| {
            p.to_str()
                .map(str::to_string)
                .ok_or_else(|| Error::Model(format!("{} is not a UTF-8 path", p.display())))
        };
        let bpe = BPE::from_file(&path(vocab)?, &path(merges)?)
            .build()
            .map_err(|e| {
                Error::Model(format!(
                    "cannot build a BPE tokenizer from {} and {}: {e}",
                    vocab.display(),
                    merges.display()
                ))
            })?;
        let mut tok = tokenizers::Tokenizer::new(bpe);
        tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tok.with_decoder(Some(ByteLevel::new(true, true, true)));
        tok.with_post_processor(Some(ByteLevel::new(true, false, true)));
        if tok.token_to_id("<|endoftext|>").is_some() {
            tok.add_special_tokens(&[tokenizers::AddedToken::from("<|endoftext|>", true)]);
        }
        Ok(tok)
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Ids that end a greedy generation.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    /// Tokens in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`, no special tokens added (how Captum encodes a target).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encode_with_offsets(text)?.0)
    }

    /// Token ids and the byte range of `text` each one came from, no special tokens added.
    pub(crate) fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Offsets)> {
        self.encode_inner(text, false)
    }

    /// Token ids of a prompt with the special tokens the tokenizer adds (a BOS where its
    /// post-processor puts one), as `tokenizer(prompt)` in transformers and Captum.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encode_prompt_with_offsets(text)?.0)
    }

    /// [`Tokenizer::encode_prompt`] with offsets; added tokens have the empty range `(0, 0)`.
    pub(crate) fn encode_prompt_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Offsets)> {
        self.encode_inner(text, true)
    }

    fn encode_inner(&self, text: &str, special: bool) -> Result<(Vec<u32>, Offsets)> {
        let enc = self
            .inner
            .encode(text, special)
            .map_err(|e| Error::Internal(format!("tokenizer: {e}")))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// The text of `ids`, special tokens kept.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::Internal(format!("tokenizer: {e}")))
    }

    /// Id of a token given as its vocabulary string (e.g. `Ġthe`) or as the text it decodes to.
    pub(crate) fn token_id(&self, token: &str) -> Option<u32> {
        if let Some(id) = self.inner.token_to_id(token) {
            return Some(id);
        }
        match self.encode(token).ok()?.as_slice() {
            [id] => Some(*id),
            _ => None,
        }
    }

    /// Output tokens as Captum 0.9 prints them (`_convert_ids_to_pretty_tokens`): the ids are
    /// decoded together, re-encoded with offsets, and each token shows its span of the text,
    /// newlines escaped and trimmed; a token sharing its span with the previous one (bytes of
    /// one character split over several tokens) is marked ` [OVERLAP]`. When the re-encoding
    /// does not reproduce the ids, falls back to decoding each id on its own.
    pub fn pretty_tokens(&self, ids: &[u32]) -> Vec<String> {
        self.pretty_by_offsets(ids)
            .unwrap_or_else(|| self.pretty_fallback(ids))
    }

    fn pretty_by_offsets(&self, ids: &[u32]) -> Option<Vec<String>> {
        let text = self.inner.decode(ids, false).ok()?;
        let enc = self.inner.encode(text.as_str(), false).ok()?;
        let (again, offsets) = (enc.get_ids(), enc.get_offsets());
        let mut out = Vec::with_capacity(ids.len());
        let mut end_prev = None;
        for (i, (&id, &(start, end))) in again.iter().zip(offsets).enumerate() {
            // Empty spans reach to the start of the next token (or the end of the text).
            let end = if start == end {
                offsets.get(i + 1).map_or(text.len(), |o| o.0)
            } else {
                end
            };
            if ids.get(out.len()) != Some(&id) {
                continue;
            }
            let mut token = clean_token(text.get(start..end)?);
            if end_prev.is_some_and(|e| e > start) {
                token.push_str(" [OVERLAP]");
            }
            out.push(token);
            end_prev = Some(end);
        }
        (out.len() == ids.len()).then_some(out)
    }

    fn decode_one(&self, id: u32) -> String {
        self.inner
            .decode(&[id], false)
            .unwrap_or_else(|_| format!("<{id}>"))
    }

    /// Captum's fallback: each id decoded alone; two ids that are halves of one character
    /// become the character and the character marked ` [OVERLAP]`.
    fn pretty_fallback(&self, ids: &[u32]) -> Vec<String> {
        let split = |id: u32, decoded: &str| {
            decoded.trim() == "\u{fffd}"
                && self
                    .inner
                    .encode(decoded, false)
                    .ok()
                    .map(|e| e.get_ids().to_vec())
                    != Some(vec![id])
        };
        let mut out = Vec::with_capacity(ids.len());
        let mut i = 0;
        while i < ids.len() {
            let decoded = self.decode_one(ids[i]);
            let pretty = clean_token(&decoded);
            if split(ids[i], &decoded) && i + 1 < ids.len() {
                let next = self.decode_one(ids[i + 1]);
                if split(ids[i + 1], &next) {
                    out.push(pretty.clone());
                    out.push(pretty + " [OVERLAP]");
                } else {
                    out.push(pretty);
                    out.push(clean_token(&next));
                }
                i += 2;
            } else {
                out.push(pretty);
                i += 1;
            }
        }
        out
    }
}

/// Makes `inner` add BOS and/or EOS around every encoding, as transformers' Llama and Gemma
/// tokenizers rebuild their post-processor from `add_bos_token` / `add_eos_token`. A byte-level
/// post-processor already there is kept in front (it fixes offsets).
pub(crate) fn set_bos_eos(
    inner: &mut tokenizers::Tokenizer,
    bos: Option<&str>,
    eos: Option<&str>,
) -> Result<()> {
    let id = |t: &str| {
        inner
            .token_to_id(t)
            .ok_or_else(|| Error::Model(format!("the special token {t:?} is not in the vocabulary")))
    };
    let mut special = Vec::new();
    let (mut single, mut pair) = (String::new(), String::new());
    if let Some(b) = bos {
        special.push((b.to_string(), id(b)?));
        single += &format!("{b}:0 ");
        pair += &format!("{b}:0 ");
    }
    single += "$A:0";
    pair += "$A:0";
    if let Some(e) = eos {
        special.push((e.to_string(), id(e)?));
        single += &format!(" {e}:0");
        pair += &format!(" {e}:0");
    }
    if let Some(b) = bos {
        pair += &format!(" {b}:1");
    }
    pair += " $B:1";
    if let Some(e) = eos {
        pair += &format!(" {e}:1");
    }
    let template = TemplateProcessing::builder()
        .try_single(single)
        .and_then(|b| b.try_pair(pair))
        .map_err(|e| Error::Model(format!("tokenizer template: {e}")))?
        .special_tokens(special)
        .build()
        .map_err(|e| Error::Model(format!("tokenizer template: {e}")))?;
    let processor: PostProcessorWrapper = match inner.get_post_processor() {
        Some(PostProcessorWrapper::ByteLevel(b)) => Sequence::new(vec![(*b).into(), template.into()]).into(),
        _ => template.into(),
    };
    inner.with_post_processor(Some(processor));
    Ok(())
}

/// Captum's `_clean_up_pretty_token`: newlines shown as `\n`, surrounding whitespace trimmed.
fn clean_token(token: &str) -> String {
    token.replace('\n', "\\n").trim().to_string()
}
