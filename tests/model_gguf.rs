//! GGUF for every family GGUF defines: each tiny fixture model (tests/fixtures/<family>)
//! written as GGUF the way llama.cpp's converter lays it out (its tensor names, Q/K permuted for
//! Llama-layout files, Gemma's norms stored as 1 + w, fused Phi-3 projections, Llama 3's RoPE
//! rescaling as `rope_freqs`, the tokenizer as metadata) must score as its safetensors twin.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use llm_attr::model::load::gguf;
use llm_attr::model::{DecoderConfig, RopeScaling};
use llm_attr::model::{Family, LoadOptions, Model, ScoreItem};
use serde::Deserialize;
use serde_json::Value as Json;

fn dir(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(family)
}

fn json(path: &Path) -> Json {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn string(s: &str) -> Value {
    Value::String(s.to_string())
}

fn strings<'a>(xs: impl IntoIterator<Item = &'a str>) -> Value {
    Value::Array(xs.into_iter().map(string).collect())
}

/// llama.cpp's permutation of Q/K rows for interleaved RoPE (convert_hf_to_gguf.py `permute`).
fn permute(w: &Tensor, heads: usize) -> Tensor {
    let (rows, cols) = w.dims2().unwrap();
    w.reshape((heads, 2, rows / heads / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

/// The tokenizer metadata of a fixture's tokenizer.json: byte-level BPE as `gpt2`, the
/// SentencePiece-style ones as `llama` (tokens, scores by rank, the merges as stored).
fn tokenizer_metadata(family: &str) -> Vec<(String, Value)> {
    let tok = tokenizers::Tokenizer::from_file(dir(family).join("tokenizer.json")).unwrap();
    let raw = json(&dir(family).join("tokenizer.json"));
    let mut by_id: Vec<(u32, String)> = tok.get_vocab(true).into_iter().map(|(t, i)| (i, t)).collect();
    by_id.sort();
    let tokens: Vec<&str> = by_id.iter().map(|(_, t)| t.as_str()).collect();
    // Added tokens: special ones CONTROL (3), the others USER_DEFINED (4); the rest NORMAL (1).
    let added: HashMap<u32, bool> = raw["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["id"].as_u64().unwrap() as u32,
                t["special"].as_bool() == Some(true),
            )
        })
        .collect();
    let types = Value::Array(
        by_id
            .iter()
            .map(|(i, _)| match added.get(i) {
                Some(true) => Value::I32(3),
                Some(false) => Value::I32(4),
                None => Value::I32(1),
            })
            .collect(),
    );
    let merges: Vec<String> = raw["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            Json::String(s) => s.clone(),
            pair => format!("{} {}", pair[0].as_str().unwrap(), pair[1].as_str().unwrap()),
        })
        .collect();
    let tc = json(&dir(family).join("tokenizer_config.json"));
    let id_of = |key: &str| tc[key].as_str().and_then(|t| tok.token_to_id(t));
    let spm = raw["model"]["byte_fallback"].as_bool() == Some(true);
    let mut meta = vec![
        (
            "tokenizer.ggml.tokens".to_string(),
            strings(tokens.iter().copied()),
        ),
        ("tokenizer.ggml.token_type".to_string(), types),
        (
            "tokenizer.ggml.merges".to_string(),
            strings(merges.iter().map(String::as_str)),
        ),
        (
            "tokenizer.chat_template".to_string(),
            string(tc["chat_template"].as_str().unwrap()),
        ),
    ];
    if spm {
        let n = tokens.len();
        meta.push(("tokenizer.ggml.model".into(), string("llama")));
        meta.push((
            "tokenizer.ggml.scores".into(),
            Value::Array((0..n).map(|i| Value::F32(-(i as f32))).collect()),
        ));
        meta.push((
            "tokenizer.ggml.add_space_prefix".into(),
            Value::Bool(family != "gemma2"),
        ));
        meta.push((
            "tokenizer.ggml.unknown_token_id".into(),
            Value::U32(tok.token_to_id("<unk>").unwrap()),
        ));
    } else {
        let pre = match family {
            "llama" => "llama-bpe",
            "qwen2" | "qwen3" => "qwen2",
            _ => "default",
        };
        meta.push(("tokenizer.ggml.model".into(), string("gpt2")));
        meta.push(("tokenizer.ggml.pre".into(), string(pre)));
    }
    if let Some(b) = id_of("bos_token") {
        meta.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(b)));
    }
    if let Some(e) = id_of("eos_token") {
        meta.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(e)));
    }
    let add_bos = tc["add_bos_token"].as_bool().unwrap_or(family == "llama");
    meta.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(add_bos)));
    meta
}

