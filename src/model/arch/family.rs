//! The one registry of model families: which config.json `model_type` and which GGUF
//! `general.architecture` name each one, what sets the family apart from plain Llama, and the
//! constructor of its architecture. A new architecture is one file in `arch/` and one entry here.

use candle_nn::VarBuilder;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::arch::{decoder, gpt2, Architecture};
use crate::model::load::Mapped;

/// A model's opened weights: a `VarBuilder`, and the memory-mapped safetensors behind it where
/// that is what they are (the decoder reads its matrices from them directly).
pub(crate) struct Opened {
    /// Every tensor, in the model's dtype on its device.
    pub vb: VarBuilder<'static>,
    /// The safetensors files, when the weights are those.
    pub mapped: Option<Mapped>,
}

/// Opens the weights, once the config has been checked.
pub(crate) type Weights<'a> = &'a dyn Fn() -> Result<Opened>;

/// Builds a family's architecture from its config.json (`origin` names the file in errors) and
/// its weights.
pub(crate) type Build = fn(Family, &Value, &str, Weights) -> Result<Box<dyn Architecture>>;

/// A model family this crate runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// GPT-2 (`gpt2`): learned positions, LayerNorm, not a Llama-style decoder.
    Gpt2,
    /// Llama (`llama`), the reference decoder the others depart from.
    Llama,
    /// Mistral (`mistral`).
    Mistral,
    /// Qwen2 (`qwen2`).
    Qwen2,
    /// Qwen3 (`qwen3`).
    Qwen3,
    /// Phi-3 (`phi3`).
    Phi3,
    /// Gemma 2 (`gemma2`).
    Gemma2,
}

/// Biases of the attention projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttentionBias {
    /// Q, K and V have biases, the output projection has none (Qwen2).
    Qkv,
    /// All four have biases when config.json says `attention_bias: true` (Llama, Qwen3, Gemma 2).
    FromConfig,
    /// Never.
    None,
}

/// Which layers attend within a sliding window, when the config has none of `layer_types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WindowLayers {
    None,
    /// Every layer, when `sliding_window` is set (Mistral, Phi-3).
    All,
    /// Layers from `max_window_layers` on, when `use_sliding_window` is true (Qwen2, Qwen3).
    FromMaxWindowIndex,
    /// Even layers (Gemma 2).
    Even,
}

/// How a decoder family departs from Llama.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Traits {
    pub bias: AttentionBias,
    /// RMSNorm of each query and key head before RoPE (Qwen3).
    pub qk_norm: bool,
    /// Q, K, V stored as one `qkv_proj` and gate, up as one `gate_up_proj` (Phi-3).
    pub fused_projections: bool,
    /// Gemma's changes: embeddings × √hidden, RMSNorm scaled by (1 + w), norms after attention
    /// and MLP too, soft-capped attention and logits, `query_pre_attn_scalar`.
    pub gemma: bool,
    pub windows: WindowLayers,
    /// `tie_word_embeddings` when config.json does not say.
    pub tied_by_default: bool,
    /// `hidden_act` when config.json does not say.
    pub default_activation: &'static str,
}

/// One row of the family registry: how a family is recognised and built.
pub struct Entry {
    /// The family this row describes.
    pub family: Family,
    /// The name in `ArchInfo` and errors.
    pub name: &'static str,
    /// config.json `model_type` values.
    pub model_types: &'static [&'static str],
    /// GGUF `general.architecture`, where GGUF defines the family.
    pub gguf: Option<&'static str>,
    /// `None` for GPT-2, which is not a Llama-style decoder.
    pub(crate) traits: Option<Traits>,
    /// The architecture's constructor.
    pub(crate) build: Build,
}

const LLAMA: Traits = Traits {
    bias: AttentionBias::FromConfig,
    qk_norm: false,
    fused_projections: false,
    gemma: false,
    windows: WindowLayers::None,
    tied_by_default: false,
    default_activation: "silu",
};

