//! GPT-2 (gpt2, distilgpt2), as Hugging Face's `GPT2LMHeadModel` computes it.
//!
//! Conv1D weights stay as stored, `[in, out]`, so every projection is `x @ W + b` on a
//! `[tokens, features]` matrix: one GEMM per projection for the whole batch. Q, K and V come out
//! of one fused projection and are split by a single permute.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::arch::family::Weights;
use crate::model::arch::kv_cache::{KvCache, Masks};
use crate::model::arch::{check_context, keep_rows, project, weight, ArchInfo, Architecture};
use crate::model::kernels::{ops, Activation, Kernels};
use crate::model::Family;

/// The fields of a GPT-2 `config.json` the forward pass needs.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Config {
    pub vocab_size: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_layer: usize,
    #[serde(default)]
    pub n_positions: Option<usize>,
    #[serde(default)]
    pub n_ctx: Option<usize>,
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_activation")]
    pub activation_function: String,
    #[serde(default = "yes")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
}

fn default_eps() -> f64 {
    1e-5
}

fn default_activation() -> String {
    "gelu_new".into()
}

fn yes() -> bool {
    true
}

impl Config {
    /// Parses and validates a `config.json`; `origin` names the file in errors.
    #[cfg(test)]
    fn from_json(text: &str, origin: &str) -> Result<Self> {
        let json: Value = serde_json::from_str(text)
            .map_err(|e| Error::Model(format!("{origin} is not a valid GPT-2 config: {e}")))?;
        Self::from_value(&json, origin)
    }

