//! GGUF files: header checks, metadata, tensors (dequantized at load), the decoder config and
//! tokenizer built from the metadata, and the llama.cpp tensor names mapped to Hugging Face's.
//!
//! candle's GGUF reader trusts the lengths it reads (a garbage string length becomes a huge
//! allocation), so `open` first walks the header with every length checked against the file
//! size, and checks that every tensor's bytes lie inside the file.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::{Error, Result};
use crate::model::config::{traits, DecoderConfig, Rope, RopeScaling, RopeStyle};
use crate::model::decoder::Decoder;
use crate::model::family::WindowLayers;
use crate::model::ops::Activation;
use crate::model::tokenizer::{set_bos_eos, SpecialTokens};
use crate::model::{Family, LoadOptions, Model, Tokenizer};

/// Loads a `.gguf` model: the family named by `general.architecture` and its tokenizer.
pub fn load(path: &Path, spec: &str, options: &LoadOptions) -> Result<Model> {
    let mut file = Gguf::open(path)?;
    let family = Family::from_gguf(file.str("general.architecture")?).map_err(|e| file.error(e))?;
    let tokenizer = tokenizer(&file)?;
    let cfg = decoder_config(&mut file, family)?;
    let vb = VarBuilder::from_backend(
        Box::new(GgufWeights {
            file: Mutex::new(file),
            family,
        }),
        options.dtype(),
        options.device.clone(),
    );
    let arch = Decoder::load(cfg, vb).map_err(|e| Error::Model(format!("{}: {e}", path.display())))?;
    let vocab = arch.config().vocab;
    if tokenizer.vocab_size() > vocab {
        return Err(Error::Model(format!(
            "{}: the tokenizer has {} tokens but the model only {vocab} embeddings",
            path.display(),
            tokenizer.vocab_size()
        )));
    }
    Ok(Model::new(Box::new(arch), tokenizer, spec))
}

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
struct GgufWeights {
    file: Mutex<Gguf>,
    family: Family,
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

/// An open GGUF file whose header has been checked.
pub struct Gguf {
    path: PathBuf,
    reader: BufReader<File>,
    content: Content,
}

impl Gguf {
    pub fn open(path: &Path) -> Result<Self> {
        let fail = |m: String| Error::Model(format!("{}: {m}", path.display()));
        let file = File::open(path).map_err(|e| fail(format!("cannot open: {e}")))?;
        let meta = file.metadata().map_err(|e| fail(format!("cannot read: {e}")))?;
        if meta.is_dir() {
            return Err(fail("is a directory, not a GGUF file".into()));
        }
        let len = meta.len();
        let mut reader = BufReader::new(file);
        Scan::new(&mut reader, len)
            .header()
            .map_err(|m| fail(format!("not a valid GGUF file: {m}")))?;
        reader
            .seek(SeekFrom::Start(0))
            .map_err(|e| fail(format!("cannot read: {e}")))?;
        let content = Content::read(&mut reader).map_err(|e| fail(format!("not a valid GGUF file: {e}")))?;
        for (name, info) in &content.tensor_infos {
            let elems = info.shape.elem_count();
            let block = info.ggml_dtype.block_size();
            if elems % block != 0 {
                return Err(fail(format!(
                    "tensor {name}: {elems} elements is not a multiple of the block size {block}"
                )));
            }
            let end = (elems / block)
                .checked_mul(info.ggml_dtype.type_size())
                .and_then(|n| (n as u64).checked_add(info.offset))
                .and_then(|n| n.checked_add(content.tensor_data_offset));
            match end {
                Some(end) if end <= len => {}
                _ => {
                    return Err(fail(format!(
                        "the file is truncated: tensor {name} lies beyond its {len} bytes"
                    )))
                }
            }
        }
        Ok(Gguf {
            path: path.to_path_buf(),
            reader,
            content,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An `Error::Model` naming the file.
    pub fn error(&self, message: impl std::fmt::Display) -> Error {
        Error::Model(format!("{}: {message}", self.path.display()))
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn need(&self, key: &str) -> Result<&Value> {
        self.get(key)
            .ok_or_else(|| self.error(format!("metadata key `{key}` is missing")))
    }

    /// A non-negative integer of any integer type.
    pub fn usize(&self, key: &str) -> Result<usize> {
        let v = self.need(key)?;
        let n = match v {
            Value::U8(x) => Some(*x as u64),
            Value::U16(x) => Some(*x as u64),
            Value::U32(x) => Some(*x as u64),
            Value::U64(x) => Some(*x),
            Value::I8(x) => u64::try_from(*x).ok(),
            Value::I16(x) => u64::try_from(*x).ok(),
            Value::I32(x) => u64::try_from(*x).ok(),
            Value::I64(x) => u64::try_from(*x).ok(),
            _ => None,
        };
        n.and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| self.error(format!("metadata `{key}` is not a non-negative integer")))
    }

    pub fn f64(&self, key: &str) -> Result<f64> {
        match self.need(key)? {
            Value::F32(x) => Ok(*x as f64),
            Value::F64(x) => Ok(*x),
            _ => self
                .usize(key)
                .map(|n| n as f64)
                .map_err(|_| self.error(format!("metadata `{key}` is not a number"))),
        }
    }

    pub fn str(&self, key: &str) -> Result<&str> {
        match self.need(key)? {
            Value::String(s) => Ok(s),
            _ => Err(self.error(format!("metadata `{key}` is not a string"))),
        }
    }

    pub fn array(&self, key: &str) -> Result<&[Value]> {
        match self.need(key)? {
            Value::Array(a) => Ok(a),
            _ => Err(self.error(format!("metadata `{key}` is not an array"))),
        }
    }

    /// Shape of a stored tensor (candle order: outermost first).
    pub fn tensor_shape(&self, name: &str) -> Option<&[usize]> {
        self.content.tensor_infos.get(name).map(|i| i.shape.dims())
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// A tensor as stored (possibly quantized) on `device`; `shape` is checked when given.
    pub fn qtensor(&mut self, name: &str, shape: Option<&[usize]>, device: &Device) -> Result<QTensor> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| self.error(format!("tensor `{name}` is missing")))?;
        if let Some(shape) = shape {
            if info.shape.dims() != shape {
                return Err(self.error(format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?}",
                    info.shape.dims()
                )));
            }
        }
        let t = info
            .read(&mut self.reader, self.content.tensor_data_offset, device)
            .map_err(|e| self.error(format!("cannot read tensor `{name}`: {e}")))?;
        Ok(t)
    }

