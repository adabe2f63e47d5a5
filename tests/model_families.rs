//! Every decoder family against transformers: tiny random models with bf16 weights in
//! tests/fixtures/<family> (made by scripts/reference): log-probs, greedy ids, tokenization,
//! loading through `hf:` (sharded), the differentiable forward, and bad model files.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use llm_attr::error::Error;
use llm_attr::model::load::load_with;
use llm_attr::model::{LoadOptions, Model, ScoreItem};
use serde::Deserialize;

use common::{shared_model, FAMILIES};

fn dir(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(family)
}

fn model(family: &str) -> Arc<Model> {
    shared_model(dir(family).to_str().unwrap())
}

fn read<T: for<'de> Deserialize<'de>>(family: &str, name: &str) -> T {
    let path = dir(family).join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

#[derive(Deserialize)]
struct Logprobs {
    prompt: String,
    target: String,
    prompt_ids: Vec<u32>,
    target_ids: Vec<u32>,
    target_logprobs: Vec<f64>,
}

#[derive(Deserialize)]
struct Generation {
    prompt_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Tokenized {
    text: String,
    ids: Vec<u32>,
    ids_with_special: Vec<u32>,
}

fn items(family: &str) -> (Vec<ScoreItem>, Vec<Logprobs>) {
    let rows: Vec<Logprobs> = read(family, "logprobs.json");
    let items = rows
        .iter()
        .map(|r| ScoreItem {
            prompt: r.prompt_ids.clone(),
            target: r.target_ids.clone(),
        })
        .collect();
    (items, rows)
}

fn assert_logprobs(family: &str, got: &[Vec<f32>], rows: &[Logprobs]) {
    for (g, r) in got.iter().zip(rows) {
        assert_eq!(g.len(), r.target_logprobs.len(), "{family}: {:?}", r.target);
        for (k, (a, b)) in g.iter().zip(&r.target_logprobs).enumerate() {
            assert!(
                (*a as f64 - b).abs() <= 1e-3,
                "{family}: {:?} + {:?} token {k}: got {a}, transformers {b}",
                r.prompt,
                r.target
            );
        }
    }
}

/// All cases in one right-padded batch, as the engine scores them.
#[test]
fn logprobs_match_transformers() {
    for family in FAMILIES {
        let m = model(family);
        let (items, rows) = items(family);
        assert_logprobs(family, &m.score(&items).unwrap(), &rows);
    }
}

#[test]
fn prompts_encode_with_special_tokens_and_targets_without() {
    for family in FAMILIES {
        let m = model(family);
        let tok = m.tokenizer();
        let cases: Vec<Tokenized> = read(family, "tokenization.json");
        for c in &cases {
            assert_eq!(tok.encode(&c.text).unwrap(), c.ids, "{family}: {:?}", c.text);
            assert_eq!(
                tok.encode_prompt(&c.text).unwrap(),
                c.ids_with_special,
                "{family}: {:?} with special tokens",
                c.text
            );
        }
        for r in items(family).1 {
            assert_eq!(tok.encode_prompt(&r.prompt).unwrap(), r.prompt_ids, "{family}");
            assert_eq!(tok.encode(&r.target).unwrap(), r.target_ids, "{family}");
        }
    }
}

#[test]
fn greedy_ids_match_transformers() {
    for family in FAMILIES {
        let m = model(family);
        let cases: Vec<Generation> = read(family, "generation.json");
        for c in cases {
            assert_eq!(m.generate(&c.prompt_ids, 12).unwrap(), c.greedy_ids, "{family}");
        }
    }
}

#[test]
fn info_and_chat_template() {
    for family in FAMILIES {
        let m = model(family);
        let want = family.split('-').next().unwrap();
        assert_eq!(m.info().arch.architecture, want);
        assert_eq!(m.info().arch.dtype, "f32");
        let tok = m.tokenizer();
        assert!(
            tok.chat_template().is_some_and(|t| t.contains("messages")),
            "{family}"
        );
        assert!(tok.eos_token().is_some(), "{family}");
        assert!(!tok.eos_ids().is_empty(), "{family}");
    }
    assert_eq!(model("gemma2").tokenizer().bos_token(), Some("<bos>"));
    assert_eq!(model("qwen2").tokenizer().bos_token(), None);
}

/// The gradient path (embeddings in, only candle ops with a backward pass) gives the logits of
/// the scoring path, and gradients reach the embeddings.
#[test]
fn differentiable_forward_equals_scoring_path() {
    for family in FAMILIES {
        let m = model(family);
        let arch = m.arch();
        let (items, _) = items(family);
        let ids = &items[0].prompt;
        let ids = Tensor::new(ids.as_slice(), arch.device())
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let scoring = arch.logits(&arch.hidden(&ids).unwrap()).unwrap();
        let embeds = Var::from_tensor(&arch.embed(&ids).unwrap()).unwrap();
        let logits = arch
            .logits(&arch.forward_from_embeddings(embeds.as_tensor()).unwrap())
            .unwrap();
        let diff = (&logits - &scoring)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-4, "{family}: max logit difference {diff}");
        let grads = candle_nn::ops::log_softmax(&logits, 2)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g = grads
            .get(embeds.as_tensor())
            .expect("a gradient for the embeddings");
        assert_eq!(g.dims(), embeds.dims());
        let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(norm.is_finite() && norm > 0.0, "{family}: gradient norm {norm}");
    }
}

/// Through `hf:` against the fake hub, the weights in two shards with an index.
#[test]
fn sharded_hub_repos_load() {
    let repos: Vec<(String, _)> = ["qwen3", "gemma2"]
        .iter()
        .map(|f| (format!("tiny/{f}"), common::sharded(common::dir_files(&dir(f)))))
        .collect();
    let hub = common::start_hub_with(repos);
    let home = tempfile::tempdir().unwrap();
    for family in ["qwen3", "gemma2"] {
        let opts = common::options(&hub, home.path(), false);
        let m = load_with(&format!("hf:tiny/{family}"), &opts, &LoadOptions::default()).unwrap();
        let (items, rows) = items(family);
        assert_logprobs(family, &m.score(&items).unwrap(), &rows);
        assert!(m.tokenizer().chat_template().is_some());
    }
    let log = hub.requests();
    assert!(log
        .iter()
        .any(|l| l.contains("tiny/gemma2/resolve/main/model.safetensors.index.json")));
}

/// A local directory with shards and `model.safetensors.index.json`.
#[test]
fn sharded_directory_loads() {
    let m = Model::load(dir("qwen3-sharded").to_str().unwrap(), &LoadOptions::default()).unwrap();
    let (items, rows) = items("qwen3");
    assert_logprobs("qwen3-sharded", &m.score(&items).unwrap(), &rows);
}

fn model_error(dir: &Path) -> String {
    match Model::load(dir.to_str().unwrap(), &LoadOptions::default()) {
        Err(Error::Model(m)) => m,
        Err(e) => panic!("expected a model error, got {e:?}"),
        Ok(_) => panic!("expected a model error, got a model"),
    }
}

/// A copy of a fixture directory, `edit` applied to its config.json.
fn copy_with(family: &str, edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir(family)).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, d.path().join(p.file_name().unwrap())).unwrap();
    }
    let path = d.path().join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&path, cfg.to_string()).unwrap();
    d
}