    /// Validates an already parsed `config.json`; `origin` names the file in errors.
    pub(crate) fn from_value(json: &Value, origin: &str) -> Result<Self> {
        let cfg = Config::deserialize(json)
            .map_err(|e| Error::Model(format!("{origin} is not a valid GPT-2 config: {e}")))?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Maximum sequence length (`n_positions`, or `n_ctx` in old configs).
    pub(crate) fn context_length(&self) -> usize {
        self.n_positions.or(self.n_ctx).unwrap_or(0)
    }

    pub(crate) fn inner(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    fn validate(&self, origin: &str) -> Result<()> {
        let bad = |m: String| Err(Error::Model(format!("{origin}: {m}")));
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("n_embd", self.n_embd),
            ("n_head", self.n_head),
            ("n_layer", self.n_layer),
            ("n_positions", self.context_length()),
            ("n_inner", self.inner()),
        ] {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return bad(format!(
                "n_embd ({}) is not a multiple of n_head ({})",
                self.n_embd, self.n_head
            ));
        }
        if !(self.layer_norm_epsilon.is_finite() && self.layer_norm_epsilon > 0.0) {
            return bad(format!(
                "layer_norm_epsilon must be positive, got {}",
                self.layer_norm_epsilon
            ));
        }
        if self.vocab_size > u32::MAX as usize {
            return bad(format!("vocab_size {} is too large", self.vocab_size));
        }
        self.activation()
            .map(|_| ())
            .map_err(|m| Error::Model(format!("{origin}: {m}")))
    }

    fn activation(&self) -> std::result::Result<Activation, String> {
        match Activation::from_name(&self.activation_function) {
            Some(a) if a != Activation::Silu => Ok(a),
            _ => Err(format!(
                "unsupported activation_function {:?} (supported: gelu_new, gelu_pytorch_tanh, gelu_fast, gelu, relu)",
                self.activation_function
            )),
        }
    }
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    fn load(vb: &VarBuilder, n: usize, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            weight: weight(vb, &[n], "weight")?,
            bias: weight(vb, &[n], "bias")?,
            eps: eps as f32,
        })
    }

    fn parameters(&self) -> usize {
        self.weight.elem_count() + self.bias.elem_count()
    }

    fn forward(&self, x: &Tensor, k: Kernels) -> candle_core::Result<Tensor> {
        k.layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// `x @ weight + bias` with `weight` stored `[in, out]` (Hugging Face `Conv1D`).
struct Conv1D {
    weight: Tensor,
    bias: Tensor,
}

impl Conv1D {
    fn load(vb: &VarBuilder, n_in: usize, n_out: usize) -> Result<Self> {
        Ok(Conv1D {
            weight: weight(vb, &[n_in, n_out], "weight")?,
            bias: weight(vb, &[n_out], "bias")?,
        })
    }

    fn parameters(&self) -> usize {
        self.weight.elem_count() + self.bias.elem_count()
    }

    /// `act(x @ weight + bias)`; bias and activation in one parallel pass.
    fn forward(&self, x: &Tensor, act: Option<Activation>, k: Kernels) -> candle_core::Result<Tensor> {
        k.bias_act(&k.matmul(x, &self.weight)?, &self.bias, act)
    }
}

/// `gelu_new(x + bias)` for a contiguous f32 `[rows, out]` tensor and an `[out]` bias, in one
/// parallel pass (what GPT-2's MLP runs; public for the benchmark).
pub fn bias_gelu(x: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    ops::bias_act(x, bias, Some(Activation::GeluTanh))
}

struct Block {
    ln_1: LayerNorm,
    c_attn: Conv1D,
    attn_proj: Conv1D,
    ln_2: LayerNorm,
    c_fc: Conv1D,
    mlp_proj: Conv1D,
    /// Multiplies the attention scores (1/sqrt(head_dim), maybe / layer index).
    scale: f64,
}

/// A GPT-2 language model with its weights in f32.
pub(crate) struct Gpt2 {
    cfg: Config,
    activation: Activation,
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    /// `[vocab, hidden]`; `None` when tied to `wte`.
    lm_head: Option<Tensor>,
    parameters: usize,
    masks: Masks,
    device: Device,
    dtype: DType,
}

impl Block {
    /// Block `i` under `vb` (`h.{i}`).
    fn load(cfg: &Config, vb: &VarBuilder, i: usize) -> Result<Self> {
        let (c, eps) = (cfg.n_embd, cfg.layer_norm_epsilon);
        let mut scale = if cfg.scale_attn_weights {
            1.0 / ((c / cfg.n_head) as f64).sqrt()
        } else {
            1.0
        };
        if cfg.scale_attn_by_inverse_layer_idx {
            scale /= (i + 1) as f64;
        }
        Ok(Block {
            ln_1: LayerNorm::load(&vb.pp("ln_1"), c, eps)?,
            c_attn: Conv1D::load(&vb.pp("attn.c_attn"), c, 3 * c)?,
            attn_proj: Conv1D::load(&vb.pp("attn.c_proj"), c, c)?,
            ln_2: LayerNorm::load(&vb.pp("ln_2"), c, eps)?,
            c_fc: Conv1D::load(&vb.pp("mlp.c_fc"), c, cfg.inner())?,
            mlp_proj: Conv1D::load(&vb.pp("mlp.c_proj"), cfg.inner(), c)?,
            scale,
        })
    }

    fn parameters(&self) -> usize {
        let (norms, convs) = (
            [&self.ln_1, &self.ln_2],
            [&self.c_attn, &self.attn_proj, &self.c_fc, &self.mlp_proj],
        );
        norms.iter().map(|n| n.parameters()).sum::<usize>()
            + convs.iter().map(|c| c.parameters()).sum::<usize>()
    }
}

/// A GPT-2 from its config.json and its weights (the registry's constructor).
pub(crate) fn from_hf(
    _: Family,
    json: &Value,
    origin: &str,
    weights: Weights,
) -> Result<Box<dyn Architecture>> {
    let cfg = Config::from_value(json, origin)?;
    Ok(Box::new(Gpt2::load(cfg, weights()?.vb)?))
}

impl Gpt2 {
    /// Loads the weights a validated config names, under Hugging Face's names with or without
    /// the `transformer.` prefix; the `VarBuilder` fixes device and dtype.
    pub(crate) fn load(cfg: Config, vb: VarBuilder) -> Result<Self> {
        let activation = cfg
            .activation()
            .map_err(|m| Error::Model(format!("config.json: {m}")))?;
        let (c, v) = (cfg.n_embd, cfg.vocab_size);
        let t = if vb.contains_tensor("transformer.wte.weight") {
            vb.pp("transformer")
        } else {
            vb.clone()
        };
        let wte = weight(&t, &[v, c], "wte.weight")?;
        let wpe = weight(&t, &[cfg.context_length(), c], "wpe.weight")?;
        let blocks = (0..cfg.n_layer)
            .map(|i| Block::load(&cfg, &t.pp("h").pp(i), i))
            .collect::<Result<Vec<_>>>()?;
        let ln_f = LayerNorm::load(&t.pp("ln_f"), c, cfg.layer_norm_epsilon)?;
        // An lm_head that is stored is used, tied or not (some exports store the tied copy).
        let lm_head = if vb.contains_tensor("lm_head.weight") {
            Some(weight(&vb, &[v, c], "lm_head.weight")?)
        } else if !cfg.tie_word_embeddings {
            return Err(Error::Model(
                "tie_word_embeddings is false but the weights have no lm_head.weight".into(),
            ));
        } else {
            None
        };
        let parameters = wte.elem_count()
            + wpe.elem_count()
            + blocks.iter().map(Block::parameters).sum::<usize>()
            + ln_f.parameters()
            + lm_head.as_ref().map_or(0, Tensor::elem_count);
        Ok(Gpt2 {
            activation,
            wte,
            wpe,
            blocks,
            ln_f,
            lm_head,
            parameters,
            masks: Masks::new(vb.device()),
            device: vb.device().clone(),
            dtype: vb.dtype(),
            cfg,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        blk: &Block,
        x: &Tensor,
        (b, t): (usize, usize),
        mask: Option<&Tensor>,
        cache: Option<(&mut KvCache, usize)>,
        rows: Option<&Tensor>,
        k: Kernels,
    ) -> candle_core::Result<Tensor> {
        let (c, nh) = (self.cfg.n_embd, self.cfg.n_head);
        let hd = c / nh;
        let h = blk.ln_1.forward(x, k)?;
        // [b*t, 3c] -> [3, b, heads, t, head_dim] in one copy.
        let qkv = blk
            .c_attn
            .forward(&h, None, k)?
            .reshape((b, t, 3, nh, hd))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let q = (qkv.get(0)? * blk.scale)?;
        let (key, v) = (qkv.get(1)?, qkv.get(2)?);
        let (key, v) = match cache {
            Some((cache, i)) => cache.append(i, key, v)?,
            None => (key, v),
        };
        let mut att = q.matmul(&key.t()?)?;
        if let Some(mask) = mask {
            att = att.broadcast_add(mask)?;
        }
        let att = k.softmax_last_dim(&att)?;
        let y = att
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * t, c))?;
        let (x, y) = keep_rows(x, y, rows)?;
        let x = (&x + blk.attn_proj.forward(&y, None, k)?)?;
        let h = blk
            .c_fc
            .forward(&blk.ln_2.forward(&x, k)?, Some(self.activation), k)?;
        x + blk.mlp_proj.forward(&h, None, k)?
    }

    fn head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.wte)
    }
}

