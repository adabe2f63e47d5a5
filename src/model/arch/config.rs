//! The decoder's configuration, read from a Hugging Face config.json in either form seen in the
//! wild: the classic one (`rope_theta`, `rope_scaling`, `torch_dtype`) and transformers 5's
//! (`rope_parameters`, `dtype`). GGUF metadata is read into the same struct in `load/gguf/config.rs`.

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::arch::family::{AttentionBias, Family, Traits, WindowLayers};
use crate::model::kernels::{Activation, RopeStyle};

/// How the RoPE frequencies are rescaled for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// The frequencies as the base gives them.
    None,
    /// Every frequency divided by `factor` (`linear`).
    Linear(f64),
    /// Llama 3.1's band-wise rescaling (`llama3`).
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f64,
        /// Wavelengths longer than `original_max_position_embeddings / low_freq_factor` are divided
        /// by `factor`.
        low_freq_factor: f64,
        /// Wavelengths shorter than `original_max_position_embeddings / high_freq_factor` are kept;
        /// those between are interpolated.
        high_freq_factor: f64,
        /// The context length the model was trained with.
        original_max_position_embeddings: f64,
    },
    /// One divisor per frequency (GGUF's `rope_freqs` tensor, Llama 3's rescaling precomputed).
    Divisors(Vec<f32>),
}

/// Rotary position embedding: its base, its long-context scaling and its layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    /// Base of the frequencies (`rope_theta`).
    pub theta: f64,
    /// How the frequencies are rescaled for long contexts.
    pub scaling: RopeScaling,
    pub(crate) style: RopeStyle,
}

impl Rope {
    /// The inverse frequencies of a head of `head_dim`, in f32 as PyTorch computes them.
    pub fn inverse_frequencies(&self, head_dim: usize) -> Vec<f32> {
        let half = head_dim / 2;
        (0..half)
            .map(|i| {
                let f = 1.0 / (self.theta as f32).powf((2 * i) as f32 / head_dim as f32);
                match &self.scaling {
                    RopeScaling::None => f,
                    RopeScaling::Linear(factor) => f / *factor as f32,
                    RopeScaling::Divisors(d) => f / d[i],
                    RopeScaling::Llama3 {
                        factor,
                        low_freq_factor: low,
                        high_freq_factor: high,
                        original_max_position_embeddings: orig,
                    } => {
                        let (factor, low, high, orig) =
                            (*factor as f32, *low as f32, *high as f32, *orig as f32);
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen < orig / high {
                            f
                        } else if wavelen > orig / low {
                            f / factor
                        } else {
                            let smooth = (orig / wavelen - low) / (high - low);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    }
                }
            })
            .collect()
    }
}

/// Everything the decoder needs to know about one model's shape and family.
#[derive(Debug, Clone)]
pub struct DecoderConfig {
    /// The family (Llama, Qwen2, Gemma 2, ...).
    pub family: Family,
    /// Tokens in the vocabulary.
    pub vocab: usize,
    /// Width of the hidden states.
    pub hidden: usize,
    /// Width of the MLP's inner layer (`intermediate_size`).
    pub ffn: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Query heads per layer.
    pub heads: usize,
    /// Key and value heads per layer (fewer than `heads` with grouped-query attention).
    pub kv_heads: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// Positions the model was trained for (`max_position_embeddings`).
    pub context: usize,
    /// Epsilon of the RMSNorms.
    pub eps: f64,
    /// Rotary position embedding.
    pub rope: Rope,
    /// The LM head reuses the embedding matrix.
    pub tied: bool,
    /// The Q, K and V projections have biases.
    pub qkv_bias: bool,
    /// The attention output projection has a bias.
    pub o_bias: bool,
    /// RMSNorm of each query and key head before RoPE (Qwen3).
    pub qk_norm: bool,
    /// Q, K, V stored as one `qkv_proj`, and gate, up as one `gate_up_proj` (Phi-3).
    pub fused_projections: bool,
    /// The MLP's activation.
    pub activation: Activation,
    /// Gemma: embeddings × √hidden, norms (1 + w), post-norms, soft-caps.
    pub gemma: bool,
    /// Gemma: attention scores soft-capped at this value; None: no cap.
    pub attn_softcap: Option<f64>,
    /// Gemma: logits soft-capped at this value; None: no cap.
    pub final_softcap: Option<f64>,
    /// Multiplies the attention scores: 1/√head_dim, or 1/√query_pre_attn_scalar.
    pub query_scale: f64,
    /// Each layer's sliding window (keys less than this many positions back), or `None`.
    pub windows: Vec<Option<usize>>,
    /// The data type the weights are stored in, as the config says (informational).
    pub stored_dtype: Option<String>,
}

/// The config.json fields any decoder family may use.
#[derive(Debug, Deserialize)]
struct HfConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    partial_rotary_factor: Option<f64>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    hidden_activation: Option<String>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    max_window_layers: Option<usize>,
    layer_types: Option<Vec<String>>,
    attn_logit_softcapping: Option<f64>,
    final_logit_softcapping: Option<f64>,
    query_pre_attn_scalar: Option<f64>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
}

