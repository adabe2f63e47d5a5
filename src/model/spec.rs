//! Model specs (`hf:ORG/NAME[@REV]`, a directory, a `.gguf` file) and loading from each.
//!
//! Hub downloads go through hf-hub's blocking API into the usual Hugging Face cache, so a model
//! fetched once (by us or by Python) loads offline afterwards. Environment, as in Python:
//! `HF_ENDPOINT` (mirror URL), `HF_HOME` (cache in `$HF_HOME/hub`) or `HF_HUB_CACHE`,
//! `HF_HUB_OFFLINE=1` (cache only), `HF_TOKEN` (private or gated repos).
//!
//! A directory or hub repo needs `config.json`, `tokenizer.json` (or GPT-2's `vocab.json` +
//! `merges.txt`) and `model.safetensors` or a sharded `model.safetensors.index.json`;
//! `model_type` in the config picks the family (see `family.rs`). `tokenizer_config.json`,
//! `chat_template.jinja` and `generation_config.json` are read when present.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

use candle_nn::VarBuilder;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::config::DecoderConfig;
use crate::model::decoder::Decoder;
use crate::model::tokenizer::{set_bos_eos, SpecialTokens};
use crate::model::{gpt2, Architecture, Family, LoadOptions, Model, Tokenizer};

/// The model used when none is given.
pub const DEFAULT_SPEC: &str = "hf:distilbert/distilgpt2";

const SPEC_HELP: &str = "expected hf:ORG/NAME[@REVISION], a model directory or a .gguf file";

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    Hub { repo: String, revision: Option<String> },
    Dir(PathBuf),
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

/// How to reach the hub and where its cache lives.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// Base URL, `https://huggingface.co` unless `HF_ENDPOINT` says otherwise.
    pub endpoint: String,
    /// The hub cache (`$HF_HUB_CACHE`, `$HF_HOME/hub` or `~/.cache/huggingface/hub`).
    pub cache_dir: PathBuf,
    /// Cache only, never the network (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Bearer token (`HF_TOKEN`, else the token file in `HF_HOME`).
    pub token: Option<String>,
}

impl HubOptions {
    /// Reads HF_ENDPOINT, HF_HUB_CACHE, HF_HOME, HF_HUB_OFFLINE and HF_TOKEN.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let cache_dir = if let Some(c) = var("HF_HUB_CACHE") {
            PathBuf::from(c)
        } else if let Some(home) = var("HF_HOME") {
            PathBuf::from(home).join("hub")
        } else {
            let home = var("HOME").unwrap_or_else(|| ".".into());
            PathBuf::from(home).join(".cache/huggingface/hub")
        };
        let truthy = |k: &str| {
            var(k).is_some_and(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "1" | "true" | "yes" | "on"
                )
            })
        };
        let token = var("HF_TOKEN").or_else(|| {
            // hf-hub's own convention: the token file beside the hub cache.
            let cache = Cache::new(cache_dir.clone());
            cache.token()
        });
        HubOptions {
            endpoint: var("HF_ENDPOINT")
                .map(|e| e.trim_end_matches('/').to_string())
                .unwrap_or_else(|| "https://huggingface.co".into()),
            cache_dir,
            offline: truthy("HF_HUB_OFFLINE") || truthy("TRANSFORMERS_OFFLINE"),
            token,
        }
    }
}

/// The files a safetensors model is made of.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub config: PathBuf,
    pub tokenizer: TokenizerFiles,
    pub weights: Vec<PathBuf>,
    /// The files beside the tokenizer that may be missing.
    pub extra: ExtraFiles,
}

/// `tokenizer_config.json`, `chat_template.jinja` and `generation_config.json`, where present.
#[derive(Debug, Clone, Default)]
pub struct ExtraFiles {
    pub tokenizer_config: Option<PathBuf>,
    pub chat_template: Option<PathBuf>,
    pub generation_config: Option<PathBuf>,
}