/// Writes `family`'s fixture as GGUF (F32 tensors) and returns the path.
fn write_gguf(family: &str, out: &Path) -> PathBuf {
    let config = json(&dir(family).join("config.json"));
    let fam = Family::from_model_type(config["model_type"].as_str().unwrap()).unwrap();
    let cfg = DecoderConfig::from_hf(fam, &config, "config.json").unwrap();
    // Mistral is stored as `llama` by llama.cpp.
    let arch = if fam == Family::Mistral {
        "llama"
    } else {
        fam.entry().gguf.unwrap()
    };
    let tensors =
        candle_core::safetensors::load(dir(family).join("model.safetensors"), &Device::Cpu).unwrap();
    let mut out_tensors: Vec<(String, Tensor)> = Vec::new();
    for (name, t) in &tensors {
        let mut t = t.to_dtype(DType::F32).unwrap();
        let gguf = gguf_name(fam, name);
        if arch == "llama" && name.ends_with("q_proj.weight") {
            t = permute(&t, cfg.heads);
        }
        if arch == "llama" && name.ends_with("k_proj.weight") {
            t = permute(&t, cfg.kv_heads);
        }
        if fam == Family::Gemma2 && name.ends_with("norm.weight") {
            t = (t + 1.0).unwrap();
        }
        out_tensors.push((gguf, t));
    }
    if let RopeScaling::Llama3 { .. } = cfg.rope.scaling {
        let mut plain = cfg.rope.clone();
        plain.scaling = RopeScaling::None;
        let (base, scaled) = (
            plain.inverse_frequencies(cfg.head_dim),
            cfg.rope.inverse_frequencies(cfg.head_dim),
        );
        let divisors: Vec<f32> = base.iter().zip(&scaled).map(|(b, s)| b / s).collect();
        out_tensors.push((
            "rope_freqs.weight".into(),
            Tensor::new(divisors, &Device::Cpu).unwrap(),
        ));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), string(arch)),
        (key("context_length"), Value::U32(cfg.context as u32)),
        (key("embedding_length"), Value::U32(cfg.hidden as u32)),
        (key("block_count"), Value::U32(cfg.layers as u32)),
        (key("feed_forward_length"), Value::U32(cfg.ffn as u32)),
        (key("attention.head_count"), Value::U32(cfg.heads as u32)),
        (key("attention.head_count_kv"), Value::U32(cfg.kv_heads as u32)),
        (key("attention.key_length"), Value::U32(cfg.head_dim as u32)),
        (key("attention.value_length"), Value::U32(cfg.head_dim as u32)),
        (
            key("attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.eps as f32),
        ),
        (key("rope.freq_base"), Value::F32(cfg.rope.theta as f32)),
        (key("rope.dimension_count"), Value::U32(cfg.head_dim as u32)),
    ];
    if let RopeScaling::Linear(f) = cfg.rope.scaling {
        meta.push((key("rope.scaling.type"), string("linear")));
        meta.push((key("rope.scaling.factor"), Value::F32(f as f32)));
    }
    if let Some(w) = cfg.windows.iter().flatten().next() {
        meta.push((key("attention.sliding_window"), Value::U32(*w as u32)));
    }
    for (k, v) in [
        ("attn_logit_softcapping", cfg.attn_softcap),
        ("final_logit_softcapping", cfg.final_softcap),
    ] {
        if let Some(v) = v {
            meta.push((key(k), Value::F32(v as f32)));
        }
    }
    meta.extend(tokenizer_metadata(family));
    let q: Vec<(String, QTensor)> = out_tensors
        .iter()
        .map(|(n, t)| (n.clone(), QTensor::quantize(t, GgmlDType::F32).unwrap()))
        .collect();
    let path = out.join(format!("{family}.gguf"));
    let mut f = std::fs::File::create(&path).unwrap();
    gguf_file::write(
        &mut f,
        &meta.iter().map(|(k, v)| (k.as_str(), v)).collect::<Vec<_>>(),
        &q.iter().map(|(n, t)| (n.as_str(), t)).collect::<Vec<_>>(),
    )
    .unwrap();
    path
}

/// convert_hf_to_gguf.py's tensor names.
fn gguf_name(fam: Family, hf: &str) -> String {
    let fixed: HashMap<&str, &str> = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ]
    .into_iter()
    .collect();
    if let Some(n) = fixed.get(hf) {
        return n.to_string();
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (i, part) = rest.split_once('.').unwrap();
    let (stem, kind) = part.rsplit_once('.').unwrap();
    let g = match stem {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.qkv_proj" => "attn_qkv",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "post_attention_layernorm" if fam == Family::Gemma2 => "post_attention_norm",
        "post_attention_layernorm" => "ffn_norm",
        "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" | "mlp.gate_up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        other => panic!("no GGUF name for {other}"),
    };
    format!("blk.{i}.{g}.{kind}")
}