fn default_eps() -> f64 {
    1e-6
}

/// The config.json options this crate does not implement, refused by name.
fn refuse_unsupported(c: &HfConfig) -> std::result::Result<(), String> {
    if c.mlp_bias == Some(true) {
        return Err("mlp_bias is not supported".into());
    }
    if let Some(p) = c.partial_rotary_factor.filter(|&p| p != 1.0) {
        return Err(format!(
            "partial rotary embeddings (partial_rotary_factor {p}) are not supported"
        ));
    }
    Ok(())
}

/// `hidden_activation` (Gemma) or `hidden_act`, else the family's default.
fn activation(c: &HfConfig, traits: Traits) -> std::result::Result<Activation, String> {
    let name = c
        .hidden_activation
        .as_deref()
        .or(c.hidden_act.as_deref())
        .unwrap_or(traits.default_activation);
    Activation::from_name(name).ok_or_else(|| {
        format!("unsupported hidden_act `{name}` (supported: silu, gelu_pytorch_tanh, gelu_new, gelu)")
    })
}

impl DecoderConfig {
    /// Reads a decoder family's config.json; `origin` names the file in errors.
    pub fn from_hf(family: Family, json: &Value, origin: &str) -> Result<Self> {
        let bad = |m: String| Error::Model(format!("{origin}: {m}"));
        let traits = traits(family)?;
        let c = HfConfig::deserialize(json)
            .map_err(|e| bad(format!("not a valid {} config: {e}", family.name())))?;
        refuse_unsupported(&c).map_err(bad)?;
        let (theta, scaling) = rope_from_json(&c).map_err(bad)?;
        let activation = activation(&c, traits).map_err(bad)?;
        let heads = c.num_attention_heads;
        let head_dim = c
            .head_dim
            .unwrap_or(c.hidden_size.checked_div(heads).unwrap_or(0));
        let attention_bias = c.attention_bias.unwrap_or(false);
        let (qkv_bias, o_bias) = match traits.bias {
            AttentionBias::Qkv => (true, false),
            AttentionBias::FromConfig => (attention_bias, attention_bias),
            AttentionBias::None => (false, false),
        };
        let windows = layer_windows(&c, traits).map_err(bad)?;
        let query_scale = 1.0
            / c.query_pre_attn_scalar
                .filter(|_| traits.gemma)
                .unwrap_or(head_dim as f64)
                .sqrt();
        let cfg = DecoderConfig {
            family,
            vocab: c.vocab_size,
            hidden: c.hidden_size,
            ffn: c.intermediate_size,
            layers: c.num_hidden_layers,
            heads,
            kv_heads: c.num_key_value_heads.unwrap_or(heads),
            head_dim,
            context: c.max_position_embeddings,
            eps: c.rms_norm_eps,
            rope: Rope {
                theta,
                scaling,
                style: RopeStyle::Half,
            },
            tied: c.tie_word_embeddings.unwrap_or(traits.tied_by_default),
            qkv_bias,
            o_bias,
            qk_norm: traits.qk_norm,
            fused_projections: traits.fused_projections,
            activation,
            gemma: traits.gemma,
            attn_softcap: c.attn_logit_softcapping.filter(|_| traits.gemma),
            final_softcap: c.final_logit_softcapping.filter(|_| traits.gemma),
            query_scale,
            windows,
            stored_dtype: c.dtype.or(c.torch_dtype),
        };
        cfg.validate().map_err(bad)?;
        Ok(cfg)
    }

