//! llama.cpp's tensor names mapped to Hugging Face's, and the GGUF tensors served under the
//! latter to a `VarBuilder`, dequantized.

use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

use crate::model::Family;

use super::Gguf;

/// Hugging Face tensor names -> llama.cpp's, for the parts inside `model.layers.N.`.
const LAYER_NAMES: &[(&str, &str)] = &[
    ("input_layernorm", "attn_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.qkv_proj", "attn_qkv"),
    ("self_attn.o_proj", "attn_output"),
    ("self_attn.q_norm", "attn_q_norm"),
    ("self_attn.k_norm", "attn_k_norm"),
    ("pre_feedforward_layernorm", "ffn_norm"),
    ("post_feedforward_layernorm", "post_ffw_norm"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.gate_up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// The llama.cpp name of a Hugging Face tensor name.
fn gguf_name(family: Family, hf: &str) -> Option<String> {
    let (stem, kind) = hf.rsplit_once('.')?;
    let name = match stem {
        "model.embed_tokens" => "token_embd".to_string(),
        "model.norm" => "output_norm".to_string(),
        "lm_head" => "output".to_string(),
        _ => {
            let (i, part) = stem.strip_prefix("model.layers.")?.split_once('.')?;
            let g = match part {
                // Gemma 2 norms the attention output; the others norm the MLP input here.
                "post_attention_layernorm" if family == Family::Gemma2 => "post_attention_norm",
                "post_attention_layernorm" => "ffn_norm",
                _ => LAYER_NAMES.iter().find(|(h, _)| *h == part)?.1,
            };
            format!("blk.{i}.{g}")
        }
    };
    Some(format!("{name}.{kind}"))
}

/// GGUF tensors under Hugging Face's names, dequantized to the requested dtype and device.
pub(super) struct GgufWeights {
    file: Mutex<Gguf>,
    family: Family,
}

impl GgufWeights {
    pub(super) fn new(file: Gguf, family: Family) -> Self {
        GgufWeights {
            file: Mutex::new(file),
            family,
        }
    }
}

impl SimpleBackend for GgufWeights {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &shape {
            candle_core::bail!(
                "tensor {name} has shape {:?}, expected {:?}",
                t.dims(),
                shape.dims()
            );
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let Some(gguf) = gguf_name(self.family, name) else {
            candle_core::bail!("no GGUF tensor corresponds to {name}");
        };
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if !file.has_tensor(&gguf) {
            candle_core::bail!("cannot find tensor {gguf} (for {name})");
        }
        let t = file
            .tensor(&gguf, None, dev)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        // llama.cpp stores Gemma's norm weights as 1 + w; the decoder adds the 1 itself.
        let t = if self.family == Family::Gemma2 && name.ends_with("norm.weight") {
            (t - 1.0)?
        } else {
            t
        };
        t.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        let file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        gguf_name(self.family, name).is_some_and(|g| file.has_tensor(&g))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_cpp_names() {
        let n = |f, hf| gguf_name(f, hf).unwrap();
        assert_eq!(
            n(Family::Llama, "model.layers.3.self_attn.q_proj.weight"),
            "blk.3.attn_q.weight"
        );
        assert_eq!(
            n(Family::Llama, "model.layers.0.post_attention_layernorm.weight"),
            "blk.0.ffn_norm.weight"
        );
        assert_eq!(
            n(Family::Gemma2, "model.layers.0.post_attention_layernorm.weight"),
            "blk.0.post_attention_norm.weight"
        );
        assert_eq!(
            n(Family::Phi3, "model.layers.1.mlp.gate_up_proj.weight"),
            "blk.1.ffn_up.weight"
        );
        assert_eq!(
            n(Family::Qwen2, "model.layers.1.self_attn.k_proj.bias"),
            "blk.1.attn_k.bias"
        );
        assert_eq!(n(Family::Llama, "lm_head.weight"), "output.weight");
        assert!(gguf_name(Family::Llama, "model.layers.0.mystery.weight").is_none());
    }
}
