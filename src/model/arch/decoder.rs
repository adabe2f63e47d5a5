//! The one Llama-style decoder, with per-family options (see `family.rs`): Llama (incl. Llama 3
//! RoPE scaling, tied or untied head), Mistral, Qwen2 (Q/K/V bias), Qwen3 (per-head Q/K
//! RMSNorm), Phi-3 (fused projections) and Gemma 2 (scaled embeddings, (1 + w) norms, post-norms,
//! soft-capping, `query_pre_attn_scalar`, sliding windows on alternate layers). Weights come
//! through a `VarBuilder` under Hugging Face's names, from safetensors or (renamed) from GGUF.
//!
//! Layout for speed on the scoring path (right-padded batches, head only at target rows):
//! - Q, K and V are one matmul, gate and up another; weights are kept `[in, out]`.
//! - The attention scale is folded into the query weights (or the query norm), Gemma's (1 + w)
//!   into the norm weights, so the forward pass never rescales.
//! - GQA runs without copying K/V: the query heads that share a KV head are stacked along the
//!   sequence axis of one batched matmul.
//! - The last layer computes its output projection and MLP only at the requested rows.
//!
//! Adapted from candle-transformers' `llama`, `qwen3`, `phi3` and `gemma2` models (the Llama 3
//! frequency rescaling, the Gemma 2 block order and soft-capping); differs where transformers
//! does: `query_pre_attn_scalar`, and sliding windows only on the layers that have them.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde_json::Value;

use crate::error::Result;
use crate::model::arch::config::DecoderConfig;
use crate::model::arch::family::Weights;
use crate::model::arch::kv_cache::{KvCache, Masks};
use crate::model::arch::layout::{load_stacked_transposed, scale_rows};
use crate::model::arch::{check_context, keep_rows, project, weight, ArchInfo, Architecture, Part};
use crate::model::kernels::{Causal, Kernels};
use crate::model::load::Mapped;
use crate::model::{device, Family};

struct Layer {
    attn_norm: Tensor,
    /// `[hidden, (heads + 2 kv_heads) head_dim]`; the query columns carry the attention scale
    /// unless a query norm does.
    qkv: Tensor,
    qkv_bias: Option<Tensor>,
    /// `[head_dim]` each (Qwen3); the query norm carries the attention scale.
    qk_norm: Option<(Tensor, Tensor)>,
    /// `[heads head_dim, hidden]`.
    out: Tensor,
    out_bias: Option<Tensor>,
    /// Gemma 2's norm of the attention output.
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    /// `[hidden, 2 ffn]`: gate then up.
    gate_up: Tensor,
    /// `[ffn, hidden]`.
    down: Tensor,
    /// Gemma 2's norm of the MLP output.
    post_ffn_norm: Option<Tensor>,
    window: Option<usize>,
}

pub(crate) struct Decoder {
    cfg: DecoderConfig,
    /// `[vocab, hidden]`.
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    /// `[vocab, hidden]`; the embedding itself when tied.
    head: Tensor,
    inv_freq: Vec<f32>,
    masks: Masks,
    device: Device,
    /// The weights' data type.
    dtype: DType,
    /// The forward pass's: f32 for bf16 weights on the CPU ([`device::compute_dtype`]).
    compute: DType,
    parameters: usize,
}

/// A decoder of `family` from its config.json and its weights (the registry's constructor).
pub(crate) fn from_hf(
    family: Family,
    json: &Value,
    origin: &str,
    weights: Weights,
) -> Result<Box<dyn Architecture>> {
    let cfg = DecoderConfig::from_hf(family, json, origin)?;
    let weights = weights()?;
    Ok(Box::new(Decoder::load(cfg, weights.vb, weights.mapped.as_ref())?))
}

