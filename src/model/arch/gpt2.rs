//! GPT-2 (gpt2, distilgpt2), as Hugging Face's `GPT2LMHeadModel` computes it.
//!
//! Conv1D weights stay as stored, `[in, out]`, so every projection is `x @ W + b` on a
//! `[tokens, features]` matrix: one GEMM per projection for the whole batch. Q, K and V come out
//! of one fused projection and are split by a single permute.

use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::model::arch::kv_cache::{KvCache, Masks};
use crate::model::kernels::{ops, Activation, Kernels};
use crate::model::{ArchInfo, Architecture, LoadOptions};

/// The fields of a GPT-2 `config.json` the forward pass needs.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
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
    pub fn from_json(text: &str, origin: &str) -> Result<Self> {
        let cfg: Config = serde_json::from_str(text)
            .map_err(|e| Error::Model(format!("{origin} is not a valid GPT-2 config: {e}")))?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Maximum sequence length (`n_positions`, or `n_ctx` in old configs).
    pub fn context_length(&self) -> usize {
        self.n_positions.or(self.n_ctx).unwrap_or(0)
    }

    pub fn inner(&self) -> usize {
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
pub struct Gpt2 {
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

/// Reads tensors from one or more safetensors files and checks their shapes.
struct Weights {
    st: MmapedSafetensors,
    prefix: &'static str,
    device: Device,
    dtype: DType,
    parameters: usize,
}

impl Weights {
    fn open(files: &[PathBuf], options: &LoadOptions) -> Result<Self> {
        if files.is_empty() {
            return Err(Error::Model("no safetensors weight file given".into()));
        }
        for f in files {
            if !f.is_file() {
                return Err(Error::Model(format!(
                    "weight file {} does not exist",
                    f.display()
                )));
            }
        }
        // SAFETY: the files are memory-mapped read-only; like every mmap-based loader we
        // assume nobody truncates or rewrites them while the model loads. Tensors are copied
        // out of the map, which is dropped after loading.
        let st = unsafe { MmapedSafetensors::multi(files) }.map_err(|e| {
            Error::Model(format!(
                "cannot read safetensors {} (corrupt, truncated or not safetensors): {e}",
                files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let prefix = if st.get("transformer.wte.weight").is_ok() {
            "transformer."
        } else {
            ""
        };
        Ok(Weights {
            st,
            prefix,
            device: options.device.clone(),
            dtype: options.dtype(),
            parameters: 0,
        })
    }

    fn has(&self, name: &str) -> bool {
        self.st.get(name).is_ok()
    }

    /// Loads `name` (with the `transformer.` prefix if the file uses it) of shape `dims`.
    fn get(&mut self, name: &str, dims: &[usize]) -> Result<Tensor> {
        let full = format!("{}{name}", self.prefix);
        self.exact(&full, dims)
    }

    fn exact(&mut self, name: &str, dims: &[usize]) -> Result<Tensor> {
        if !self.has(name) {
            return Err(Error::Model(format!("the weights have no tensor {name}")));
        }
        let t = self
            .st
            .load(name, &self.device)
            .and_then(|t| t.to_dtype(self.dtype))
            .map_err(|e| Error::Model(format!("cannot load tensor {name}: {e}")))?;
        if t.dims() != dims {
            return Err(Error::Model(format!(
                "tensor {name} has shape {:?}, expected {dims:?}",
                t.dims()
            )));
        }
        self.parameters += t.elem_count();
        Ok(t)
    }

    fn layer_norm(&mut self, name: &str, n: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: self.get(&format!("{name}.weight"), &[n])?,
            bias: self.get(&format!("{name}.bias"), &[n])?,
            eps: eps as f32,
        })
    }

    fn conv1d(&mut self, name: &str, n_in: usize, n_out: usize) -> Result<Conv1D> {
        Ok(Conv1D {
            weight: self.get(&format!("{name}.weight"), &[n_in, n_out])?,
            bias: self.get(&format!("{name}.bias"), &[n_out])?,
        })
    }
}

impl Gpt2 {
    /// Loads the weights named by a validated config from safetensors files (one, or the shards
    /// of a sharded checkpoint).
    pub fn load(cfg: Config, files: &[PathBuf], options: &LoadOptions) -> Result<Self> {
        let activation = cfg
            .activation()
            .map_err(|m| Error::Model(format!("config.json: {m}")))?;
        let mut w = Weights::open(files, options)?;
        let (c, v, inner) = (cfg.n_embd, cfg.vocab_size, cfg.inner());
        let head_dim = (c / cfg.n_head) as f64;
        let wte = w.get("wte.weight", &[v, c])?;
        let wpe = w.get("wpe.weight", &[cfg.context_length(), c])?;
        let mut blocks = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = format!("h.{i}");
            let mut scale = if cfg.scale_attn_weights {
                1.0 / head_dim.sqrt()
            } else {
                1.0
            };
            if cfg.scale_attn_by_inverse_layer_idx {
                scale /= (i + 1) as f64;
            }
            blocks.push(Block {
                ln_1: w.layer_norm(&format!("{p}.ln_1"), c, cfg.layer_norm_epsilon)?,
                c_attn: w.conv1d(&format!("{p}.attn.c_attn"), c, 3 * c)?,
                attn_proj: w.conv1d(&format!("{p}.attn.c_proj"), c, c)?,
                ln_2: w.layer_norm(&format!("{p}.ln_2"), c, cfg.layer_norm_epsilon)?,
                c_fc: w.conv1d(&format!("{p}.mlp.c_fc"), c, inner)?,
                mlp_proj: w.conv1d(&format!("{p}.mlp.c_proj"), inner, c)?,
                scale,
            });
        }
        let ln_f = w.layer_norm("ln_f", c, cfg.layer_norm_epsilon)?;
        // An lm_head that is stored is used, tied or not (some exports store the tied copy).
        let lm_head = if w.has("lm_head.weight") {
            Some(w.exact("lm_head.weight", &[v, c])?)
        } else if !cfg.tie_word_embeddings {
            return Err(Error::Model(
                "tie_word_embeddings is false but the weights have no lm_head.weight".into(),
            ));
        } else {
            None
        };
        Ok(Gpt2 {
            activation,
            wte,
            wpe,
            blocks,
            ln_f,
            lm_head,
            parameters: w.parameters,
            masks: Masks::new(&w.device),
            device: w.device,
            dtype: w.dtype,
            cfg,
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Final hidden states `[batch * len, hidden]` of token embeddings `tok` (`[batch * len,
    /// hidden]`) placed after the positions in `cache`; with `rows` (indices into the
    /// `batch * len` positions) only those rows come out, and the last block computes its
    /// attention output projection and MLP for them alone.
    fn forward(
        &self,
        tok: &Tensor,
        (b, t): (usize, usize),
        mut cache: Option<&mut KvCache>,
        rows: Option<&Tensor>,
        k: Kernels,
    ) -> candle_core::Result<Tensor> {
        let c = self.cfg.n_embd;
        let ctx = self.cfg.context_length();
        let past = cache.as_ref().map_or(0, |c| c.len());
        if past + t > ctx {
            candle_core::bail!("{} tokens exceed the context length of {ctx}", past + t);
        }
        let pos = self.wpe.narrow(0, past, t)?;
        let mut x = tok.reshape((b, t, c))?.broadcast_add(&pos)?.reshape((b * t, c))?;
        let mask = self.masks.get(t, past, None, self.dtype)?;
        let last = self.blocks.len().saturating_sub(1);
        for (i, block) in self.blocks.iter().enumerate() {
            let kv = cache.as_deref_mut().map(|c| (c, i));
            let only = if i == last { rows } else { None };
            x = self.block(block, &x, (b, t), mask.as_ref(), kv, only, k)?;
        }
        self.ln_f.forward(&x, k)
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
        // Every position's keys and values were needed above; from here on only `rows` matter.
        let (x, y) = match rows {
            Some(rows) => (x.index_select(rows, 0)?, y.index_select(rows, 0)?),
            None => (x.clone(), y),
        };
        let x = (&x + blk.attn_proj.forward(&y, None, k)?)?;
        let h = blk
            .c_fc
            .forward(&blk.ln_2.forward(&x, k)?, Some(self.activation), k)?;
        x + blk.mlp_proj.forward(&h, None, k)?
    }

    fn tokens(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        self.wte.index_select(&ids.flatten_all()?, 0)
    }

    fn head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.wte)
    }
}

impl Architecture for Gpt2 {
    fn hidden(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        self.forward(&self.tokens(ids)?, (b, t), None, None, Kernels::Fused)?
            .reshape((b, t, self.cfg.n_embd))
    }

    fn hidden_rows(&self, ids: &Tensor, rows: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        self.forward(&self.tokens(ids)?, (b, t), None, Some(rows), Kernels::Fused)
    }

    fn logits(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        let head = self.head().t()?;
        match hidden.rank() {
            2 => hidden.matmul(&head),
            _ => hidden.broadcast_matmul(&head),
        }
    }

    fn step(&self, ids: &Tensor, cache: &mut KvCache) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let last = Tensor::new(&[(t - 1) as u32], &self.device)?;
        self.forward(
            &self.tokens(ids)?,
            (b, t),
            Some(cache),
            Some(&last),
            Kernels::Fused,
        )
    }

    fn new_cache(&self) -> KvCache {
        KvCache::new(self.blocks.len())
    }

    fn embed(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        self.tokens(ids)?.reshape((b, t, self.cfg.n_embd))
    }

    fn forward_from_embeddings(&self, embeds: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, c) = embeds.dims3()?;
        let x = embeds.reshape((b * t, c))?;
        self.forward(&x, (b, t), None, None, Kernels::Differentiable)?
            .reshape((b, t, c))
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

/// Loads a GPT-2 from a config file and its safetensors weights.
pub fn load(config: &Path, weights: &[PathBuf], options: &LoadOptions) -> Result<Gpt2> {
    let text = std::fs::read_to_string(config)
        .map_err(|e| Error::Model(format!("cannot read {}: {e}", config.display())))?;
    let cfg = Config::from_json(&text, &config.display().to_string())?;
    Gpt2::load(cfg, weights, options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Gpt2 {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt2");
        load(
            &dir.join("config.json"),
            &[dir.join("model.safetensors")],
            &LoadOptions::default(),
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
            let ids = Tensor::new(ids, &m.device).unwrap().unsqueeze(0).unwrap();
            let tok = m.tokens(&ids).unwrap();
            m.forward(&tok, (1, ids.dim(1).unwrap()), cache, None, Kernels::Fused)
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
        let ids = Tensor::from_vec(ids, (2, 12), &m.device).unwrap();
        let rows = Tensor::new(&[0u32, 5, 11, 12, 23, 5], &m.device).unwrap();
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
