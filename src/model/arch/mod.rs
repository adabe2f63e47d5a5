//! Architectures: what each provides ([`Architecture`]), the families they cover
//! ([`family`]), and the Llama-style decoder and GPT-2 themselves.

pub mod config;
pub mod decoder;
pub mod family;
pub mod gpt2;
pub mod kv_cache;

use candle_core::{Device, Tensor};
use serde::Serialize;

use kv_cache::KvCache;

/// What one architecture provides. Inputs are right-padded `[batch, len]` u32 ids with
/// positions starting at 0; the causal mask alone keeps padding (always after the real tokens)
/// out of every real position.
pub trait Architecture: Send + Sync {
    /// Final hidden states (after the last norm), `[batch, len, hidden]`.
    fn hidden(&self, ids: &Tensor) -> candle_core::Result<Tensor>;
    /// Final hidden states at `rows` only (u32 indices into the `batch * len` positions),
    /// `[n, hidden]`, skipping work that feeds no selected row.
    fn hidden_rows(&self, ids: &Tensor, rows: &Tensor) -> candle_core::Result<Tensor>;
    /// LM head: `[.., hidden]` -> `[.., vocab]` (differentiable).
    fn logits(&self, hidden: &Tensor) -> candle_core::Result<Tensor>;
    /// Runs `ids` (`[1, len]`) after the positions in `cache`, appending their keys and values;
    /// the final hidden state of the last one, `[1, hidden]`.
    fn step(&self, ids: &Tensor, cache: &mut KvCache) -> candle_core::Result<Tensor>;
    /// An empty cache for [`Architecture::step`].
    fn new_cache(&self) -> KvCache;
    /// The input embedding layer's output, `[batch, len, hidden]` (what Captum's layer methods
    /// attribute to).
    fn embed(&self, ids: &Tensor) -> candle_core::Result<Tensor>;
    /// Final hidden states `[batch, len, hidden]` from the output of [`Architecture::embed`],
    /// built only from candle ops with a backward pass (none of the fused kernels), so
    /// gradients flow back to `embeds`. Feed it to [`Architecture::logits`].
    fn forward_from_embeddings(&self, embeds: &Tensor) -> candle_core::Result<Tensor>;
    /// Where the weights live.
    fn device(&self) -> &Device;
    fn info(&self) -> ArchInfo;
}

/// Static facts about a loaded architecture.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ArchInfo {
    /// The family (`gpt2`, `llama`, `qwen2`, ...).
    pub architecture: String,
    pub parameters: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub hidden_size: usize,
    pub layers: usize,
    pub heads: usize,
    /// Data type the forward pass runs in.
    pub dtype: String,
}