impl Decoder {
    /// Loads the weights under Hugging Face's names (`model.layers.0.self_attn.q_proj.weight`);
    /// the `VarBuilder` fixes device and dtype. With `mapped` (the safetensors behind it), the
    /// layers' matrices come from there, converted and transposed in one pass.
    /// bf16 on the CPU keeps the matrices (and the embedding) in bf16, the rest in f32.
    pub(crate) fn load(cfg: DecoderConfig, vb: VarBuilder, mapped: Option<&Mapped>) -> Result<Self> {
        let (v, d) = (cfg.vocab, cfg.hidden);
        let (dtype, compute) = (vb.dtype(), device::compute_dtype(vb.device(), vb.dtype()));
        let vb = vb.set_dtype(compute);
        let m = vb.pp("model");
        let embed = weight(&m.pp("embed_tokens").set_dtype(dtype), &[v, d], "weight")?;
        let norm = Self::norm(&cfg, &m.pp("norm"), d)?;
        let head = if cfg.tied {
            embed.clone()
        } else {
            weight(&vb.pp("lm_head").set_dtype(dtype), &[v, d], "weight")?
        };
        let source = (mapped, dtype);
        let layers = (0..cfg.layers)
            .map(|i| Self::layer(&cfg, &m.pp("layers").pp(i), i, source))
            .collect::<Result<Vec<_>>>()?;
        let mut parameters = embed.elem_count() + norm.elem_count();
        if !cfg.tied {
            parameters += head.elem_count();
        }
        for l in &layers {
            let optional = [&l.qkv_bias, &l.out_bias, &l.post_attn_norm, &l.post_ffn_norm];
            parameters += [&l.attn_norm, &l.qkv, &l.out, &l.ffn_norm, &l.gate_up, &l.down]
                .iter()
                .map(|t| t.elem_count())
                .sum::<usize>()
                + optional
                    .iter()
                    .filter_map(|t| t.as_ref())
                    .map(Tensor::elem_count)
                    .sum::<usize>()
                + l.qk_norm
                    .as_ref()
                    .map_or(0, |(q, k)| q.elem_count() + k.elem_count());
        }
        Ok(Decoder {
            inv_freq: cfg.rope.inverse_frequencies(cfg.head_dim),
            masks: Masks::new(vb.device()),
            device: vb.device().clone(),
            dtype,
            compute,
            cfg,
            embed,
            layers,
            norm,
            head,
            parameters,
        })
    }

    /// An RMSNorm weight, with Gemma's (1 + w) applied once here.
    fn norm(cfg: &DecoderConfig, vb: &VarBuilder, n: usize) -> Result<Tensor> {
        let w = weight(vb, &[n], "weight")?;
        Ok(if cfg.gemma { (w + 1.0)? } else { w })
    }

    /// Layer `i`; its matrices from `mapped` (when given) in `dtype`.
    fn layer(
        cfg: &DecoderConfig,
        vb: &VarBuilder,
        i: usize,
        (mapped, dtype): (Option<&Mapped>, DType),
    ) -> Result<Layer> {
        let (d, hd) = (cfg.hidden, cfg.head_dim);
        let (q_out, kv_out) = (cfg.heads * hd, cfg.kv_heads * hd);
        let a = vb.pp("self_attn");
        // Where Q, K and V are (`[out, in]` each) and their rows: read, stacked and transposed
        // at the end, once the scale is known.
        let (qkv, mut qkv_bias) = if cfg.fused_projections {
            let b = cfg
                .qkv_bias
                .then(|| weight(&a.pp("qkv_proj"), &[q_out + 2 * kv_out], "bias"))
                .transpose()?;
            (vec![(a.pp("qkv_proj"), q_out + 2 * kv_out)], b)
        } else {
            let parts = [("q_proj", q_out), ("k_proj", kv_out), ("v_proj", kv_out)];
            let w: Vec<(VarBuilder, usize)> = parts.iter().map(|(name, out)| (a.pp(name), *out)).collect();
            let b = if cfg.qkv_bias {
                let b: Vec<Tensor> = parts
                    .iter()
                    .map(|(name, out)| weight(&a.pp(name), &[*out], "bias"))
                    .collect::<Result<_>>()?;
                Some(Tensor::cat(&b, 0)?)
            } else {
                None
            };
            (w, b)
        };
        let mut q_scale = None;
        let qk_norm = if cfg.qk_norm {
            let q = (weight(&a.pp("q_norm"), &[hd], "weight")? * cfg.query_scale)?;
            Some((q, weight(&a.pp("k_norm"), &[hd], "weight")?))
        } else {
            q_scale = Some((q_out, cfg.query_scale));
            qkv_bias = qkv_bias
                .map(|b| scale_rows(&b, q_out, cfg.query_scale))
                .transpose()?;
            None
        };
        let mlp = vb.pp("mlp");
        let gate_up = if cfg.fused_projections {
            vec![(mlp.pp("gate_up_proj"), 2 * cfg.ffn)]
        } else {
            vec![(mlp.pp("gate_proj"), cfg.ffn), (mlp.pp("up_proj"), cfg.ffn)]
        };
        let matrices = |parts: &[(VarBuilder, usize)], cols, scaled| {
            load_stacked_transposed(parts, cols, scaled, mapped, dtype)
        };
        let o = a.pp("o_proj");
        let gemma_norm = |name: &str| cfg.gemma.then(|| Self::norm(cfg, &vb.pp(name), d)).transpose();
        let ffn_norm_name = if cfg.gemma {
            "pre_feedforward_layernorm"
        } else {
            "post_attention_layernorm"
        };
        Ok(Layer {
            attn_norm: Self::norm(cfg, &vb.pp("input_layernorm"), d)?,
            qkv: matrices(&qkv, d, q_scale)?,
            qkv_bias,
            qk_norm,
            out: matrices(&[(o.clone(), d)], q_out, None)?,
            out_bias: cfg.o_bias.then(|| weight(&o, &[d], "bias")).transpose()?,
            post_attn_norm: gemma_norm("post_attention_layernorm")?,
            ffn_norm: Self::norm(cfg, &vb.pp(ffn_norm_name), d)?,
            gate_up: matrices(&gate_up, d, None)?,
            down: matrices(&[(mlp.pp("down_proj"), d)], cfg.ffn, None)?,
            post_ffn_norm: gemma_norm("post_feedforward_layernorm")?,
            window: cfg.windows[i],
        })
    }