    /// A tensor dequantized to f32 on `device`.
    pub fn tensor(&mut self, name: &str, shape: Option<&[usize]>, device: &Device) -> Result<Tensor> {
        let q = self.qtensor(name, shape, device)?;
        q.dequantize(device)
            .map_err(|e| self.error(format!("cannot dequantize tensor `{name}`: {e}")))
    }

    /// A small tensor's values, read on the host (they configure the model, they are not
    /// weights).
    pub fn f32_values(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.tensor(name, Some(shape), &Device::Cpu)?;
        t.flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| self.error(format!("tensor `{name}`: {e}")))
    }
}

/// The tokenizer from `tokenizer.ggml.*`: byte-level BPE (`gpt2`) or SentencePiece (`llama`),
/// with its special tokens, BOS as `add_bos_token` says, and the chat template.
pub fn tokenizer(file: &Gguf) -> Result<Tokenizer> {
    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    let types: Vec<usize> = match file.get("tokenizer.ggml.token_type") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                Value::I32(x) => *x as usize,
                Value::U32(x) => *x as usize,
                _ => 1,
            })
            .collect(),
        _ => vec![1; tokens.len()],
    };
    let model = file.str("tokenizer.ggml.model")?;
    let (mut inner, bos_default) = match model {
        "gpt2" => (byte_level_bpe(file, &tokens)?, false),
        "llama" => (sentencepiece(file, &tokens)?, true),
        other => {
            return Err(file.error(format!(
            "unsupported tokenizer model `{other}` (supported: gpt2 (byte-level BPE), llama (SentencePiece))"
        )))
        }
    };
    // Control tokens (type 3) are special; user-defined ones (type 4) are matched as written.
    inner.add_special_tokens(&added(&tokens, &types, 3, true));
    inner.add_tokens(&added(&tokens, &types, 4, false));

    let id = |key: &str| file.get(key).map(|_| file.usize(key)).transpose();
    let text = |id: Option<usize>| id.and_then(|i| tokens.get(i)).map(|t| t.to_string());
    let (bos_id, eos_id) = (
        id("tokenizer.ggml.bos_token_id")?,
        id("tokenizer.ggml.eos_token_id")?,
    );
    let flag = |key: &str, default: bool| match file.get(key) {
        Some(Value::Bool(b)) => *b,
        _ => default,
    };
    let bos = text(bos_id);
    let add_bos = flag("tokenizer.ggml.add_bos_token", bos_default)
        .then_some(bos.as_deref())
        .flatten();
    let add_eos = flag("tokenizer.ggml.add_eos_token", false)
        .then(|| text(eos_id))
        .flatten();
    if add_bos.is_some() || add_eos.is_some() {
        set_bos_eos(&mut inner, add_bos, add_eos.as_deref())?;
    }

    let mut eos = Vec::new();
    for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
        eos.extend(id(key)?.map(|i| i as u32));
    }
    if let Some(i) = tokens.iter().position(|t| *t == "<|im_end|>") {
        eos.push(i as u32);
    }
    eos.sort_unstable();
    eos.dedup();
    if let Some(&i) = eos.iter().find(|&&i| i as usize >= tokens.len()) {
        return Err(file.error(format!(
            "end-of-sequence id {i} is outside the vocabulary of {}",
            tokens.len()
        )));
    }
    let chat_template = match file.get("tokenizer.chat_template") {
        Some(Value::String(t)) => Some(t.clone()),
        _ => None,
    };
    Ok(Tokenizer::new(inner, eos).with_special(SpecialTokens {
        bos,
        eos: text(eos_id),
        chat_template,
    }))
}

