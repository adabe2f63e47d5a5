//! A thin wrapper over `tokenizers::Tokenizer`: encoding without special tokens, decoding,
//! and output tokens as a person reads them.

use crate::error::{Error, Result};

/// Byte range of `text` a token came from.
pub type Offsets = Vec<(usize, usize)>;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    eos: Vec<u32>,
}

impl Tokenizer {
    /// `eos`: ids that end a greedy generation.
    pub fn new(inner: tokenizers::Tokenizer, eos: Vec<u32>) -> Self {
        Tokenizer { inner, eos }
    }

    /// Loads a `tokenizer.json`.
    pub fn from_file(path: &std::path::Path, eos: Vec<u32>) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::Model(format!("cannot read tokenizer {}: {e}", path.display())))?;
        Ok(Tokenizer::new(inner, eos))
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

    /// Each token decoded on its own and trimmed, as Captum prints `output_tokens`.
    pub fn pretty_tokens(&self, ids: &[u32]) -> Vec<String> {
        ids.iter()
            .map(|&id| match self.inner.decode(&[id], false) {
                Ok(s) => s.trim().to_string(),
                Err(_) => format!("<{id}>"),
            })
            .collect()
    }
}