    pub(crate) fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    /// cos and sin of positions `past..past + t`, `[t, head_dim / 2]` each, computed in f32
    /// as PyTorch does.
    fn rope_tables(&self, past: usize, t: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for p in past..past + t {
            for &f in &self.inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (t, half), &self.device)?.to_dtype(self.compute)?;
        let sin = Tensor::from_vec(sin, (t, half), &self.device)?.to_dtype(self.compute)?;
        Ok((cos, sin))
    }

    /// Token embeddings `[b * t, hidden]` as the first layer sees them (Gemma scales them).
    fn scaled(&self, x: Tensor) -> candle_core::Result<Tensor> {
        if self.cfg.gemma {
            x * (self.cfg.hidden as f64).sqrt()
        } else {
            Ok(x)
        }
    }

    /// The layers and the final norm over `x` (`[n, hidden]`, the positions of `parts` one
    /// part after another); with `rows` (indices into the `n`), the last layer's output
    /// projection and MLP run at those rows alone.
    fn layers(
        &self,
        mut x: Tensor,
        parts: &mut [Segment<'_>],
        rows: Option<&Tensor>,
        k: Kernels,
    ) -> candle_core::Result<Tensor> {
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            let only = if i == last { rows } else { None };
            x = self.layer_forward(layer, i, &x, parts, only, k)?;
        }
        k.rms_norm(&x, &self.norm, self.cfg.eps as f32)
    }

