//! A thin wrapper over `tokenizers::Tokenizer`: encoding without special tokens, decoding,
//! and output tokens as a person reads them.

use crate::error::{Error, Result};

/// Byte range of `text` a token came from.
pub type Offsets = Vec<(usize, usize)>;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    eos: Vec<u32>,
    chat: ChatConfig,
}

/// The model's chat template and the special tokens a template may print.
#[derive(Debug, Clone, Default)]
pub struct ChatConfig {
    pub template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

impl Tokenizer {
    /// `eos`: ids that end a greedy generation.
    pub fn new(inner: tokenizers::Tokenizer, eos: Vec<u32>) -> Self {
        Tokenizer {
            inner,
            eos,
            chat: ChatConfig::default(),
        }
    }

    pub fn with_chat(mut self, chat: ChatConfig) -> Self {
        self.chat = chat;
        self
    }

    /// The Jinja chat template, if the model has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat.template.as_deref()
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.chat.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.chat.eos_token.as_deref()
    }

    /// Loads a `tokenizer.json`.
    pub fn from_file(path: &std::path::Path, eos: Vec<u32>) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::Model(format!("cannot read tokenizer {}: {e}", path.display())))?;
        Ok(Tokenizer::new(inner, eos))
    }

    /// GPT-2's byte-level BPE from the older `vocab.json` + `merges.txt` pair (repos without
    /// a `tokenizer.json`), configured as Hugging Face's `GPT2TokenizerFast` is.
    pub fn byte_level_bpe(
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

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`, no special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encode_with_offsets(text)?.0)
    }

    /// Token ids and the byte range of `text` each one came from.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Offsets)> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Internal(format!("tokenizer: {e}")))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::Internal(format!("tokenizer: {e}")))
    }

    /// Id of a token given as its vocabulary string (e.g. `Ġthe`) or as the text it decodes to.
    pub fn token_id(&self, token: &str) -> Option<u32> {
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

/// Captum's `_clean_up_pretty_token`: newlines shown as `\n`, surrounding whitespace trimmed.
fn clean_token(token: &str) -> String {
    token.replace('\n', "\\n").trim().to_string()
}
