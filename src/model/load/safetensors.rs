//! A safetensors model's files (a directory's or a hub repo's: `config.json`, the tokenizer,
//! `model.safetensors` or the shards a `model.safetensors.index.json` lists, and the optional
//! extras), and a `VarBuilder` over its weights.

use std::path::{Path, PathBuf};

use candle_nn::VarBuilder;

use crate::error::{Error, Result};
use crate::model::arch::family::Opened;
use crate::model::load::mapped::Mapped;
use crate::model::load::tokenizer_files::{
    ExtraFiles, TokenizerFiles, CHAT_TEMPLATE, GENERATION_CONFIG, TOKENIZER_CONFIG,
};
use crate::model::LoadOptions;

/// The files a safetensors model is made of.
#[derive(Debug, Clone)]
pub(crate) struct ModelFiles {
    pub config: PathBuf,
    pub tokenizer: TokenizerFiles,
    pub weights: Vec<PathBuf>,
    /// The files beside the tokenizer that may be missing.
    pub extra: ExtraFiles,
}

/// The config, tokenizer and weights of a model directory.
pub(crate) fn dir_files(dir: &Path) -> Result<ModelFiles> {
    let mut files = dir_tokenizer_files(dir)?;
    files.weights = dir_weights(dir)?;
    Ok(files)
}

/// The config and tokenizer files of a model directory, without weights (an empty list).
pub(crate) fn dir_tokenizer_files(dir: &Path) -> Result<ModelFiles> {
    let need = |name: &str| {
        let p = dir.join(name);
        if p.is_file() {
            Ok(p)
        } else {
            Err(Error::Model(format!("{} has no {name}", dir.display())))
        }
    };
    let config = need("config.json")?;
    let tokenizer = if dir.join("tokenizer.json").is_file() {
        TokenizerFiles::Json(dir.join("tokenizer.json"))
    } else if dir.join("vocab.json").is_file() && dir.join("merges.txt").is_file() {
        TokenizerFiles::VocabMerges {
            vocab: dir.join("vocab.json"),
            merges: dir.join("merges.txt"),
        }
    } else {
        return Err(Error::Model(format!(
            "{} has no tokenizer.json (nor vocab.json + merges.txt)",
            dir.display()
        )));
    };
    let optional = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
    Ok(ModelFiles {
        config,
        tokenizer,
        weights: Vec::new(),
        extra: ExtraFiles {
            tokenizer_config: optional(TOKENIZER_CONFIG),
            chat_template: optional(CHAT_TEMPLATE),
            generation_config: optional(GENERATION_CONFIG),
        },
    })
}

/// A directory's safetensors weights: `model.safetensors`, the shards its index lists, or
/// every `.safetensors` file.
fn dir_weights(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    let weights = if dir.join("model.safetensors").is_file() {
        vec![dir.join("model.safetensors")]
    } else if index.is_file() {
        shard_names(&index)?.iter().map(|s| dir.join(s)).collect()
    } else {
        let mut all: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::Model(format!("cannot list {}: {e}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        all.sort();
        all
    };
    if weights.is_empty() {
        return Err(Error::Model(format!(
            "{} has no .safetensors weights",
            dir.display()
        )));
    }
    Ok(weights)
}

/// Shard file names listed by a `model.safetensors.index.json`, in order, without repeats.
pub(super) fn shard_names(index: &Path) -> Result<Vec<String>> {
    let bad = |m: String| Error::Model(format!("{}: {m}", index.display()));
    let text = std::fs::read_to_string(index).map_err(|e| bad(e.to_string()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no weight_map object".into()))?;
    let mut names: Vec<String> = Vec::new();
    for v in map.values() {
        let name = v
            .as_str()
            .ok_or_else(|| bad("weight_map values must be file names".into()))?;
        if name.contains('/') || name.contains('\\') || name.starts_with('.') {
            return Err(bad(format!("unsafe shard name {name:?}")));
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    names.sort();
    if names.is_empty() {
        return Err(bad("weight_map is empty".into()));
    }
    Ok(names)
}

/// A `VarBuilder` over memory-mapped safetensors files, converting to the chosen dtype as each
/// tensor is read, and the map itself ([`Mapped`]).
pub(super) fn var_builder(files: &[PathBuf], options: &LoadOptions) -> Result<Opened> {
    for f in files {
        if !f.is_file() {
            return Err(Error::Model(format!(
                "weight file {} does not exist",
                f.display()
            )));
        }
    }
    // SAFETY: the files are memory-mapped read-only; like every mmap-based loader we assume
    // nobody truncates or rewrites them while the model loads (tensors are copied out).
    let mapped = unsafe { Mapped::open(files) }.map_err(|e| {
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        Error::Model(format!(
            "cannot read safetensors {} (corrupt, truncated or not safetensors): {e}",
            names.join(", ")
        ))
    })?;
    Ok(Opened {
        vb: VarBuilder::from_backend(Box::new(mapped.clone()), options.dtype(), options.device.clone()),
        mapped: Some(mapped),
    })
}