pub(crate) const REGISTRY: &[Entry] = &[
    Entry {
        family: Family::Gpt2,
        name: "gpt2",
        model_types: &["gpt2"],
        gguf: None,
        traits: None,
        build: gpt2::from_hf,
    },
    Entry {
        family: Family::Llama,
        name: "llama",
        model_types: &["llama"],
        gguf: Some("llama"),
        traits: Some(LLAMA),
        build: decoder::from_hf,
    },
    Entry {
        family: Family::Mistral,
        name: "mistral",
        model_types: &["mistral"],
        // llama.cpp stores Mistral 7B as `llama`.
        gguf: None,
        traits: Some(Traits {
            bias: AttentionBias::None,
            windows: WindowLayers::All,
            ..LLAMA
        }),
        build: decoder::from_hf,
    },
    Entry {
        family: Family::Qwen2,
        name: "qwen2",
        model_types: &["qwen2"],
        gguf: Some("qwen2"),
        traits: Some(Traits {
            bias: AttentionBias::Qkv,
            windows: WindowLayers::FromMaxWindowIndex,
            ..LLAMA
        }),
        build: decoder::from_hf,
    },
    Entry {
        family: Family::Qwen3,
        name: "qwen3",
        model_types: &["qwen3"],
        gguf: Some("qwen3"),
        traits: Some(Traits {
            qk_norm: true,
            windows: WindowLayers::FromMaxWindowIndex,
            ..LLAMA
        }),
        build: decoder::from_hf,
    },
    Entry {
        family: Family::Phi3,
        name: "phi3",
        model_types: &["phi3"],
        gguf: Some("phi3"),
        traits: Some(Traits {
            bias: AttentionBias::None,
            fused_projections: true,
            windows: WindowLayers::All,
            ..LLAMA
        }),
        build: decoder::from_hf,
    },
    Entry {
        family: Family::Gemma2,
        name: "gemma2",
        model_types: &["gemma2"],
        gguf: Some("gemma2"),
        traits: Some(Traits {
            gemma: true,
            windows: WindowLayers::Even,
            tied_by_default: true,
            default_activation: "gelu_pytorch_tanh",
            ..LLAMA
        }),
        build: decoder::from_hf,
    },
];

// Compile-time proof that `REGISTRY[f as usize]` is `f`'s entry for every family: the
// registry has one entry per variant, in the enum's order (a new family goes last in both, and
// names itself in the length check).
const _: () = {
    assert!(REGISTRY.len() == Family::Gemma2 as usize + 1);
    let mut i = 0;
    while i < REGISTRY.len() {
        assert!(REGISTRY[i].family as usize == i);
        i += 1;
    }
};

impl Family {
    /// The family's registry entry. `REGISTRY` lists the families in their declared order,
    /// which the constant check above proves when the crate compiles.
    pub fn entry(self) -> &'static Entry {
        &REGISTRY[self as usize]
    }

    /// The family's name, as in `ArchInfo` and errors.
    pub fn name(self) -> &'static str {
        self.entry().name
    }

    /// The family of a config.json `model_type`.
    pub fn from_model_type(model_type: &str) -> Result<Family> {
        REGISTRY
            .iter()
            .find(|e| e.model_types.contains(&model_type))
            .map(|e| e.family)
            .ok_or_else(|| {
                let supported: Vec<&str> = REGISTRY
                    .iter()
                    .flat_map(|e| e.model_types.iter().copied())
                    .collect();
                Error::Model(format!(
                    "unsupported model_type `{model_type}` (supported: {})",
                    supported.join(", ")
                ))
            })
    }

    /// The family of a GGUF `general.architecture`.
    pub(crate) fn from_gguf(architecture: &str) -> Result<Family> {
        REGISTRY
            .iter()
            .find(|e| e.gguf == Some(architecture))
            .map(|e| e.family)
            .ok_or_else(|| {
                let supported: Vec<&str> = REGISTRY.iter().filter_map(|e| e.gguf).collect();
                Error::Model(format!(
                    "unsupported architecture `{architecture}` (supported in GGUF: {})",
                    supported.join(", ")
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways_and_unknown_ones_list_the_supported() {
        for e in REGISTRY {
            for t in e.model_types {
                assert_eq!(Family::from_model_type(t).unwrap(), e.family);
            }
            if let Some(g) = e.gguf {
                assert_eq!(Family::from_gguf(g).unwrap(), e.family);
            }
        }
        let e = Family::from_model_type("mamba").unwrap_err().to_string();
        assert!(
            e.contains("`mamba`") && e.contains("qwen3") && e.contains("gemma2"),
            "{e}"
        );
        let e = Family::from_gguf("mamba").unwrap_err().to_string();
        assert!(e.contains("llama, qwen2, qwen3, phi3, gemma2"), "{e}");
    }
}
