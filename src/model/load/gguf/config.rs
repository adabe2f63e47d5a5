//! The decoder config from a GGUF file's `<arch>.*` metadata and the tensors present.

use crate::error::Result;
use crate::model::arch::config::{traits, DecoderConfig, Rope, RopeScaling};
use crate::model::arch::family::WindowLayers;
use crate::model::kernels::{Activation, RopeStyle};
use crate::model::Family;

use super::Gguf;

/// The decoder config from `<arch>.*` metadata and the tensors present.
pub(crate) fn decoder_config(file: &mut Gguf, family: Family) -> Result<DecoderConfig> {
    let rope_freqs = rope_freqs(file)?;
    let meta = Meta {
        file,
        arch: family.entry().gguf.unwrap_or("llama"),
    };
    let file = meta.file;
    let t = traits(family)?;
    let hidden = meta.usize("embedding_length")?;
    let heads = meta.usize("attention.head_count")?;
    let head_dim = meta
        .opt_usize("attention.key_length")?
        .unwrap_or(hidden.checked_div(heads).unwrap_or(0));
    let layers = meta.usize("block_count")?;
    let vocab = match file.tensor_shape("token_embd.weight") {
        Some([v, _]) => *v,
        _ => return Err(file.error("tensor `token_embd.weight` is missing or not 2-D")),
    };
    // llama.cpp scales Gemma 2 27B's queries by 1/sqrt(hidden / heads) (its
    // query_pre_attn_scalar), every other size by 1/sqrt(head_dim); GGUF has no key for it.
    let query_pre_attn = match (t.gemma, layers) {
        (true, 46) => hidden / heads.max(1),
        _ => head_dim,
    };
    let cfg = DecoderConfig {
        family,
        vocab,
        hidden,
        ffn: meta.usize("feed_forward_length")?,
        layers,
        heads,
        kv_heads: meta.opt_usize("attention.head_count_kv")?.unwrap_or(heads),
        head_dim,
        context: meta.usize("context_length")?,
        eps: meta.f64("attention.layer_norm_rms_epsilon")?,
        rope: rope(&meta, family, head_dim, rope_freqs)?,
        tied: !file.has_tensor("output.weight"),
        qkv_bias: file.has_tensor("blk.0.attn_q.bias") || file.has_tensor("blk.0.attn_qkv.bias"),
        o_bias: file.has_tensor("blk.0.attn_output.bias"),
        qk_norm: t.qk_norm,
        fused_projections: t.fused_projections,
        activation: Activation::from_name(t.default_activation).unwrap_or(Activation::Silu),
        gemma: t.gemma,
        attn_softcap: meta.opt_f64("attn_logit_softcapping")?.filter(|_| t.gemma),
        final_softcap: meta.opt_f64("final_logit_softcapping")?.filter(|_| t.gemma),
        query_scale: 1.0 / (query_pre_attn as f64).sqrt(),
        windows: windows(&meta, t.windows, layers)?,
        stored_dtype: None,
    };
    cfg.validate().map_err(|m| file.error(m))?;
    Ok(cfg)
}

/// The `<arch>.*` keys of one file.
struct Meta<'a> {
    file: &'a Gguf,
    arch: &'static str,
}

impl Meta<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }

    fn usize(&self, k: &str) -> Result<usize> {
        self.file.usize(&self.key(k))
    }

    fn f64(&self, k: &str) -> Result<f64> {
        self.file.f64(&self.key(k))
    }

    fn opt_usize(&self, k: &str) -> Result<Option<usize>> {
        self.file.get(&self.key(k)).map(|_| self.usize(k)).transpose()
    }

    fn opt_f64(&self, k: &str) -> Result<Option<f64>> {
        self.file.get(&self.key(k)).map(|_| self.f64(k)).transpose()
    }
}

/// Llama 3's rescaling, precomputed by the converter as one divisor per frequency.
fn rope_freqs(file: &mut Gguf) -> Result<Option<Vec<f32>>> {
    match file.tensor_shape("rope_freqs.weight") {
        Some(shape) => {
            let n = shape.iter().product::<usize>();
            Ok(Some(file.f32_values("rope_freqs.weight", &[n])?))
        }
        None => Ok(None),
    }
}

/// RoPE's base, scaling and layout; partial rotary embeddings and `longrope` are refused.
fn rope(meta: &Meta, family: Family, head_dim: usize, rope_freqs: Option<Vec<f32>>) -> Result<Rope> {
    let file = meta.file;
    if let Some(n) = meta.opt_usize("rope.dimension_count")?.filter(|&n| n != head_dim) {
        return Err(file.error(format!(
            "partial rotary embeddings ({n} of {head_dim} dims) are not supported"
        )));
    }
    if file.has_tensor("rope_factors_long.weight") {
        return Err(file.error("RoPE scaling `longrope` is not supported"));
    }
    let scaling = match (file.str(&meta.key("rope.scaling.type")), rope_freqs) {
        (Ok("none") | Err(_), Some(divisors)) => RopeScaling::Divisors(divisors),
        (Ok("none") | Err(_), None) => RopeScaling::None,
        (Ok("linear"), _) => RopeScaling::Linear(meta.f64("rope.scaling.factor")?),
        (Ok(other), _) => return Err(file.error(format!("RoPE scaling `{other}` is not supported"))),
    };
    Ok(Rope {
        theta: meta.opt_f64("rope.freq_base")?.unwrap_or(10_000.0),
        scaling,
        // llama.cpp permutes Llama's Q and K for interleaved RoPE; the other families use the
        // NeoX (rotate-half) layout as stored.
        style: if family == Family::Llama {
            RopeStyle::Interleaved
        } else {
            RopeStyle::Half
        },
    })
}

/// Each layer's sliding window, as the family places them.
fn windows(meta: &Meta, layers_with: WindowLayers, layers: usize) -> Result<Vec<Option<usize>>> {
    let window = meta.opt_usize("attention.sliding_window")?.filter(|&w| w > 0);
    Ok((0..layers)
        .map(|i| match layers_with {
            WindowLayers::All => window,
            WindowLayers::Even if i % 2 == 0 => window,
            _ => None,
        })
        .collect())
}
