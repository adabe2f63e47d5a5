//! A safetensors model's tokenizer: `tokenizer.json` (or GPT-2's `vocab.json` + `merges.txt`)
//! with what `tokenizer_config.json`, `chat_template.jinja` and `generation_config.json` add.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::tokenizer::{set_bos_eos, SpecialTokens};
use crate::model::Tokenizer;

/// `tokenizer_config.json`, `chat_template.jinja` and `generation_config.json`, where present.
#[derive(Debug, Clone, Default)]
pub(crate) struct ExtraFiles {
    pub tokenizer_config: Option<PathBuf>,
    pub chat_template: Option<PathBuf>,
    pub generation_config: Option<PathBuf>,
}

pub(super) const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
pub(super) const CHAT_TEMPLATE: &str = "chat_template.jinja";
pub(super) const GENERATION_CONFIG: &str = "generation_config.json";

/// A `tokenizer.json`, or the older GPT-2 pair `vocab.json` + `merges.txt`.
#[derive(Debug, Clone)]
pub(crate) enum TokenizerFiles {
    Json(PathBuf),
    VocabMerges { vocab: PathBuf, merges: PathBuf },
}

impl TokenizerFiles {
    fn load(&self) -> Result<tokenizers::Tokenizer> {
        match self {
            TokenizerFiles::Json(path) => tokenizers::Tokenizer::from_file(path)
                .map_err(|e| Error::Model(format!("cannot read tokenizer {}: {e}", path.display()))),
            TokenizerFiles::VocabMerges { vocab, merges } => Tokenizer::byte_level_bpe(vocab, merges),
        }
    }
}

/// The tokenizer with what tokenizer_config.json, chat_template.jinja and
/// generation_config.json add: special-token strings, the chat template, BOS/EOS handling and
/// the ids that end a generation.
pub(super) fn hf_tokenizer(
    tokenizer: &TokenizerFiles,
    extra: &ExtraFiles,
    config: &Value,
) -> Result<Tokenizer> {
    let mut inner = tokenizer.load()?;
    let tok_config = extra.tokenizer_config.as_deref().map(read_json).transpose()?;
    let tok_config = tok_config.unwrap_or(Value::Null);
    let token_text = |key: &str| match tok_config.get(key) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    };
    let (bos, eos) = (token_text("bos_token"), token_text("eos_token"));
    // transformers' Llama and Gemma tokenizers rebuild the post-processor from these flags.
    let class = tok_config
        .get("tokenizer_class")
        .and_then(Value::as_str)
        .unwrap_or("");
    let rebuilds = [
        "LlamaTokenizer",
        "LlamaTokenizerFast",
        "GemmaTokenizer",
        "GemmaTokenizerFast",
    ]
    .contains(&class);
    let flag = |key: &str, default: bool| tok_config.get(key).and_then(Value::as_bool).unwrap_or(default);
    if rebuilds {
        let add_bos = flag("add_bos_token", true).then_some(bos.as_deref()).flatten();
        let add_eos = flag("add_eos_token", false).then_some(eos.as_deref()).flatten();
        set_bos_eos(&mut inner, add_bos, add_eos)?;
    }
    let chat_template = match &extra.chat_template {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| Error::Model(format!("cannot read {}: {e}", path.display())))?,
        ),
        None => chat_template(&tok_config),
    };
    let generation = extra.generation_config.as_deref().map(read_json).transpose()?;
    let mut eos_ids = generation
        .as_ref()
        .map(|g| ids(g.get("eos_token_id")))
        .unwrap_or_default();
    if eos_ids.is_empty() {
        eos_ids = ids(config.get("eos_token_id"));
    }
    if eos_ids.is_empty() {
        let name = eos.as_deref().unwrap_or("<|endoftext|>");
        eos_ids.extend(inner.token_to_id(name));
    }
    Ok(Tokenizer::new(inner, eos_ids).with_special(SpecialTokens {
        bos,
        eos,
        chat_template,
    }))
}

/// `chat_template` as a string, or the `default` one of a list of named templates.
fn chat_template(tok_config: &Value) -> Option<String> {
    match tok_config.get("chat_template")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(named) => named
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    }
}

/// A token id or a list of them.
fn ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|n| n as u32).into_iter().collect(),
        Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_u64().map(|n| n as u32)).collect(),
        _ => Vec::new(),
    }
}

/// A JSON file's contents; the error names the file.
pub(super) fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Model(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Model(format!("{} is not valid JSON: {e}", path.display())))
}