fn strings<'a>(file: &'a Gguf, key: &str) -> Result<Vec<&'a str>> {
    file.array(key)?
        .iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.as_str()),
            _ => Err(file.error(format!("`{key}` holds a non-string"))),
        })
        .collect()
}

fn vocab(tokens: &[&str]) -> Vocab {
    tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect()
}

/// Byte-level BPE (the `gpt2` tokenizer model) with the pre-tokenizer `tokenizer.ggml.pre` names.
fn byte_level_bpe(file: &Gguf, tokens: &[&str]) -> Result<tokenizers::Tokenizer> {
    let merges = strings(file, "tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| file.error(format!("bad merge `{m}` in tokenizer.ggml.merges")))
        })
        .collect::<Result<Vec<_>>>()?;
    let pre = file.str("tokenizer.ggml.pre").unwrap_or("default");
    // llama.cpp takes a word that is a token whole before merging, for Llama 3.
    let ignore_merges = matches!(pre, "llama-bpe" | "llama3");
    let bpe = BPE::builder()
        .vocab_and_merges(vocab(tokens), merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| file.error(format!("cannot build the BPE tokenizer: {e}")))?;

    let byte_level = ByteLevel::new(false, true, true);
    let pre_tokenizer: PreTokenizerWrapper = match pre {
        "default" | "gpt2" | "gpt-2" => byte_level.into(),
        // SmolLM2 splits numbers into single digits.
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
        "llama-bpe" | "llama3" => regex_then_bytes(file, LLAMA3_PATTERN)?,
        "qwen2" => regex_then_bytes(file, QWEN2_PATTERN)?,
        other => {
            return Err(file.error(format!(
                "unsupported pre-tokenizer `{other}` (supported: default, gpt2, smollm, llama-bpe, qwen2)"
            )))
        }
    };
    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner
        .with_pre_tokenizer(Some(pre_tokenizer))
        .with_post_processor(Some(ByteLevel::new(false, false, true)))
        .with_decoder(Some(ByteLevel::default()));
    if pre == "qwen2" {
        // As transformers' Qwen2 tokenizer.
        inner.with_normalizer(Some(tokenizers::normalizers::NFC));
    }
    Ok(inner)
}

