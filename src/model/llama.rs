//! Llama (SmolLM2 and other Llama-layout GGUF models), f32 on the CPU.
//!
//! GGUF stores the Q and K projections permuted for interleaved RoPE (pairs `2i, 2i+1`), so the
//! weights are kept as stored and rotated with `rope_i`; attention scores are the same as
//! rotate-half RoPE on the original weights. Q, K and V are one matmul, gate and up another.
//! GQA runs without copying K/V: the query heads that share a KV head are stacked along the
//! sequence axis of one batched matmul.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::ops::{rms_norm, softmax_last_dim};
use candle_nn::rotary_emb::rope_i;

use crate::error::Result;
use crate::model::gguf::Gguf;
use crate::model::ops::swiglu;
use crate::model::{ArchInfo, Architecture};

/// Shapes and constants from the GGUF metadata.
#[derive(Debug, Clone)]
pub struct Config {
    pub vocab: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub context: usize,
    pub eps: f32,
    pub rope_theta: f32,
}

struct Layer {
    attn_norm: Tensor,
    /// `[hidden, (heads + 2 kv_heads) head_dim]`, Q rows pre-scaled by 1/sqrt(head_dim).
    qkv: Tensor,
    /// `[heads head_dim, hidden]`.
    out: Tensor,
    ffn_norm: Tensor,
    /// `[hidden, 2 ffn]`: gate then up.
    gate_up: Tensor,
    /// `[ffn, hidden]`.
    down: Tensor,
}

pub struct Llama {
    cfg: Config,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    /// `[vocab, hidden]`; the embedding itself when tied.
    head: Tensor,
    /// `[context, head_dim / 2]`.
    cos: Tensor,
    sin: Tensor,
    masks: Mutex<HashMap<usize, Tensor>>,
    parameters: usize,
}

/// Key and value cache of one layer, `[1, kv_heads, len, head_dim]`.
type Kv = Option<(Tensor, Tensor)>;