    /// Layer `i` over the rows of every part: the projections and the MLP over all of them at
    /// once, attention within each part.
    fn layer_forward(
        &self,
        l: &Layer,
        i: usize,
        x: &Tensor,
        parts: &mut [Segment<'_>],
        rows: Option<&Tensor>,
        k: Kernels,
    ) -> candle_core::Result<Tensor> {
        let c = &self.cfg;
        let eps = c.eps as f32;
        let h = k.rms_norm(x, &l.attn_norm, eps)?;
        let mut qkv = k.matmul(&h, &l.qkv)?;
        if let Some(bias) = &l.qkv_bias {
            qkv = k.bias_act(&qkv, bias, None)?;
        }
        let y = match parts {
            [part] => self.self_attention(l, i, &qkv, part, k)?,
            _ => {
                let ys = parts
                    .iter_mut()
                    .map(|p| self.self_attention(l, i, &qkv.narrow(0, p.start, p.b * p.t)?, p, k))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::cat(&ys, 0)?
            }
        };
        let (x, y) = keep_rows(x, y, rows)?;
        let mut o = k.matmul(&y, &l.out)?;
        if let Some(bias) = &l.out_bias {
            o = k.bias_act(&o, bias, None)?;
        }
        if let Some(w) = &l.post_attn_norm {
            o = k.rms_norm(&o, w, eps)?;
        }
        let x = (x + o)?;
        let h = k.rms_norm(&x, &l.ffn_norm, eps)?;
        let mut m = k.matmul(&k.gated(&k.matmul(&h, &l.gate_up)?, c.activation)?, &l.down)?;
        if let Some(w) = &l.post_ffn_norm {
            m = k.rms_norm(&m, w, eps)?;
        }
        x + m
    }

    /// Layer `i`'s attention over one part, from its rows of the stacked Q, K and V projections
    /// (`[b * t, (heads + 2 kv_heads) head_dim]`): `[b * t, heads head_dim]`. The part's keys
    /// and values go to its cache.
    fn self_attention(
        &self,
        l: &Layer,
        i: usize,
        qkv: &Tensor,
        part: &mut Segment<'_>,
        k: Kernels,
    ) -> candle_core::Result<Tensor> {
        let c = &self.cfg;
        let (b, t) = (part.b, part.t);
        let (heads, kv, hd) = (c.heads, c.kv_heads, c.head_dim);
        let qkv = qkv.reshape((b, t, heads + 2 * kv, hd))?;
        let mut q = qkv.narrow(2, 0, heads)?;
        let mut key = qkv.narrow(2, heads, kv)?;
        if let Some((qn, kn)) = &l.qk_norm {
            q = k.rms_norm(&q, qn, c.eps as f32)?;
            key = k.rms_norm(&key, kn, c.eps as f32)?;
        }
        let (cos, sin) = (&part.cos, &part.sin);
        let q = k.rope(&q.transpose(1, 2)?, cos, sin, c.rope.style)?;
        let key = k.rope(&key.transpose(1, 2)?, cos, sin, c.rope.style)?;
        let v = qkv.narrow(2, heads + kv, kv)?.transpose(1, 2)?.contiguous()?;
        let (key, v) = match part.cache.as_deref_mut() {
            Some(cache) => cache.append(i, key, v)?,
            None => (key, v),
        };
        let causal = Causal {
            t,
            past: part.past,
            window: l.window,
        };
        let q = q.contiguous()?.reshape((b, kv, heads / kv, t, hd))?;
        self.attention(&q, &key, &v, causal, k)?
            .reshape((b, heads, t, hd))?
            .transpose(1, 2)?
            .reshape((b * t, heads * hd))
    }

    /// A part of a pass as the layers see it: its first row, shape, cached positions, cache
    /// and RoPE tables; fails when it would run past the context.
    fn segment<'a>(
        &self,
        start: usize,
        (b, t): (usize, usize),
        cache: Option<&'a mut KvCache>,
    ) -> candle_core::Result<Segment<'a>> {
        let past = cache.as_ref().map_or(0, |c| c.len());
        check_context(past, t, self.cfg.context)?;
        let (cos, sin) = self.rope_tables(past, t)?;
        Ok(Segment {
            start,
            b,
            t,
            past,
            cache,
            cos,
            sin,
        })
    }

    /// Attention of queries `q` (`[b, kv, group, t, hd]`: the heads that share a KV head
    /// stacked) over `key` and `v` (`[b, kv, past + t, hd]`): `[b, kv, group, t, hd]`. With the
    /// fused CPU kernels a long prompt's queries go in blocks of [`QUERY_BLOCK`], each against
    /// the keys it can see, which skips the masked half of both matmuls.
    fn attention(
        &self,
        q: &Tensor,
        key: &Tensor,
        v: &Tensor,
        at: Causal,
        k: Kernels,
    ) -> candle_core::Result<Tensor> {
        let blocked = k == Kernels::Fused && q.device().is_cpu() && at.t >= 2 * QUERY_BLOCK;
        if !blocked {
            return self.attend(q, key, v, at, k);
        }
        let blocks = (0..at.t)
            .step_by(QUERY_BLOCK)
            .map(|start| {
                let rows = QUERY_BLOCK.min(at.t - start);
                let seen = at.past + start + rows;
                let block = Causal {
                    t: rows,
                    past: at.past + start,
                    window: at.window,
                };
                let q = q.narrow(3, start, rows)?.contiguous()?;
                self.attend(&q, &key.narrow(2, 0, seen)?, &v.narrow(2, 0, seen)?, block, k)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::cat(&blocks, 3)
    }

    /// Attention of `q` (`[b, kv, group, t, hd]`, contiguous) at the positions of `at` over
    /// every key of `key` and `v`, masked causally: `[b, kv, group, t, hd]`.
    fn attend(
        &self,
        q: &Tensor,
        key: &Tensor,
        v: &Tensor,
        at: Causal,
        k: Kernels,
    ) -> candle_core::Result<Tensor> {
        let (b, kv, group, t, hd) = q.dims5()?;
        let len = key.dim(2)?;
        let mut att = q.reshape((b, kv, group * t, hd))?.matmul(&key.t()?)?;
        if let Some(cap) = self.cfg.attn_softcap {
            att = ((att / cap)?.tanh()? * cap)?;
        }
        let att = match k.causal_softmax(&att, at)? {
            Some(att) => att,
            None => {
                if let Some(mask) = self.masks.get(t, at.past, at.window, att.dtype())? {
                    att = att
                        .reshape((b, kv, group, t, len))?
                        .broadcast_add(&mask)?
                        .reshape((b, kv, group * t, len))?;
                }
                k.softmax_last_dim(&att)?
            }
        };
        att.matmul(v)?.reshape((b, kv, group, t, hd))
    }
}

/// Query rows per block of a long prompt's attention on the CPU ([`Decoder::attention`]).
const QUERY_BLOCK: usize = 256;

/// One part of a pass (see [`Architecture::forward_parts`]) as the layers see it: its first
/// row among the pass's, `b` sequences of `t` new positions after `past` cached ones, its
/// cache, and the RoPE tables of its positions.
struct Segment<'a> {
    start: usize,
    b: usize,
    t: usize,
    past: usize,
    cache: Option<&'a mut KvCache>,
    cos: Tensor,
    sin: Tensor,
}