fn regex_then_bytes(file: &Gguf, pattern: &str) -> Result<PreTokenizerWrapper> {
    let split = Split::new(
        SplitPattern::Regex(pattern.into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| file.error(format!("tokenizer pattern: {e}")))?;
    Ok(Sequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into())
}

/// Llama 3's pre-tokenizer split.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's: as Llama 3's, with single digits.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// SentencePiece BPE (the `llama` tokenizer model) as transformers builds it from a GGUF:
/// byte-fallback BPE whose merges, when the file has none, come from the token scores (every
/// split of a token into two tokens, best-scored token first); spaces become `▁`, with one in
/// front of the text unless `tokenizer.ggml.add_space_prefix` is false. (llama.cpp also puts one
/// after every special token and in front of text that starts with a space; transformers does
/// not, and its tokenization is what Captum sees.)
fn sentencepiece(file: &Gguf, tokens: &[&str]) -> Result<tokenizers::Tokenizer> {
    let vocab = vocab(tokens);
    let merges: Vec<(String, String)> = match file.get("tokenizer.ggml.merges") {
        Some(_) => strings(file, "tokenizer.ggml.merges")?
            .into_iter()
            .filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
            .collect(),
        None => {
            let scores: Vec<f32> = file
                .array("tokenizer.ggml.scores")?
                .iter()
                .map(|v| match v {
                    Value::F32(x) => Ok(*x),
                    Value::F64(x) => Ok(*x as f32),
                    _ => Err(file.error("`tokenizer.ggml.scores` holds a non-number")),
                })
                .collect::<Result<_>>()?;
            if scores.len() != tokens.len() {
                return Err(file.error(format!("{} scores for {} tokens", scores.len(), tokens.len())));
            }
            merges_from_scores(tokens, &scores, &vocab)
        }
    };
    let unk = file
        .get("tokenizer.ggml.unknown_token_id")
        .map(|_| file.usize("tokenizer.ggml.unknown_token_id"))
        .transpose()?
        .and_then(|i| tokens.get(i));
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .fuse_unk(true)
        .byte_fallback(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk.to_string());
    }
    let bpe = builder
        .build()
        .map_err(|e| file.error(format!("cannot build the SentencePiece tokenizer: {e}")))?;
    let prefix = match file.get("tokenizer.ggml.add_space_prefix") {
        Some(Value::Bool(b)) => *b,
        _ => true,
    };
    let scheme = if prefix {
        PrependScheme::First
    } else {
        PrependScheme::Never
    };
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new("▁", " ")
            .map_err(|e| file.error(format!("tokenizer decoder: {e}")))?
            .into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner
        .with_pre_tokenizer(Some(Metaspace::new('▁', scheme, false)))
        .with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(inner)
}

/// transformers' `GGUFTokenizerSkeleton` merges: for every token, each split into two tokens
/// (ordered by the scores of the halves, best first), all sorted by the token's score, best
/// first (a stable sort, so ties keep vocabulary order).
fn merges_from_scores(tokens: &[&str], scores: &[f32], vocab: &Vocab) -> Vec<(String, String)> {
    let score = |t: &str| vocab.get(t).map(|&i| scores[i as usize]);
    let mut merges: Vec<(String, String, f32)> = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let mut local: Vec<(String, String, f32)> = token
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (l, r) = token.split_at(at);
                (score(l).is_some() && score(r).is_some()).then(|| (l.to_string(), r.to_string(), scores[i]))
            })
            .collect();
        local.sort_by(|a, b| {
            let key = |m: &(String, String, f32)| (score(&m.0), score(&m.1));
            key(b).partial_cmp(&key(a)).unwrap_or(std::cmp::Ordering::Equal)
        });
        merges.extend(local);
    }
    merges.sort_by(|a, b| b.2.partial_cmp(&a.2).unwrap_or(std::cmp::Ordering::Equal));
    merges.into_iter().map(|(l, r, _)| (l, r)).collect()
}

fn added(tokens: &[&str], types: &[usize], kind: usize, special: bool) -> Vec<AddedToken> {
    tokens
        .iter()
        .zip(types)
        .filter(|(_, &t)| t == kind)
        .map(|(s, _)| AddedToken::from(s.to_string(), special).normalized(false))
        .collect()
}