impl Llama {
    pub fn from_gguf(file: &mut Gguf) -> Result<Self> {
        let cfg = config(file)?;
        let Config {
            vocab,
            hidden: d,
            ffn,
            heads,
            kv_heads,
            head_dim: hd,
            ..
        } = cfg;
        let mut parameters = 0;
        let mut get = |file: &mut Gguf, name: &str, shape: &[usize]| {
            parameters += shape.iter().product::<usize>();
            file.tensor(name, shape)
        };
        let embed = get(file, "token_embd.weight", &[vocab, d])?;
        let norm = get(file, "output_norm.weight", &[d])?;
        let head = if file.has_tensor("output.weight") {
            get(file, "output.weight", &[vocab, d])?
        } else {
            embed.clone()
        };
        let scale = 1.0 / (hd as f64).sqrt();
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let p = format!("blk.{i}");
            let q = (get(file, &format!("{p}.attn_q.weight"), &[heads * hd, d])? * scale)?;
            let k = get(file, &format!("{p}.attn_k.weight"), &[kv_heads * hd, d])?;
            let v = get(file, &format!("{p}.attn_v.weight"), &[kv_heads * hd, d])?;
            let gate = get(file, &format!("{p}.ffn_gate.weight"), &[ffn, d])?;
            let up = get(file, &format!("{p}.ffn_up.weight"), &[ffn, d])?;
            layers.push(Layer {
                attn_norm: get(file, &format!("{p}.attn_norm.weight"), &[d])?,
                qkv: Tensor::cat(&[q, k, v], 0)?.t()?.contiguous()?,
                out: get(file, &format!("{p}.attn_output.weight"), &[d, heads * hd])?
                    .t()?
                    .contiguous()?,
                ffn_norm: get(file, &format!("{p}.ffn_norm.weight"), &[d])?,
                gate_up: Tensor::cat(&[gate, up], 0)?.t()?.contiguous()?,
                down: get(file, &format!("{p}.ffn_down.weight"), &[d, ffn])?
                    .t()?
                    .contiguous()?,
            });
        }
        let freq_factors = if file.has_tensor("rope_freqs.weight") {
            Some(file.tensor("rope_freqs.weight", &[hd / 2])?.to_vec1::<f32>()?)
        } else {
            None
        };
        let (cos, sin) = rope_tables(&cfg, freq_factors.as_deref())?;
        Ok(Llama {
            cfg,
            embed,
            layers,
            norm,
            head,
            cos,
            sin,
            masks: Mutex::new(HashMap::new()),
            parameters,
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// `[t, t]`: 0 on and below the diagonal, -inf above.
    fn mask(&self, t: usize) -> candle_core::Result<Tensor> {
        let mut masks = self.masks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = masks.get(&t) {
            return Ok(m.clone());
        }
        let data: Vec<f32> = (0..t * t)
            .map(|i| if i % t > i / t { f32::NEG_INFINITY } else { 0.0 })
            .collect();
        let m = Tensor::from_vec(data, (t, t), &Device::Cpu)?;
        if masks.len() > 256 {
            masks.clear();
        }
        masks.insert(t, m.clone());
        Ok(m)
    }

    /// Hidden states after the final norm, `[b, t, hidden]`. With a cache, `ids` continue the
    /// cached sequence (batch 1).
    fn forward(&self, ids: &Tensor, mut cache: Option<&mut [Kv]>) -> candle_core::Result<Tensor> {
        let Config {
            hidden: d,
            heads,
            kv_heads,
            head_dim: hd,
            eps,
            ..
        } = self.cfg;
        let (b, t) = ids.dims2()?;
        let n = b * t;
        let offset = match &cache {
            Some(c) => c[0].as_ref().map_or(0, |(k, _)| k.dim(2).unwrap_or(0)),
            None => 0,
        };
        if offset + t > self.cfg.context {
            candle_core::bail!(
                "{} positions exceed the context length {}",
                offset + t,
                self.cfg.context
            );
        }
        let group = heads / kv_heads;
        let cos = self.cos.narrow(0, offset, t)?;
        let sin = self.sin.narrow(0, offset, t)?;
        let mask = if t > 1 {
            if offset > 0 {
                candle_core::bail!("a multi-token step after a cached prefix is not supported");
            }
            Some(self.mask(t)?)
        } else {
            None
        };
        let mut x = self.embed.index_select(&ids.flatten_all()?, 0)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.attn_norm, eps)?;
            let qkv = h
                .matmul(&layer.qkv)?
                .reshape((b, t, heads + 2 * kv_heads, hd))?
                .transpose(1, 2)?;
            let q = rope_i(&qkv.narrow(1, 0, heads)?.contiguous()?, &cos, &sin)?;
            let mut k = rope_i(&qkv.narrow(1, heads, kv_heads)?.contiguous()?, &cos, &sin)?;
            let mut v = qkv.narrow(1, heads + kv_heads, kv_heads)?.contiguous()?;
            if let Some(cache) = cache.as_deref_mut() {
                if let Some((pk, pv)) = &cache[i] {
                    k = Tensor::cat(&[pk, &k], 2)?;
                    v = Tensor::cat(&[pv, &v], 2)?;
                }
                cache[i] = Some((k.clone(), v.clone()));
            }
            let len = k.dim(2)?;
            let q = q.reshape((b, kv_heads, group * t, hd))?;
            let mut att = q.matmul(&k.t()?)?;
            if let Some(mask) = &mask {
                att = att
                    .reshape((b, kv_heads, group, t, len))?
                    .broadcast_add(mask)?
                    .reshape((b, kv_heads, group * t, len))?;
            }
            let att = softmax_last_dim(&att)?;
            let y = att
                .matmul(&v)?
                .reshape((b, heads, t, hd))?
                .transpose(1, 2)?
                .reshape((n, heads * hd))?;
            x = (x + y.matmul(&layer.out)?)?;
            let h = rms_norm(&x, &layer.ffn_norm, eps)?;
            let gu = h.matmul(&layer.gate_up)?;
            x = (x + swiglu(&gu)?.matmul(&layer.down)?)?;
        }
        rms_norm(&x, &self.norm, eps)?.reshape((b, t, d))
    }
}

impl Architecture for Llama {
    fn hidden(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        self.forward(ids, None)
    }

    fn logits(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        hidden.matmul(&self.head.t()?)
    }

    fn generate(&self, prompt: &[u32], max_new_tokens: usize, stop: &[u32]) -> candle_core::Result<Vec<u32>> {
        let mut out = Vec::with_capacity(max_new_tokens);
        if max_new_tokens == 0 || prompt.is_empty() {
            return Ok(out);
        }
        let mut cache: Vec<Kv> = vec![None; self.layers.len()];
        let ids = Tensor::new(prompt, &Device::Cpu)?.unsqueeze(0)?;
        let h = self.forward(&ids, Some(&mut cache))?;
        let mut last = h.i((0, prompt.len() - 1..prompt.len()))?;
        loop {
            let logits = self.logits(&last)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            let next = argmax(&logits[0]);
            out.push(next);
            if out.len() == max_new_tokens || stop.contains(&next) {
                return Ok(out);
            }
            let ids = Tensor::new(&[next], &Device::Cpu)?.unsqueeze(0)?;
            last = self.forward(&ids, Some(&mut cache))?.i((0, 0..1))?;
        }
    }