#[test]
fn bad_model_directories_are_clear_errors() {
    let d = copy_with("qwen2", |c| c["model_type"] = "mamba".into());
    let e = model_error(d.path());
    assert!(
        e.contains("unsupported model_type `mamba`")
            && e.contains("gpt2, llama, mistral, qwen2, qwen3, phi3, gemma2"),
        "{e}"
    );

    let d = copy_with("llama", |c| c["rope_scaling"]["rope_type"] = "yarn".into());
    let e = model_error(d.path());
    assert!(
        e.contains("config.json") && e.contains("rope_scaling type `yarn`"),
        "{e}"
    );

    let d = copy_with("qwen2", |c| c["rope_parameters"]["rope_type"] = "dynamic".into());
    let e = model_error(d.path());
    assert!(e.contains("rope_parameters type `dynamic`"), "{e}");

    let d = copy_with("mistral", |_| {});
    std::fs::remove_file(d.path().join("tokenizer.json")).unwrap();
    let e = model_error(d.path());
    assert!(e.contains("tokenizer.json"), "{e}");

    let d = copy_with("phi3", |_| {});
    let path = d.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let gone = "model.layers.1.mlp.gate_up_proj.weight";
    assert!(tensors.remove(gone).is_some());
    assert!(tensors.values().all(|t| t.dtype() == DType::BF16));
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let e = model_error(d.path());
    assert!(e.contains(gone), "{e}");
}