    /// Checks shapes and constants; the message says what is wrong.
    pub(crate) fn validate(&self) -> std::result::Result<(), String> {
        for (name, v) in [
            ("vocab_size", self.vocab),
            ("hidden_size", self.hidden),
            ("intermediate_size", self.ffn),
            ("num_hidden_layers", self.layers),
            ("num_attention_heads", self.heads),
            ("num_key_value_heads", self.kv_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.context),
        ] {
            if v == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(format!(
                "{} attention heads cannot share {} key/value heads",
                self.heads, self.kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!("head_dim {} is odd; RoPE needs pairs", self.head_dim));
        }
        if self.vocab > u32::MAX as usize || self.context > 1 << 24 {
            return Err(format!(
                "vocabulary {} or context {} out of range",
                self.vocab, self.context
            ));
        }
        if !(self.eps > 0.0 && self.rope.theta > 0.0) {
            return Err("the RMS epsilon and the RoPE base must be positive".into());
        }
        if let RopeScaling::Divisors(d) = &self.rope.scaling {
            if d.len() != self.head_dim / 2 {
                return Err(format!(
                    "{} RoPE divisors for a head of {}",
                    d.len(),
                    self.head_dim
                ));
            }
        }
        if self.windows.len() != self.layers {
            return Err(format!(
                "{} layer types for {} layers",
                self.windows.len(),
                self.layers
            ));
        }
        Ok(())
    }
}

pub(crate) fn traits(family: Family) -> Result<Traits> {
    family
        .entry()
        .traits
        .ok_or_else(|| Error::Internal(format!("{} is not a Llama-style decoder", family.name())))
}

/// RoPE base and scaling from `rope_parameters` (transformers 5), or `rope_theta` and
/// `rope_scaling` (classic).
fn rope_from_json(c: &HfConfig) -> std::result::Result<(f64, RopeScaling), String> {
    let (params, theta, field) = match &c.rope_parameters {
        Some(p) => {
            let p = single_rope_parameters(p)?;
            let theta = p.get("rope_theta").and_then(Value::as_f64).or(c.rope_theta);
            (Some(p.clone()), theta, "rope_parameters")
        }
        None => (
            c.rope_scaling.clone().filter(|s| !s.is_null()),
            c.rope_theta,
            "rope_scaling",
        ),
    };
    let theta = theta.unwrap_or(10_000.0);
    let Some(p) = params else {
        return Ok((theta, RopeScaling::None));
    };
    let kind = p
        .get("rope_type")
        .or_else(|| p.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |k: &str| {
        p.get(k)
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("{field} of type `{kind}` needs a number `{k}`"))
    };
    let scaling = match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear(num("factor")?),
        "llama3" => RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        },
        other => {
            return Err(format!(
                "unsupported {field} type `{other}` (supported: default, linear, llama3)"
            ))
        }
    };
    Ok((theta, scaling))
}

/// transformers 5 may key `rope_parameters` by layer type; the decoder has one RoPE for all.
fn single_rope_parameters(p: &Value) -> std::result::Result<&Value, String> {
    let by_layer: Vec<&Value> = ["full_attention", "sliding_attention"]
        .iter()
        .filter_map(|k| p.get(*k))
        .collect();
    match by_layer.as_slice() {
        [] => Ok(p),
        [one] => Ok(one),
        [a, b] if a == b => Ok(a),
        _ => Err(
            "rope_parameters that differ between full and sliding attention layers are not supported".into(),
        ),
    }
}

