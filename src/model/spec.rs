//! Model specs (`hf:ORG/NAME[@REV]`, a directory, a `.gguf` file) and loading from each.

use crate::error::{Error, Result};
use crate::model::Model;

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    Hub { repo: String, revision: Option<String> },
    Dir(std::path::PathBuf),
    Gguf(std::path::PathBuf),
}

impl ModelSpec {
    pub fn parse(spec: &str) -> Result<Self> {
        let _ = spec;
        Err(Error::Model("not implemented yet".into()))
    }
}

/// Loads the model a spec names.
pub fn load(spec: &str) -> Result<Model> {
    match ModelSpec::parse(spec)? {
        ModelSpec::Gguf(path) => crate::model::gguf::load(&path, spec),
        _ => Err(Error::Model("not implemented yet".into())),
    }
}
