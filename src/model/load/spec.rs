//! Model specs: `hf:ORG/NAME[@REV]`, a directory, or a `.gguf` file.

use std::path::PathBuf;

use crate::error::{Error, Result};

const SPEC_HELP: &str = "expected hf:ORG/NAME[@REVISION], a model directory or a .gguf file";

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    /// A Hugging Face Hub repository (`hf:ORG/NAME[@REV]`).
    Hub {
        /// `ORG/NAME`.
        repo: String,
        /// Branch, tag or commit after `@`; None: the default branch.
        revision: Option<String>,
    },
    /// A local directory with config.json, the weights and the tokenizer files.
    Dir(PathBuf),
    /// A local `.gguf` file.
    Gguf(PathBuf),
}

impl ModelSpec {
    /// Parses a spec. Paths must exist; hub repos are checked when loading.
    pub fn parse(spec: &str) -> Result<Self> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(Error::invalid(
                "model",
                format!("the model spec is empty; {SPEC_HELP}"),
            ));
        }
        if let Some(rest) = spec.strip_prefix("hf:") {
            return parse_hub(rest);
        }
        let path = PathBuf::from(spec);
        let is_gguf = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        if path.is_dir() {
            Ok(ModelSpec::Dir(path))
        } else if is_gguf {
            if path.is_file() {
                Ok(ModelSpec::Gguf(path))
            } else {
                Err(Error::Model(format!("GGUF file {spec} does not exist")))
            }
        } else if path.exists() {
            Err(Error::invalid(
                "model",
                format!("{spec} is a file but not a .gguf file; {SPEC_HELP}"),
            ))
        } else {
            Err(Error::Model(format!("{spec} does not exist ({SPEC_HELP})")))
        }
    }
}

fn parse_hub(rest: &str) -> Result<ModelSpec> {
    let (repo, revision) = match rest.split_once('@') {
        Some((repo, rev)) => (repo, Some(rev)),
        None => (rest, None),
    };
    let name_ok = |s: &str| {
        !s.is_empty()
            && !s.starts_with(['.', '-'])
            && !s.contains("..")
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    let parts: Vec<&str> = repo.split('/').collect();
    if parts.len() > 2 || !parts.iter().all(|p| name_ok(p)) {
        return Err(Error::invalid(
            "model",
            format!(
                "hf:{rest} is not a valid hub repo; expected hf:ORG/NAME[@REVISION] \
                 (letters, digits, '-', '_', '.')"
            ),
        ));
    }
    if let Some(rev) = revision {
        if rev.is_empty() || rev.chars().any(|c| c.is_whitespace() || c.is_control()) || rev.contains("..") {
            return Err(Error::invalid(
                "model",
                format!("hf:{rest} has an invalid revision {rev:?} after '@'"),
            ));
        }
    }
    Ok(ModelSpec::Hub {
        repo: repo.to_string(),
        revision: revision.map(str::to_string),
    })
}

impl ModelSpec {
    /// How the model is named to clients: a hub spec as given, a file or directory by its
    /// name (the server's paths are none of their business).
    pub fn label(&self, given: &str) -> String {
        match self {
            ModelSpec::Hub { .. } => given.trim().to_string(),
            ModelSpec::Dir(p) | ModelSpec::Gguf(p) => p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".to_string()),
        }
    }
}
