//! Loading a model from a spec: a hub repo or a directory of safetensors (`config.json`'s
//! `model_type` picks the family, see `arch/family.rs`), or a `.gguf` file.

pub mod gguf;
pub(crate) mod hub;
mod mapped;
pub(crate) mod safetensors;
pub(crate) mod spec;
pub(crate) mod tokenizer_files;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::DType;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::{Architecture, Family, LoadOptions, Model, Tokenizer};
pub use hub::HubOptions;
pub(crate) use hub::{fetch, fetch_tokenizer};
pub(crate) use mapped::Mapped;
use safetensors::var_builder;
pub(crate) use safetensors::{dir_files, dir_tokenizer_files, ModelFiles};
pub use spec::ModelSpec;
use tokenizer_files::{hf_tokenizer, read_json};

impl Model {
    /// Loads a model from a spec: `hf:ORG/NAME[@REV]`, a directory, or a `.gguf` file.
    pub fn load(spec: &str, options: &LoadOptions) -> Result<Arc<Model>> {
        let mut model = load(spec, options)?;
        if let Some(passes) = options.gradient_passes {
            model.gradients = model.gradients.forced(passes);
        }
        if let Some(mb) = options.prefix_cache_mb {
            model.set_prefix_cache_bytes(mb << 20);
        }
        Ok(Arc::new(model))
    }
}

/// Loads the model a spec names, reaching the hub as the environment says.
pub fn load(spec: &str, options: &LoadOptions) -> Result<Model> {
    load_with(spec, &HubOptions::from_env(), options)
}

/// Loads the model a spec names with explicit hub options.
pub fn load_with(spec: &str, hub: &HubOptions, options: &LoadOptions) -> Result<Model> {
    let parsed = ModelSpec::parse(spec)?;
    let label = &parsed.label(spec);
    match parsed {
        ModelSpec::Gguf(path) => gguf::load(&path, label, options),
        ModelSpec::Dir(dir) => load_files(&dir_files(&dir)?, label, options),
        ModelSpec::Hub { repo, revision } => {
            load_files(&fetch(&repo, revision.as_deref(), hub)?, label, options)
        }
    }
}

/// The tokenizer (with its chat template) of the model a spec names, without its weights:
/// what a model served elsewhere (`--tokenizer`) needs here.
pub fn load_tokenizer(spec: &str) -> Result<Tokenizer> {
    let files = match ModelSpec::parse(spec)? {
        ModelSpec::Gguf(path) => return gguf::tokenizer(&gguf::Gguf::open(&path)?),
        ModelSpec::Dir(dir) => dir_tokenizer_files(&dir)?,
        ModelSpec::Hub { repo, revision } => {
            fetch_tokenizer(&repo, revision.as_deref(), &HubOptions::from_env())?
        }
    };
    hf_tokenizer(&files.tokenizer, &files.extra, &read_json(&files.config)?)
}

/// Loads a model from its local files, choosing the family from `config.json`.
pub(crate) fn load_files(files: &ModelFiles, spec: &str, options: &LoadOptions) -> Result<Model> {
    let json = read_json(&files.config)?;
    let family = family_of(&json, &files.config)?;
    let tokenizer = hf_tokenizer(&files.tokenizer, &files.extra, &json)?;
    let arch = build(family, &json, &files.config, &files.weights, options)?;
    check_vocab(&tokenizer, arch.info().vocab_size)?;
    Ok(Model::new(arch, tokenizer, spec))
}

/// The architecture alone, from a `config.json` and its safetensors weights.
pub fn architecture(
    config: &Path,
    weights: &[PathBuf],
    options: &LoadOptions,
) -> Result<Box<dyn Architecture>> {
    let json = read_json(config)?;
    build(family_of(&json, config)?, &json, config, weights, options)
}

/// The family `config.json` names by its `model_type`.
fn family_of(json: &Value, config: &Path) -> Result<Family> {
    let model_type = json
        .get("model_type")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Model(format!("{} has no model_type (string) field", config.display())))?;
    Family::from_model_type(model_type)
}

/// `family`'s architecture, as the registry builds it.
fn build(
    family: Family,
    json: &Value,
    config: &Path,
    weights: &[PathBuf],
    options: &LoadOptions,
) -> Result<Box<dyn Architecture>> {
    if family == Family::Gpt2 && options.device.is_cpu() && options.dtype() == DType::BF16 {
        return Err(Error::invalid(
            "dtype",
            "bf16 on the CPU runs the Llama-style decoders; GPT-2 runs in f32 or f16 there",
        ));
    }
    let open = || var_builder(weights, options);
    (family.entry().build)(family, json, &config.display().to_string(), &open)
}

fn check_vocab(tokenizer: &Tokenizer, vocab: usize) -> Result<()> {
    let n = tokenizer.vocab_size();
    if n > vocab {
        return Err(Error::Model(format!(
            "the tokenizer has {n} tokens but the model only {vocab}"
        )));
    }
    Ok(())
}