const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
const CHAT_TEMPLATE: &str = "chat_template.jinja";
const GENERATION_CONFIG: &str = "generation_config.json";

/// A `tokenizer.json`, or the older GPT-2 pair `vocab.json` + `merges.txt`.
#[derive(Debug, Clone)]
pub enum TokenizerFiles {
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

/// Loads the model a spec names, reaching the hub as the environment says.
pub fn load(spec: &str, options: &LoadOptions) -> Result<Model> {
    load_with(spec, &HubOptions::from_env(), options)
}

/// Loads the model a spec names with explicit hub options.
pub fn load_with(spec: &str, hub: &HubOptions, options: &LoadOptions) -> Result<Model> {
    let parsed = ModelSpec::parse(spec)?;
    let label = &parsed.label(spec);
    match parsed {
        ModelSpec::Gguf(path) => crate::model::gguf::load(&path, label, options),
        ModelSpec::Dir(dir) => load_files(&dir_files(&dir)?, label, options),
        ModelSpec::Hub { repo, revision } => {
            load_files(&fetch(&repo, revision.as_deref(), hub)?, label, options)
        }
    }
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

/// The config, tokenizer and weights of a model directory.
pub fn dir_files(dir: &Path) -> Result<ModelFiles> {
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
    let optional = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
    Ok(ModelFiles {
        config,
        tokenizer,
        weights,
        extra: ExtraFiles {
            tokenizer_config: optional(TOKENIZER_CONFIG),
            chat_template: optional(CHAT_TEMPLATE),
            generation_config: optional(GENERATION_CONFIG),
        },
    })
}

/// Shard file names listed by a `model.safetensors.index.json`, in order, without repeats.
fn shard_names(index: &Path) -> Result<Vec<String>> {
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

/// Downloads (or finds in the cache) the files of a hub model.
pub fn fetch(repo: &str, revision: Option<&str>, hub: &HubOptions) -> Result<ModelFiles> {
    let rev = revision.unwrap_or("main");
    let hf_repo = Repo::with_revision(repo.to_string(), RepoType::Model, rev.to_string());
    let spec = match revision {
        Some(r) => format!("hf:{repo}@{r}"),
        None => format!("hf:{repo}"),
    };
    let getter = Getter::new(hub, hf_repo, &spec)?;
    let config = getter.get("config.json")?;
    let tokenizer = match getter.try_get("tokenizer.json")? {
        Some(p) => TokenizerFiles::Json(p),
        None => match (getter.try_get("vocab.json")?, getter.try_get("merges.txt")?) {
            (Some(vocab), Some(merges)) => TokenizerFiles::VocabMerges { vocab, merges },
            _ => {
                return Err(Error::Model(
                    getter.missing("tokenizer.json (nor vocab.json + merges.txt)"),
                ))
            }
        },
    };
    let weights = match getter.try_get("model.safetensors")? {
        Some(p) => vec![p],
        None => match getter.try_get("model.safetensors.index.json")? {
            Some(index) => shard_names(&index)?
                .iter()
                .map(|s| getter.get(s))
                .collect::<Result<_>>()?,
            None => {
                return Err(Error::Model(getter.missing(
                    "model.safetensors or model.safetensors.index.json \
                     (only safetensors weights are supported)",
                )))
            }
        },
    };
    let extra = ExtraFiles {
        tokenizer_config: getter.try_get(TOKENIZER_CONFIG)?,
        chat_template: getter.try_get(CHAT_TEMPLATE)?,
        generation_config: getter.try_get(GENERATION_CONFIG)?,
    };
    Ok(ModelFiles {
        config,
        tokenizer,
        weights,
        extra,
    })
}

/// Gets files of one repo from the cache, or the network unless offline.
struct Getter<'a> {
    hub: &'a HubOptions,
    repo: Repo,
    cache: hf_hub::CacheRepo,
    api: Option<hf_hub::api::sync::ApiRepo>,
    spec: &'a str,
}

impl<'a> Getter<'a> {
    fn new(hub: &'a HubOptions, repo: Repo, spec: &'a str) -> Result<Self> {
        let cache = Cache::new(hub.cache_dir.clone()).repo(repo.clone());
        let api = if hub.offline {
            None
        } else {
            let api = ApiBuilder::from_cache(Cache::new(hub.cache_dir.clone()))
                .with_endpoint(hub.endpoint.clone())
                .with_token(hub.token.clone())
                .with_progress(false)
                .with_retries(2)
                .build()
                .map_err(|e| Error::Model(format!("cannot set up the hub client: {e}")))?;
            Some(api.repo(repo.clone()))
        };
        Ok(Getter {
            hub,
            repo,
            cache,
            api,
            spec,
        })
    }

    fn get(&self, file: &str) -> Result<PathBuf> {
        self.try_get(file)?
            .ok_or_else(|| Error::Model(self.missing(file)))
    }

    fn missing(&self, what: &str) -> String {
        if self.api.is_none() {
            format!(
                "{} is not in the hub cache {} ({what} missing) and HF_HUB_OFFLINE is set; \
                 download it once with network access or unset HF_HUB_OFFLINE",
                self.spec,
                self.hub.cache_dir.display()
            )
        } else {
            format!(
                "{} has no {what} on {} (HTTP 404: is the repository name right?)",
                self.spec, self.hub.endpoint
            )
        }
    }

    /// huggingface_hub's record that the repo has no such file at the cached commit,
    /// `.no_exist/<commit>/<file>`, so optional files are asked for once, not on every load.
    fn absent_marker(&self, file: &str) -> Option<PathBuf> {
        let dir = self.hub.cache_dir.join(self.repo.folder_name());
        let rev = self.repo.revision();
        let commit = if rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit()) {
            rev.to_string()
        } else {
            std::fs::read_to_string(dir.join("refs").join(rev))
                .ok()?
                .trim()
                .to_string()
        };
        Some(dir.join(".no_exist").join(commit).join(file))
    }

    /// `Ok(None)` when the file is not there: not on the hub, or (offline) not in the cache.
    fn try_get(&self, file: &str) -> Result<Option<PathBuf>> {
        if let Some(p) = self.cache.get(file) {
            return Ok(Some(p));
        }
        let Some(api) = &self.api else {
            return Ok(None);
        };
        if self.absent_marker(file).is_some_and(|m| m.is_file()) {
            return Ok(None);
        }
        tracing::info!(spec = self.spec, file, "downloading from the hub");
        match api.download(file) {
            Ok(p) => Ok(Some(p)),
            Err(e) => match hub_error(&e, &self.hub.endpoint) {
                HubFailure::MissingFile => {
                    if let Some(marker) = self.absent_marker(file) {
                        if let Some(dir) = marker.parent() {
                            // Best effort: without the marker the file is only asked for again.
                            let _ = std::fs::create_dir_all(dir).and_then(|_| std::fs::write(&marker, b""));
                        }
                    }
                    Ok(None)
                }
                HubFailure::Other(m) => Err(Error::Model(format!(
                    "{}: cannot download {file} from {}: {m}",
                    self.spec, self.hub.endpoint
                ))),
                HubFailure::Fatal(m) => Err(Error::Model(format!("{}: {m}", self.spec))),
            },
        }
    }
}

enum HubFailure {
    /// The repo and revision exist, the file does not.
    MissingFile,
    /// The repo or revision does not exist, or access is denied.
    Fatal(String),
    Other(String),
}

fn hub_error(e: &ApiError, endpoint: &str) -> HubFailure {
    let inner = match e {
        ApiError::TooManyRetries(inner) => inner.as_ref(),
        e => e,
    };
    let ApiError::RequestError(req) = inner else {
        return HubFailure::Other(inner.to_string());
    };
    match req.as_ref() {
        ureq::Error::Status(status, response) => {
            let code = response.header("x-error-code").unwrap_or("").to_string();
            match (code.as_str(), *status) {
                ("EntryNotFound", _) => HubFailure::MissingFile,
                ("RepoNotFound", _) => HubFailure::Fatal(
                    format!("the repository does not exist on {endpoint} (or is private: set HF_TOKEN)"),
                ),
                ("RevisionNotFound", _) => {
                    HubFailure::Fatal(format!("the revision does not exist in this repository on {endpoint}"))
                }
                ("GatedRepo", _) => HubFailure::Fatal(
                    "the repository is gated: accept its terms on the hub and set HF_TOKEN"
                        .into(),
                ),
                (_, 401 | 403) => HubFailure::Fatal(format!(
                    "access denied by {endpoint} (HTTP {status}): the repository does not exist or is private (set HF_TOKEN)"
                )),
                // A bare 404 (no error code, as from a plain mirror) on a file: treat as missing;
                // callers needing the file turn it into "has no file X".
                (_, 404) => HubFailure::MissingFile,
                _ => HubFailure::Other(format!("HTTP {status}")),
            }
        }
        ureq::Error::Transport(t) => HubFailure::Other(format!("network error: {t}")),
    }
}

/// Loads a model from its local files, choosing the family from `config.json`.
pub fn load_files(files: &ModelFiles, spec: &str, options: &LoadOptions) -> Result<Model> {
    let origin = files.config.display().to_string();
    let json = read_json(&files.config)?;
    let model_type = json
        .get("model_type")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Model(format!("{origin} has no model_type (string) field")))?;
    let family = Family::from_model_type(model_type)?;
    let tokenizer = hf_tokenizer(files, &json)?;
    let arch: Box<dyn Architecture> = match family {
        Family::Gpt2 => {
            let cfg = gpt2::Config::from_json(&json.to_string(), &origin)?;
            Box::new(gpt2::Gpt2::load(cfg, &files.weights, options)?)
        }
        _ => {
            let cfg = DecoderConfig::from_hf(family, &json, &origin)?;
            Box::new(Decoder::load(cfg, safetensors(&files.weights, options)?)?)
        }
    };
    check_vocab(&tokenizer, arch.info().vocab_size)?;
    Ok(Model::new(arch, tokenizer, spec))
}