impl Architecture for Gpt2 {
    fn embed(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        super::embed(&self.wte, ids, self.cfg.n_embd)
    }

    /// Adds the position embeddings of `past..past + t` to `embeds`; with `rows`, the last
    /// block computes its attention output projection and MLP for them alone.
    fn forward(
        &self,
        embeds: &Tensor,
        mut cache: Option<&mut KvCache>,
        rows: Option<&Tensor>,
        k: Kernels,
    ) -> candle_core::Result<Tensor> {
        let (b, t, c) = embeds.dims3()?;
        let past = cache.as_ref().map_or(0, |c| c.len());
        check_context(past, t, self.cfg.context_length())?;
        let pos = self.wpe.narrow(0, past, t)?;
        let mut x = embeds.broadcast_add(&pos)?.reshape((b * t, c))?;
        let mask = self.masks.get(t, past, None, self.dtype)?;
        let last = self.blocks.len().saturating_sub(1);
        for (i, block) in self.blocks.iter().enumerate() {
            let kv = cache.as_deref_mut().map(|c| (c, i));
            let only = if i == last { rows } else { None };
            x = self.block(block, &x, (b, t), mask.as_ref(), kv, only, k)?;
        }
        self.ln_f.forward(&x, k)
    }

    fn logits(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        project(hidden, self.head())
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn info(&self) -> ArchInfo {
        ArchInfo {
            architecture: "gpt2".into(),
            parameters: self.parameters,
            vocab_size: self.cfg.vocab_size,
            context_length: self.cfg.context_length(),
            hidden_size: self.cfg.n_embd,
            layers: self.cfg.n_layer,
            heads: self.cfg.n_head,
            dtype: self.dtype.as_str().into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Box<dyn Architecture> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt2");
        crate::model::load::architecture(
            &dir.join("config.json"),
            &[dir.join("model.safetensors")],
            &crate::model::LoadOptions::default(),
        )
        .unwrap()
    }

    /// Feeding a sequence in chunks through the KV cache (masks with a past) gives the hidden
    /// states of one full pass.
    #[test]
    fn chunked_cache_equals_full_pass() {
        let m = tiny();
        let ids: Vec<u32> = (0..15).map(|i| 100 + 37 * i).collect();
        let run = |ids: &[u32], cache: Option<&mut KvCache>| {
            let ids = Tensor::new(ids, m.device()).unwrap().unsqueeze(0).unwrap();
            m.forward(&m.embed(&ids).unwrap(), cache, None, Kernels::Fused)
        };
        let full = run(&ids, None).unwrap();
        let mut cache = m.new_cache();
        let parts: Vec<Tensor> = [(0, 10), (10, 11), (11, 15)]
            .iter()
            .map(|&(start, end)| run(&ids[start..end], Some(&mut cache)).unwrap())
            .collect();
        let chunked = Tensor::cat(&parts, 0).unwrap();
        let diff = ops::max_abs_diff(&full, &chunked);
        assert!(diff < 1e-4, "max difference {diff}");
        // Past the context length: an error, not a panic.
        assert!(run(&[1; 129], None).is_err());
    }

    /// Computing the last block for selected rows only gives those rows of the full pass.
    #[test]
    fn hidden_rows_equals_picking_from_hidden() {
        let m = tiny();
        let ids: Vec<u32> = (0..24).map(|i| 50 + 101 * i).collect();
        let ids = Tensor::from_vec(ids, (2, 12), m.device()).unwrap();
        let rows = Tensor::new(&[0u32, 5, 11, 12, 23, 5], m.device()).unwrap();
        let picked = m
            .hidden(&ids)
            .unwrap()
            .reshape((24, 64))
            .unwrap()
            .index_select(&rows, 0)
            .unwrap();
        let direct = m.hidden_rows(&ids, &rows).unwrap();
        assert_eq!(direct.dims(), &[6, 64]);
        let diff = ops::max_abs_diff(&picked, &direct);
        assert!(diff < 1e-5, "max difference {diff}");
    }

    #[test]
    fn config_validation() {
        let ok = r#"{"vocab_size": 10, "n_embd": 8, "n_head": 2, "n_layer": 1, "n_ctx": 16}"#;
        let cfg = Config::from_json(ok, "c").unwrap();
        assert_eq!((cfg.context_length(), cfg.inner()), (16, 32));
        for (bad, needle) in [
            (r#"{"n_embd": 8}"#, "missing field"),
            (
                r#"{"vocab_size": 10, "n_embd": 8, "n_head": 0, "n_layer": 1, "n_ctx": 16}"#,
                "n_head must be positive",
            ),
            (
                r#"{"vocab_size": 10, "n_embd": 8, "n_head": 2, "n_layer": 1}"#,
                "n_positions must be positive",
            ),
            (
                r#"{"vocab_size": 10, "n_embd": 8, "n_head": 2, "n_layer": 1, "n_ctx": 16, "activation_function": "swish"}"#,
                "unsupported activation_function",
            ),
            (r#"{"vocab_size": -1}"#, "invalid value"),
        ] {
            let e = Config::from_json(bad, "config.json").unwrap_err().to_string();
            assert!(e.contains(needle) && e.starts_with("model: config.json"), "{e}");
        }
    }
}
