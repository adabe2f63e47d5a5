//! GGUF models: a checked file ([`reader`]), the decoder config ([`config`]) and tokenizer
//! ([`tokenizer`]) built from its metadata, and its tensors under Hugging Face's names
//! ([`names`]).

pub(crate) mod config;
pub(crate) mod names;
pub(crate) mod reader;
pub(crate) mod tokenizer;

use std::path::Path;

use candle_nn::VarBuilder;

use crate::error::{Error, Result};
use crate::model::arch::decoder::Decoder;
use crate::model::{Family, LoadOptions, Model};
pub(crate) use config::decoder_config;
use names::GgufWeights;
pub use reader::Gguf;
pub use tokenizer::tokenizer;

/// Loads a `.gguf` model: the family named by `general.architecture` and its tokenizer.
pub fn load(path: &Path, spec: &str, options: &LoadOptions) -> Result<Model> {
    let mut file = Gguf::open(path)?;
    let family = Family::from_gguf(file.str("general.architecture")?).map_err(|e| file.error(e))?;
    let tokenizer = tokenizer(&file)?;
    let cfg = decoder_config(&mut file, family)?;
    let vb = VarBuilder::from_backend(
        Box::new(GgufWeights::new(file, family)),
        options.dtype(),
        options.device.clone(),
    );
    let arch = Decoder::load(cfg, vb, None).map_err(|e| Error::Model(format!("{}: {e}", path.display())))?;
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