/// Walks a GGUF header checking every length against the file size, without allocating.
struct Scan<'a, R> {
    r: &'a mut R,
    pos: u64,
    len: u64,
    wide: bool,
}

impl<'a, R: Read + Seek> Scan<'a, R> {
    fn new(r: &'a mut R, len: u64) -> Self {
        Scan {
            r,
            pos: 0,
            len,
            wide: true,
        }
    }

    fn left(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn bytes<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        let mut b = [0u8; N];
        self.r
            .read_exact(&mut b)
            .map_err(|_| format!("the file ends early (at byte {})", self.pos))?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    /// A count or length: u32 in GGUF v1, u64 later.
    fn count(&mut self) -> std::result::Result<u64, String> {
        if self.wide {
            self.u64()
        } else {
            self.u32().map(u64::from)
        }
    }

    fn skip(&mut self, n: u64) -> std::result::Result<(), String> {
        if n > self.left() {
            return Err(format!(
                "a length of {n} bytes at byte {} runs past the end of the file",
                self.pos
            ));
        }
        let n = i64::try_from(n).map_err(|_| "length out of range".to_string())?;
        self.r.seek_relative(n).map_err(|e| format!("cannot read: {e}"))?;
        self.pos += n as u64;
        Ok(())
    }

    fn string(&mut self) -> std::result::Result<(), String> {
        let n = self.count()?;
        self.skip(n)
    }

    fn header(&mut self) -> std::result::Result<(), String> {
        let magic = self.bytes::<4>()?;
        if &magic != b"GGUF" {
            return Err(format!("bad magic {magic:02x?}"));
        }
        let version = self.u32()?;
        if !(1..=3).contains(&version) {
            return Err(format!("unsupported version {version}"));
        }
        self.wide = version > 1;
        let tensors = self.count()?;
        let kvs = self.count()?;
        if kvs > self.left() / 9 || tensors > self.left() / 24 {
            return Err(format!(
                "{tensors} tensors and {kvs} metadata entries cannot fit in the file"
            ));
        }
        for _ in 0..kvs {
            self.string()?;
            let ty = self.u32()?;
            self.value(ty, 0)?;
        }
        for _ in 0..tensors {
            self.string()?;
            let dims = self.u32()?;
            if !(1..=4).contains(&dims) {
                return Err(format!("a tensor has {dims} dimensions (1 to 4 allowed)"));
            }
            let mut elems: u64 = 1;
            for _ in 0..dims {
                let d = self.count()?;
                elems = elems
                    .checked_mul(d)
                    .filter(|&e| e <= self.len.saturating_mul(4))
                    .ok_or("a tensor has more elements than the file can hold")?;
            }
            let _dtype = self.u32()?;
            let _offset = self.u64()?;
        }
        Ok(())
    }

    fn value(&mut self, ty: u32, depth: usize) -> std::result::Result<(), String> {
        let size = match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => return self.string(),
            9 => {
                if depth > 2 {
                    return Err("arrays nested too deep".into());
                }
                let elem = self.u32()?;
                let n = self.count()?;
                let min = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 if !self.wide => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    _ => return Err(format!("unknown metadata type {elem}")),
                };
                if n > self.left() / min {
                    return Err(format!("an array of {n} values cannot fit in the file"));
                }
                if matches!(elem, 8 | 9) {
                    for _ in 0..n {
                        self.value(elem, depth + 1)?;
                    }
                    return Ok(());
                }
                return self.skip(n * min);
            }
            _ => return Err(format!("unknown metadata type {ty}")),
        };
        self.skip(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As transformers' `GGUFTokenizerSkeleton`: splits of each token into two tokens, the
    /// splits of better-scored tokens first.
    #[test]
    fn merges_come_from_scores() {
        let tokens = ["a", "b", "c", "ab", "abc", "bc"];
        let scores = [0.0, 0.0, 0.0, -1.0, -3.0, -2.0];
        let merges = merges_from_scores(&tokens, &scores, &vocab(&tokens));
        let pairs: Vec<(&str, &str)> = merges.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(pairs, [("a", "b"), ("b", "c"), ("a", "bc"), ("ab", "c")]);
    }

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