#[derive(Deserialize)]
struct Logprobs {
    prompt_ids: Vec<u32>,
    target_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Tokenized {
    text: String,
    ids: Vec<u32>,
}

/// Gemma 2's GGUF has no `query_pre_attn_scalar` (llama.cpp uses head_dim below 27B), so its
/// twin is the fixture with that set to head_dim.
fn safetensors_twin(family: &str, tmp: &Path) -> std::sync::Arc<Model> {
    let src = dir(family);
    if family != "gemma2" {
        return Model::load(src.to_str().unwrap(), &LoadOptions::default()).unwrap();
    }
    let d = tmp.join("gemma2-twin");
    std::fs::create_dir_all(&d).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, d.join(p.file_name().unwrap())).unwrap();
    }
    let mut cfg = json(&d.join("config.json"));
    cfg["query_pre_attn_scalar"] = cfg["head_dim"].clone();
    std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
    Model::load(d.to_str().unwrap(), &LoadOptions::default()).unwrap()
}

#[test]
fn every_gguf_family_scores_as_its_safetensors_twin() {
    let tmp = tempfile::tempdir().unwrap();
    for family in common::FAMILIES {
        let path = write_gguf(family, tmp.path());
        let g =
            gguf::load(&path, family, &LoadOptions::default()).unwrap_or_else(|e| panic!("{family}: {e}"));
        let twin = safetensors_twin(family, tmp.path());
        let rows: Vec<Logprobs> = serde_json::from_value(json(&dir(family).join("logprobs.json"))).unwrap();
        let items: Vec<ScoreItem> = rows
            .iter()
            .map(|r| ScoreItem {
                prompt: r.prompt_ids.clone(),
                target: r.target_ids.clone(),
            })
            .collect();
        let (a, b) = (g.score(&items).unwrap(), twin.score(&items).unwrap());
        for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
            assert!((x - y).abs() <= 1e-4, "{family}: GGUF {x}, safetensors {y}");
        }
        assert_eq!(
            g.generate(&items[0].prompt, 8).unwrap(),
            twin.generate(&items[0].prompt, 8).unwrap(),
            "{family}"
        );
        assert_eq!(g.info().arch.parameters, twin.info().arch.parameters, "{family}");
        assert!(g.tokenizer().chat_template().is_some());

        let cases: Vec<Tokenized> =
            serde_json::from_value(json(&dir(family).join("tokenization.json"))).unwrap();
        for c in cases {
            assert_eq!(
                g.tokenizer().encode(&c.text).unwrap(),
                c.ids,
                "{family}: {:?}",
                c.text
            );
        }
        let prompt = "Georg from Germany applied";
        assert_eq!(
            g.tokenizer().encode_prompt(prompt).unwrap(),
            twin.tokenizer().encode_prompt(prompt).unwrap(),
            "{family}: BOS handling"
        );
    }
}

#[derive(Deserialize)]
struct Reference {
    prompt_ids: Vec<u32>,
    target_ids: Vec<u32>,
    target_logprobs: Vec<f64>,
}

#[derive(Deserialize)]
struct TokenizedWithSpecial {
    text: String,
    ids: Vec<u32>,
    ids_with_special: Vec<u32>,
}

#[derive(Deserialize)]
struct Generation {
    prompt_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
}

/// The GGUF twins gguf-py wrote (scripts/reference): Qwen2 with byte-level BPE, Mistral as
/// `llama` with Q/K permuted and a SentencePiece vocabulary (tokens and scores, no merges).
#[test]
fn reference_gguf_twins_match_transformers() {
    for family in ["qwen2", "mistral"] {
        let path = dir(family).join("model.gguf");
        let m = Model::load(path.to_str().unwrap(), &LoadOptions::default()).unwrap();
        let rows: Vec<Reference> =
            serde_json::from_value(json(&dir(family).join("gguf_logprobs.json"))).unwrap();
        let items: Vec<ScoreItem> = rows
            .iter()
            .map(|r| ScoreItem {
                prompt: r.prompt_ids.clone(),
                target: r.target_ids.clone(),
            })
            .collect();
        let got = m.score(&items).unwrap();
        for (g, r) in got.iter().zip(&rows) {
            for (a, b) in g.iter().zip(&r.target_logprobs) {
                assert!((*a as f64 - b).abs() <= 1e-4, "{family}: got {a}, reference {b}");
            }
        }
        let cases: Vec<TokenizedWithSpecial> =
            serde_json::from_value(json(&dir(family).join("tokenization.json"))).unwrap();
        for c in cases {
            let tok = m.tokenizer();
            assert_eq!(tok.encode(&c.text).unwrap(), c.ids, "{family}: {:?}", c.text);
            assert_eq!(
                tok.encode_prompt(&c.text).unwrap(),
                c.ids_with_special,
                "{family}: {:?}",
                c.text
            );
        }
        let runs: Vec<Generation> =
            serde_json::from_value(json(&dir(family).join("generation.json"))).unwrap();
        for g in runs {
            assert_eq!(m.generate(&g.prompt_ids, 12).unwrap(), g.greedy_ids, "{family}");
        }
        assert!(m.tokenizer().chat_template().is_some(), "{family}");
    }
}
