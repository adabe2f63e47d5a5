//! Architectures: what each provides ([`Architecture`]), the families they cover
//! ([`family`]), and the Llama-style decoder and GPT-2 themselves.

pub(crate) mod config;
pub(crate) mod decoder;
pub(crate) mod family;
pub(crate) mod gpt2;
pub(crate) mod kv_cache;
pub(crate) mod layout;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::kernels::{bf16, Kernels};
use kv_cache::KvCache;

/// What one architecture provides: its primitives (embed, the layers, the head) and, built on
/// them, the passes the model runs. Inputs are right-padded `[batch, len]` u32 ids with
/// positions starting at 0; the causal mask alone keeps padding (always after the real tokens)
/// out of every real position.
pub trait Architecture: Send + Sync {
    /// The input embedding layer's output, `[batch, len, hidden]` (what Captum's layer methods
    /// attribute to).
    fn embed(&self, ids: &Tensor) -> candle_core::Result<Tensor>;
    /// The layers and the final norm over `embeds` (`[batch, len, hidden]`, from
    /// [`Architecture::embed`]) placed after the positions in `cache` (whose keys and values
    /// they extend): the final hidden states `[batch * len, hidden]`, or with `rows` (u32
    /// indices into the `batch * len` positions) those rows alone, `[n, hidden]`, skipping
    /// work that feeds no selected row. `kernels` picks the ops: [`Kernels::Fused`] to score
    /// and generate, [`Kernels::Differentiable`] where gradients must flow back to `embeds`.
    fn forward(
        &self,
        embeds: &Tensor,
        cache: Option<&mut KvCache>,
        rows: Option<&Tensor>,
        kernels: Kernels,
    ) -> candle_core::Result<Tensor>;
    /// [`Architecture::forward`] of several parts in one pass, for scoring: `embeds` is
    /// `[n, hidden]`, the `b * t` positions of each part one part after another; each part runs
    /// after the positions of its own cache. Returns the hidden states at every part's `rows`,
    /// part after part. The linear layers see all the parts' rows at once; attention stays
    /// within a part. This default runs the parts one after another.
    fn forward_parts(&self, embeds: &Tensor, parts: &mut [Part<'_>]) -> candle_core::Result<Tensor> {
        let d = embeds.dim(1)?;
        let mut start = 0;
        let mut out = Vec::with_capacity(parts.len());
        for p in parts.iter_mut() {
            let x = embeds.narrow(0, start, p.b * p.t)?.reshape((p.b, p.t, d))?;
            let rows = Tensor::new(p.rows.as_slice(), self.device())?;
            out.push(self.forward(&x, p.cache.as_deref_mut(), Some(&rows), Kernels::Fused)?);
            start += p.b * p.t;
        }
        Tensor::cat(&out, 0)
    }
    /// LM head: `[.., hidden]` -> `[.., vocab]` (differentiable).
    fn logits(&self, hidden: &Tensor) -> candle_core::Result<Tensor>;
    /// Where the weights live.
    fn device(&self) -> &Device;
    /// Static facts about the architecture (family, sizes, dtype).
    fn info(&self) -> ArchInfo;

    /// An empty cache for [`Architecture::step`].
    fn new_cache(&self) -> KvCache {
        KvCache::new(self.info().layers)
    }

    /// Final hidden states (after the last norm), `[batch, len, hidden]`.
    fn hidden(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let h = self.forward(&self.embed(ids)?, None, None, Kernels::Fused)?;
        let d = h.dim(1)?;
        h.reshape((b, t, d))
    }

    /// Final hidden states at `rows` only (u32 indices into the `batch * len` positions),
    /// `[n, hidden]`, skipping work that feeds no selected row.
    fn hidden_rows(&self, ids: &Tensor, rows: &Tensor) -> candle_core::Result<Tensor> {
        self.forward(&self.embed(ids)?, None, Some(rows), Kernels::Fused)
    }

    /// Runs `ids` (`[1, len]`) after the positions in `cache`, appending their keys and values;
    /// the final hidden state of the last one, `[1, hidden]`.
    fn step(&self, ids: &Tensor, cache: &mut KvCache) -> candle_core::Result<Tensor> {
        let t = ids.dim(1)?;
        let last = Tensor::new(&[t.saturating_sub(1) as u32], self.device())?;
        self.forward(&self.embed(ids)?, Some(cache), Some(&last), Kernels::Fused)
    }

    /// Final hidden states `[batch, len, hidden]` from the output of [`Architecture::embed`],
    /// built only from ops with a backward pass (none of the fused kernels), so gradients
    /// flow back to `embeds`. Feed it to [`Architecture::logits`].
    fn forward_from_embeddings(&self, embeds: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_from_copies(embeds, 1)
    }

    /// [`Architecture::forward_from_embeddings`] of a batch that is `copies` equal copies of
    /// its first `batch / copies` sequences, one after the other ([`Kernels::Copies`]).
    fn forward_from_copies(&self, embeds: &Tensor, copies: usize) -> candle_core::Result<Tensor> {
        let (b, t, d) = embeds.dims3()?;
        let kernels = match copies {
            0 | 1 => Kernels::Differentiable,
            n => Kernels::Copies(n),
        };
        self.forward(embeds, None, None, kernels)?.reshape((b, t, d))
    }
}

/// One part of a pass of [`Architecture::forward_parts`]: `b` right-padded sequences of `t`
/// positions each, after the positions of `cache` (none: from position 0), and the positions
/// whose final hidden states are wanted (indices into its own `b * t`).
pub struct Part<'a> {
    /// Sequences.
    pub b: usize,
    /// Positions of each sequence in this pass.
    pub t: usize,
    /// The keys and values the part runs after (and extends, unless it is a shared view).
    pub cache: Option<&'a mut KvCache>,
    /// Wanted positions, indices into the part's `b * t`.
    pub rows: Vec<u32>,
}

