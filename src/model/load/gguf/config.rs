//! The decoder config from a GGUF file's `<arch>.*` metadata and the tensors present.

use crate::error::Result;
use crate::model::arch::config::{traits, DecoderConfig, Rope, RopeScaling};
use crate::model::arch::family::WindowLayers;
use crate::model::kernels::{Activation, RopeStyle};
use crate::model::Family;

use super::Gguf;

/// The decoder config from `<arch>.*` metadata and the tensors present.
pub fn decoder_config(file: &mut Gguf, family: Family) -> Result<DecoderConfig> {
    // Llama 3's rescaling, precomputed by the converter as one divisor per frequency.
    let rope_freqs = match file.tensor_shape("rope_freqs.weight") {
        Some(shape) => {
            let n = shape.iter().product::<usize>();
            Some(file.f32_values("rope_freqs.weight", &[n])?)
        }
        None => None,
    };
    let file: &Gguf = file;
    let arch = family.entry().gguf.unwrap_or("llama");
    let key = |k: &str| format!("{arch}.{k}");
    let opt_usize = |k: &str| file.get(&key(k)).map(|_| file.usize(&key(k))).transpose();
    let opt_f64 = |k: &str| file.get(&key(k)).map(|_| file.f64(&key(k))).transpose();
    let t = traits(family)?;
    let hidden = file.usize(&key("embedding_length"))?;
    let heads = file.usize(&key("attention.head_count"))?;
    let head_dim = opt_usize("attention.key_length")?.unwrap_or(hidden.checked_div(heads).unwrap_or(0));
    let layers = file.usize(&key("block_count"))?;
    let vocab = match file.tensor_shape("token_embd.weight") {
        Some([v, _]) => *v,
        _ => return Err(file.error("tensor `token_embd.weight` is missing or not 2-D")),
    };
    if let Some(n) = opt_usize("rope.dimension_count")?.filter(|&n| n != head_dim) {
        return Err(file.error(format!(
            "partial rotary embeddings ({n} of {head_dim} dims) are not supported"
        )));
    }
    if file.has_tensor("rope_factors_long.weight") {
        return Err(file.error("RoPE scaling `longrope` is not supported"));
    }
    let scaling = match (file.str(&key("rope.scaling.type")), rope_freqs) {
        (Ok("none") | Err(_), Some(divisors)) => RopeScaling::Divisors(divisors),
        (Ok("none") | Err(_), None) => RopeScaling::None,
        (Ok("linear"), _) => RopeScaling::Linear(file.f64(&key("rope.scaling.factor"))?),
        (Ok(other), _) => return Err(file.error(format!("RoPE scaling `{other}` is not supported"))),
    };
    let window = opt_usize("attention.sliding_window")?.filter(|&w| w > 0);
    let windows = (0..layers)
        .map(|i| match t.windows {
            WindowLayers::All => window,
            WindowLayers::Even if i % 2 == 0 => window,
            _ => None,
        })
        .collect();
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
        ffn: file.usize(&key("feed_forward_length"))?,
        layers,
        heads,
        kv_heads: opt_usize("attention.head_count_kv")?.unwrap_or(heads),
        head_dim,
        context: file.usize(&key("context_length"))?,
        eps: file.f64(&key("attention.layer_norm_rms_epsilon"))?,
        rope: Rope {
            theta: opt_f64("rope.freq_base")?.unwrap_or(10_000.0),
            scaling,
            // llama.cpp permutes Llama's Q and K for interleaved RoPE; the other families use
            // the NeoX (rotate-half) layout as stored.
            style: if family == Family::Llama {
                RopeStyle::Interleaved
            } else {
                RopeStyle::Half
            },
        },
        tied: !file.has_tensor("output.weight"),
        qkv_bias: file.has_tensor("blk.0.attn_q.bias") || file.has_tensor("blk.0.attn_qkv.bias"),
        o_bias: file.has_tensor("blk.0.attn_output.bias"),
        qk_norm: t.qk_norm,
        fused_projections: t.fused_projections,
        activation: Activation::from_name(t.default_activation).unwrap_or(Activation::Silu),
        gemma: t.gemma,
        attn_softcap: opt_f64("attn_logit_softcapping")?.filter(|_| t.gemma),
        final_softcap: opt_f64("final_logit_softcapping")?.filter(|_| t.gemma),
        query_scale: 1.0 / (query_pre_attn as f64).sqrt(),
        windows,
        stored_dtype: None,
    };
    cfg.validate().map_err(|m| file.error(m))?;
    Ok(cfg)
}