fn layer_windows(c: &HfConfig, traits: Traits) -> std::result::Result<Vec<Option<usize>>, String> {
    let n = c.num_hidden_layers;
    let window = match traits.windows {
        WindowLayers::FromMaxWindowIndex if c.use_sliding_window != Some(true) => None,
        _ => c.sliding_window,
    };
    let Some(window) = window.filter(|&w| w > 0) else {
        return Ok(vec![None; n]);
    };
    if let Some(types) = &c.layer_types {
        if types.len() != n {
            return Err(format!("layer_types has {} entries for {n} layers", types.len()));
        }
        return types
            .iter()
            .map(|t| match t.as_str() {
                "full_attention" => Ok(None),
                "sliding_attention" => Ok(Some(window)),
                other => Err(format!("unsupported layer type `{other}` in layer_types")),
            })
            .collect();
    }
    Ok((0..n)
        .map(|i| {
            let sliding = match traits.windows {
                WindowLayers::None => false,
                WindowLayers::All => true,
                WindowLayers::FromMaxWindowIndex => i >= c.max_window_layers.unwrap_or(0),
                WindowLayers::Even => i % 2 == 0,
            };
            sliding.then_some(window)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({"model_type": "llama", "vocab_size": 100, "hidden_size": 16, "intermediate_size": 32,
               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
               "max_position_embeddings": 64, "rms_norm_eps": 1e-5})
    }

    fn with(extra: Value) -> Value {
        let mut v = base();
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    }

    #[test]
    fn both_config_forms_give_the_same_rope() {
        let classic = with(json!({"rope_theta": 500000.0, "torch_dtype": "bfloat16",
            "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}));
        let v5 = with(json!({"dtype": "bfloat16",
            "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}));
        let a = DecoderConfig::from_hf(Family::Llama, &classic, "c").unwrap();
        let b = DecoderConfig::from_hf(Family::Llama, &v5, "c").unwrap();
        assert_eq!(a.rope, b.rope);
        assert_eq!(a.rope.theta, 500000.0);
        assert_eq!(a.stored_dtype.as_deref(), Some("bfloat16"));
        assert_eq!(b.stored_dtype.as_deref(), Some("bfloat16"));
        assert!(matches!(a.rope.scaling, RopeScaling::Llama3 { .. }));
        let linear = with(json!({"rope_scaling": {"type": "linear", "factor": 2.0}}));
        let c = DecoderConfig::from_hf(Family::Llama, &linear, "c").unwrap();
        let plain = DecoderConfig::from_hf(Family::Llama, &base(), "c").unwrap();
        let (fs, fp) = (c.rope.inverse_frequencies(4), plain.rope.inverse_frequencies(4));
        assert_eq!(fs[1] * 2.0, fp[1]);
    }

    #[test]
    fn unsupported_rope_scaling_is_named() {
        let e = DecoderConfig::from_hf(
            Family::Llama,
            &with(json!({"rope_scaling": {"type": "yarn", "factor": 4.0}})),
            "config.json",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("config.json") && e.contains("`yarn`") && e.contains("rope_scaling"),
            "{e}"
        );
        let e = DecoderConfig::from_hf(
            Family::Llama,
            &with(json!({"rope_parameters": {"rope_type": "dynamic", "factor": 4.0}})),
            "c",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("rope_parameters type `dynamic`"), "{e}");
    }

    #[test]
    fn family_options() {
        let q2 = DecoderConfig::from_hf(Family::Qwen2, &base(), "c").unwrap();
        assert!(q2.qkv_bias && !q2.o_bias && !q2.tied);
        let g = with(
            json!({"head_dim": 8, "query_pre_attn_scalar": 16, "sliding_window": 4,
                            "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}),
        );
        let g = DecoderConfig::from_hf(Family::Gemma2, &g, "c").unwrap();
        assert!(g.gemma && g.tied && g.activation == Activation::GeluTanh);
        assert_eq!(g.windows, vec![Some(4), None]);
        assert_eq!((g.query_scale, g.head_dim, g.attn_softcap), (0.25, 8, Some(50.0)));
        let m = DecoderConfig::from_hf(Family::Mistral, &with(json!({"sliding_window": 4})), "c").unwrap();
        assert_eq!(m.windows, vec![Some(4), Some(4)]);
        let q = with(json!({"sliding_window": 4, "use_sliding_window": false}));
        assert_eq!(
            DecoderConfig::from_hf(Family::Qwen3, &q, "c").unwrap().windows,
            vec![None, None]
        );
        let bad = DecoderConfig::from_hf(Family::Llama, &with(json!({"num_key_value_heads": 3})), "c");
        assert!(bad.unwrap_err().to_string().contains("cannot share"));
    }
}