/// The rows of the embedding `table` for `ids` (`[batch, len]`), `[batch, len, hidden]`; in
/// f32 from a bf16 table on the CPU, which holds bf16 weights but computes in f32.
pub(crate) fn embed(table: &Tensor, ids: &Tensor, hidden: usize) -> candle_core::Result<Tensor> {
    let (b, t) = ids.dims2()?;
    let rows = table.index_select(&ids.flatten_all()?, 0)?;
    let rows = if bf16::applies(table) {
        rows.to_dtype(DType::F32)?
    } else {
        rows
    };
    rows.reshape((b, t, hidden))
}

/// Fails when `past + t` positions exceed a context of `context`.
pub(crate) fn check_context(past: usize, t: usize, context: usize) -> candle_core::Result<()> {
    if past + t > context {
        candle_core::bail!("{} positions exceed the context length of {context}", past + t);
    }
    Ok(())
}

/// `x` and `y` (`[batch * len, ..]`) at `rows` only, or whole without: where a layer's last
/// steps need only the selected rows (every position's keys and values were needed before).
pub(crate) fn keep_rows(
    x: &Tensor,
    y: Tensor,
    rows: Option<&Tensor>,
) -> candle_core::Result<(Tensor, Tensor)> {
    match rows {
        Some(rows) => Ok((x.index_select(rows, 0)?, y.index_select(rows, 0)?)),
        None => Ok((x.clone(), y)),
    }
}

/// `hidden @ head^T` for a `[vocab, hidden]` head and `[.., hidden]` rows (with a bf16 head on
/// the CPU, f32 rows and logits: [`bf16::matmul`]).
pub(crate) fn project(hidden: &Tensor, head: &Tensor) -> candle_core::Result<Tensor> {
    let head = head.t()?;
    if bf16::applies(&head) {
        return bf16::matmul(hidden, &head);
    }
    match hidden.rank() {
        // In a gradient pass, the head's backward pass for `hidden` alone (not the head's).
        2 if hidden.track_op() => Kernels::Differentiable.matmul(hidden, &head),
        2 => hidden.matmul(&head),
        _ => hidden.broadcast_matmul(&head),
    }
}

/// `name` under `vb`'s prefix, as the weight files spell it.
pub(crate) fn full_name(vb: &VarBuilder, name: &str) -> String {
    match vb.prefix() {
        p if p.is_empty() => name.to_string(),
        p => format!("{p}.{name}"),
    }
}

/// Reads tensor `name` under `vb`'s prefix and checks its shape; the error names the tensor.
pub(crate) fn weight(vb: &VarBuilder, shape: &[usize], name: &str) -> Result<Tensor> {
    let full = full_name(vb, name);
    let t = vb.get_unchecked(name).map_err(|e| {
        Error::Model(format!(
            "weights: {}",
            e.to_string().lines().next().unwrap_or_default()
        ))
    })?;
    if t.dims() != shape {
        return Err(Error::Model(format!(
            "weights: tensor {full} has shape {:?}, expected {shape:?}",
            t.dims()
        )));
    }
    Ok(t)
}

/// Static facts about a loaded architecture.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ArchInfo {
    /// The family (`gpt2`, `llama`, `qwen2`, ...).
    pub architecture: String,
    /// Number of weights (a tied LM head counted once).
    pub parameters: usize,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Most positions one sequence (prompt + target) may use.
    pub context_length: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Transformer layers.
    pub layers: usize,
    /// Attention heads per layer.
    pub heads: usize,
    /// Data type the forward pass runs in.
    pub dtype: String,
}