    fn info(&self) -> ArchInfo {
        ArchInfo {
            architecture: "llama".into(),
            parameters: self.parameters,
            vocab_size: self.cfg.vocab,
            context_length: self.cfg.context,
            hidden_size: self.cfg.hidden,
            layers: self.cfg.layers,
            heads: self.cfg.heads,
            dtype: "f32".into(),
        }
    }
}

/// First index of the largest value (as `torch.argmax`).
fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

fn config(file: &Gguf) -> Result<Config> {
    let key = |k: &str| format!("llama.{k}");
    let hidden = file.usize(&key("embedding_length"))?;
    let heads = file.usize(&key("attention.head_count"))?;
    let kv_heads = match file.get(&key("attention.head_count_kv")) {
        Some(_) => file.usize(&key("attention.head_count_kv"))?,
        None => heads,
    };
    let vocab = match file.tensor_shape("token_embd.weight") {
        Some([v, _]) => *v,
        _ => return Err(file.error("tensor `token_embd.weight` is missing or not 2-D")),
    };
    let cfg = Config {
        vocab,
        hidden,
        ffn: file.usize(&key("feed_forward_length"))?,
        layers: file.usize(&key("block_count"))?,
        heads,
        kv_heads,
        head_dim: hidden.checked_div(heads).unwrap_or(0),
        context: file.usize(&key("context_length"))?,
        eps: file.f64(&key("attention.layer_norm_rms_epsilon"))? as f32,
        rope_theta: match file.get(&key("rope.freq_base")) {
            Some(_) => file.f64(&key("rope.freq_base"))? as f32,
            None => 10_000.0,
        },
    };
    let bad = |m: String| Err(file.error(m));
    if cfg.heads == 0 || cfg.kv_heads == 0 || !cfg.heads.is_multiple_of(cfg.kv_heads) {
        return bad(format!(
            "{} attention heads cannot share {} key/value heads",
            cfg.heads, cfg.kv_heads
        ));
    }
    if !cfg.hidden.is_multiple_of(cfg.heads) || !cfg.head_dim.is_multiple_of(2) {
        return bad(format!(
            "hidden size {} does not split into {} heads of even size",
            cfg.hidden, cfg.heads
        ));
    }
    if cfg.layers == 0 || cfg.ffn == 0 || cfg.vocab == 0 {
        return bad("zero layers, feed-forward size or vocabulary".into());
    }
    if cfg.context == 0 || cfg.context > 1 << 20 {
        return bad(format!("context length {} out of range", cfg.context));
    }
    if let Some(Ok(n)) = file
        .get(&key("rope.dimension_count"))
        .map(|_| file.usize(&key("rope.dimension_count")))
    {
        if n != cfg.head_dim {
            return bad(format!(
                "partial rotary embeddings ({n} of {} dims) are not supported",
                cfg.head_dim
            ));
        }
    }
    if let Ok(kind) = file.str(&key("rope.scaling.type")) {
        if kind != "none" {
            return bad(format!("RoPE scaling `{kind}` is not supported"));
        }
    }
    if !(cfg.eps > 0.0 && cfg.rope_theta > 0.0) {
        return bad("RMS epsilon and RoPE base must be positive".into());
    }
    Ok(cfg)
}

/// cos and sin of every position and frequency, `[context, head_dim / 2]`, in f32 as PyTorch
/// computes them. `factors` divide the frequencies (Llama 3's `rope_freqs`).
fn rope_tables(cfg: &Config, factors: Option<&[f32]>) -> Result<(Tensor, Tensor)> {
    let half = cfg.head_dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| {
            let f = 1.0 / cfg.rope_theta.powf((2 * i) as f32 / cfg.head_dim as f32);
            factors.map_or(f, |s| f / s[i])
        })
        .collect();
    let mut cos = Vec::with_capacity(cfg.context * half);
    let mut sin = Vec::with_capacity(cfg.context * half);
    for p in 0..cfg.context {
        for &f in &inv {
            let a = p as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    let shape = (cfg.context, half);
    Ok((
        Tensor::from_vec(cos, shape, &Device::Cpu)?,
        Tensor::from_vec(sin, shape, &Device::Cpu)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::argmax;

    #[test]
    fn argmax_takes_the_first_of_equal_values() {
        assert_eq!(argmax(&[0.0, 2.0, 1.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY, -1.0]), 1);
    }
}