/// A `VarBuilder` over memory-mapped safetensors files, converting to the chosen dtype.
fn safetensors(files: &[PathBuf], options: &LoadOptions) -> Result<VarBuilder<'static>> {
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
    unsafe { VarBuilder::from_mmaped_safetensors(files, options.dtype(), &options.device) }.map_err(|e| {
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        Error::Model(format!(
            "cannot read safetensors {} (corrupt, truncated or not safetensors): {e}",
            names.join(", ")
        ))
    })
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Model(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Model(format!("{} is not valid JSON: {e}", path.display())))
}

/// The tokenizer with what tokenizer_config.json, chat_template.jinja and
/// generation_config.json add: special-token strings, the chat template, BOS/EOS handling and
/// the ids that end a generation.
fn hf_tokenizer(files: &ModelFiles, config: &Value) -> Result<Tokenizer> {
    let mut inner = files.tokenizer.load()?;
    let tok_config = files
        .extra
        .tokenizer_config
        .as_deref()
        .map(read_json)
        .transpose()?;
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
    let chat_template = match &files.extra.chat_template {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| Error::Model(format!("cannot read {}: {e}", path.display())))?,
        ),
        None => chat_template(&tok_config),
    };
    let generation = files
        .extra
        .generation_config
        .as_deref()
        .map(read_json)
        .transpose()?;
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

fn check_vocab(tokenizer: &Tokenizer, vocab: usize) -> Result<()> {
    let n = tokenizer.vocab_size();
    if n > vocab {
        return Err(Error::Model(format!(
            "the tokenizer has {n} tokens but the model only {vocab}"
        )));
    }
    Ok(())
}
