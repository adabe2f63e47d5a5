//! GPT-2 (gpt2, distilgpt2), as Hugging Face's `GPT2LMHeadModel` computes it.
//!
//! Conv1D weights stay as stored, `[in, out]`, so every projection is `x @ W + b` on a
//! `[tokens, features]` matrix: one GEMM per projection for the whole batch. Q, K and V come out
//! of one fused projection and are split by a single permute.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::kv_cache::KvCache;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::model::ops::{self, Activation};
use crate::model::{ArchInfo, Architecture};

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
        match self.activation_function.as_str() {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
            "gelu" => Ok(Activation::GeluErf),
            "relu" => Ok(Activation::Relu),
            other => Err(format!(
                "unsupported activation_function {other:?} (supported: gelu_new, gelu_pytorch_tanh, gelu_fast, gelu, relu)"
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
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// `x @ weight + bias` with `weight` stored `[in, out]` (Hugging Face `Conv1D`).
struct Conv1D {
    weight: Tensor,
    bias: Tensor,
}

impl Conv1D {
    /// `act(x @ weight + bias)`; bias and activation in one parallel pass.
    fn forward(&self, x: &Tensor, act: Option<Activation>) -> candle_core::Result<Tensor> {
        ops::bias_act(&x.matmul(&self.weight)?, &self.bias, act)
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
    /// Additive causal masks `[len, past + len]`, keyed by `(len, past)`.
    masks: Mutex<HashMap<(usize, usize), Tensor>>,
    device: Device,
}

/// Reads tensors from one or more safetensors files and checks their shapes.
struct Weights {
    st: MmapedSafetensors,
    prefix: &'static str,
    device: Device,
    parameters: usize,
}

impl Weights {
    fn open(files: &[PathBuf]) -> Result<Self> {
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
            device: Device::Cpu,
            parameters: 0,
        })
    }

    fn has(&self, name: &str) -> bool {
        self.st.get(name).is_ok()
    }

    /// Loads `name` (with the `transformer.` prefix if the file uses it) as f32 of shape `dims`.
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
            .and_then(|t| t.to_dtype(DType::F32))
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
    pub fn load(cfg: Config, files: &[PathBuf]) -> Result<Self> {
        let activation = cfg
            .activation()
            .map_err(|m| Error::Model(format!("config.json: {m}")))?;
        let mut w = Weights::open(files)?;
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
        let device = w.device.clone();
        Ok(Gpt2 {
            activation,
            wte,
            wpe,
            blocks,
            ln_f,
            lm_head,
            parameters: w.parameters,
            masks: Mutex::new(HashMap::new()),
            device,
            cfg,
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Additive mask `[len, past + len]`: query i (at position past + i) sees keys 0..=past + i.
    fn mask(&self, len: usize, past: usize) -> candle_core::Result<Tensor> {
        let mut masks = self.masks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = masks.get(&(len, past)) {
            return Ok(m.clone());
        }
        let total = past + len;
        let data: Vec<f32> = (0..len)
            .flat_map(|i| (0..total).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let m = Tensor::from_vec(data, (len, total), &self.device)?;
        // Bound the cache by size (a 1024 x 1024 mask alone is 4 MB), not by count.
        const MAX_CACHED: usize = 8 << 20;
        let cached: usize = masks.values().map(Tensor::elem_count).sum();
        if cached + len * total > MAX_CACHED {
            masks.clear();
        }
        masks.insert((len, past), m.clone());
        Ok(m)
    }

    /// Final hidden states `[batch * len, hidden]` of `ids` (`[batch, len]`) placed at positions
    /// `past..past + len`. With `cache`, keys and values are appended to (and read from) it.
    fn forward(
        &self,
        ids: &Tensor,
        past: usize,
        cache: Option<&mut [KvCache]>,
    ) -> candle_core::Result<Tensor> {
        self.forward_rows(ids, past, cache, None)
    }

    /// As `forward`, but with `rows` (indices into the `batch * len` positions) only those rows
    /// come out, and the last block computes its attention output projection and MLP for them
    /// alone.
    fn forward_rows(
        &self,
        ids: &Tensor,
        past: usize,
        mut cache: Option<&mut [KvCache]>,
        rows: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let c = self.cfg.n_embd;
        let ctx = self.cfg.context_length();
        if past + t > ctx {
            candle_core::bail!("{} tokens exceed the context length of {ctx}", past + t);
        }
        let tok = self.wte.index_select(&ids.flatten_all()?, 0)?;
        let pos = self.wpe.narrow(0, past, t)?;
        let mut x = tok.reshape((b, t, c))?.broadcast_add(&pos)?.reshape((b * t, c))?;
        let mask = if t > 1 { Some(self.mask(t, past)?) } else { None };
        let last = self.blocks.len().saturating_sub(1);
        for (i, block) in self.blocks.iter().enumerate() {
            let kv = cache.as_deref_mut().map(|c| &mut c[i]);
            let only = if i == last { rows } else { None };
            x = self.block(block, &x, (b, t), mask.as_ref(), kv, only)?;
        }
        self.ln_f.forward(&x)
    }

    fn block(
        &self,
        blk: &Block,
        x: &Tensor,
        (b, t): (usize, usize),
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        rows: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (c, nh) = (self.cfg.n_embd, self.cfg.n_head);
        let hd = c / nh;
        let h = blk.ln_1.forward(x)?;
        // [b*t, 3c] -> [3, b, heads, t, head_dim] in one copy.
        let qkv = blk
            .c_attn
            .forward(&h, None)?
            .reshape((b, t, 3, nh, hd))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let q = (qkv.i(0)? * blk.scale)?;
        let (k, v) = (qkv.i(1)?, qkv.i(2)?);
        let (k, v) = match cache {
            Some(cache) => {
                let (k, v) = cache.append(&k, &v)?;
                (k.contiguous()?, v.contiguous()?)
            }
            None => (k, v),
        };
        let mut att = q.matmul(&k.t()?)?;
        if let Some(mask) = mask {
            att = att.broadcast_add(mask)?;
        }
        let att = candle_nn::ops::softmax_last_dim(&att)?;
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
        let x = (&x + blk.attn_proj.forward(&y, None)?)?;
        let h = blk.c_fc.forward(&blk.ln_2.forward(&x)?, Some(self.activation))?;
        x + blk.mlp_proj.forward(&h, None)?
    }

    fn head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.wte)
    }
}

impl Architecture for Gpt2 {
    fn hidden(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        self.forward(ids, 0, None)?.reshape((b, t, self.cfg.n_embd))
    }

    fn hidden_rows(&self, ids: &Tensor, rows: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_rows(ids, 0, None, Some(rows))
    }

    fn logits(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        hidden.matmul(&self.head().t()?)
    }

    fn generate(&self, prompt: &[u32], max_new_tokens: usize, stop: &[u32]) -> candle_core::Result<Vec<u32>> {
        let ctx = self.cfg.context_length();
        if prompt.is_empty() {
            candle_core::bail!("the prompt is empty");
        }
        let mut cache: Vec<KvCache> = (0..self.cfg.n_layer).map(|_| KvCache::new(2, ctx)).collect();
        let mut out = Vec::with_capacity(max_new_tokens);
        let mut input = prompt.to_vec();
        let mut past = 0;
        while out.len() < max_new_tokens {
            let t = input.len();
            let ids = Tensor::from_vec(input, (1, t), &self.device)?;
            let h = self.forward(&ids, past, Some(&mut cache))?;
            let logits = self.logits(&h.i(t - 1..t)?)?;
            let next = logits.argmax(1)?.to_vec1::<u32>()?[0];
            out.push(next);
            past += t;
            if stop.contains(&next) {
                break;
            }
            input = vec![next];
        }
        Ok(out)
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
            dtype: "f32".into(),
        }
    }
}

/// Loads a GPT-2 from a config file and its safetensors weights.
pub fn load(config: &Path, weights: &[PathBuf]) -> Result<Gpt2> {
    let text = std::fs::read_to_string(config)
        .map_err(|e| Error::Model(format!("cannot read {}: {e}", config.display())))?;
    let cfg = Config::from_json(&text, &config.display().to_string())?;
    Gpt2::load(cfg, weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeding a sequence in chunks through the KV cache (masks with a past) gives the hidden
    /// states of one full pass.
    #[test]
    fn chunked_cache_equals_full_pass() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt2");
        let m = load(&dir.join("config.json"), &[dir.join("model.safetensors")]).unwrap();
        let ids: Vec<u32> = (0..15).map(|i| 100 + 37 * i).collect();
        let full = m
            .forward(
                &Tensor::new(ids.as_slice(), &m.device)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap(),
                0,
                None,
            )
            .unwrap();
        let mut cache: Vec<KvCache> = (0..2).map(|_| KvCache::new(2, 128)).collect();
        let mut parts = Vec::new();
        for (start, end) in [(0, 10), (10, 11), (11, 15)] {
            let chunk = Tensor::new(&ids[start..end], &m.device)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            parts.push(m.forward(&chunk, start, Some(&mut cache)).unwrap());
        }
        let chunked = Tensor::cat(&parts, 0).unwrap();
        let diff = ops::max_abs_diff(&full, &chunked);
        assert!(diff < 1e-4, "max difference {diff}");
        // Past the context length: an error, not a panic.
        let over = Tensor::new(&[1u32, 2], &m.device).unwrap().unsqueeze(0).unwrap();
        assert!(m.forward(&over, 127, None).is_err());
    }

    /// Computing the last block for selected rows only gives those rows of the full pass.
    #[test]
    fn hidden_rows_equals_picking_from_hidden() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt2");
        let m = load(&dir.join("config.json"), &[dir.join("model.safetensors")]).unwrap();
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