impl Architecture for Decoder {
    fn embed(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        super::embed(&self.embed, ids, self.cfg.hidden)
    }

    fn forward(
        &self,
        embeds: &Tensor,
        cache: Option<&mut KvCache>,
        rows: Option<&Tensor>,
        k: Kernels,
    ) -> candle_core::Result<Tensor> {
        let (b, t, d) = embeds.dims3()?;
        let mut parts = [self.segment(0, (b, t), cache)?];
        self.layers(self.scaled(embeds.reshape((b * t, d))?)?, &mut parts, rows, k)
    }

    fn forward_parts(&self, embeds: &Tensor, parts: &mut [Part<'_>]) -> candle_core::Result<Tensor> {
        let mut segments = Vec::with_capacity(parts.len());
        let mut rows = Vec::new();
        let mut start = 0;
        for p in parts.iter_mut() {
            rows.extend(p.rows.iter().map(|&r| r + start as u32));
            segments.push(self.segment(start, (p.b, p.t), p.cache.as_deref_mut())?);
            start += p.b * p.t;
        }
        let n = rows.len();
        let rows = Tensor::from_vec(rows, n, &self.device)?;
        let x = self.scaled(embeds.clone())?;
        self.layers(x, &mut segments, Some(&rows), Kernels::Fused)
    }

    fn logits(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        let logits = project(hidden, &self.head)?;
        match self.cfg.final_softcap {
            Some(cap) => (logits / cap)?.tanh()? * cap,
            None => Ok(logits),
        }
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn info(&self) -> ArchInfo {
        ArchInfo {
            architecture: self.cfg.family.name().into(),
            parameters: self.parameters,
            vocab_size: self.cfg.vocab,
            context_length: self.cfg.context,
            hidden_size: self.cfg.hidden,
            layers: self.cfg.layers,
            heads: self.cfg.heads,
            dtype: self.dtype.as_str().into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::ops::max_abs_diff;

    /// A prompt long enough for query blocks (tiny Gemma 2: GQA, soft-capping, a sliding
    /// window on alternate layers) gives the hidden states of the unblocked paths: the
    /// differentiable kernels over the whole prompt, and the fused ones fed in short pieces
    /// through the KV cache.
    #[test]
    fn query_blocks_equal_the_unblocked_attention() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gemma2");
        let m = crate::model::load::architecture(
            &dir.join("config.json"),
            &[dir.join("model.safetensors")],
            &crate::model::LoadOptions::default(),
        )
        .unwrap();
        let ids: Vec<u32> = (0..2 * QUERY_BLOCK as u32 + 77)
            .map(|i| 3 + (i * 37) % 1000)
            .collect();
        let run = |ids: &[u32], cache: Option<&mut KvCache>, k: Kernels| {
            let ids = Tensor::new(ids, m.device()).unwrap().unsqueeze(0).unwrap();
            m.forward(&m.embed(&ids).unwrap(), cache, None, k).unwrap()
        };
        let blocked = run(&ids, None, Kernels::Fused);
        let composed = run(&ids, None, Kernels::Differentiable);
        let mut cache = m.new_cache();
        let pieces: Vec<Tensor> = ids
            .chunks(QUERY_BLOCK - 1)
            .map(|piece| run(piece, Some(&mut cache), Kernels::Fused))
            .collect();
        let pieces = Tensor::cat(&pieces, 0).unwrap();
        for (what, other) in [("differentiable", &composed), ("cached pieces", &pieces)] {
            let d = max_abs_diff(&blocked, other);
            assert!(d < 1e-4, "{what}: {d}");
        }
    }
}
