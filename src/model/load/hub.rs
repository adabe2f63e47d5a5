//! The Hugging Face hub: downloads through hf-hub's blocking API into the usual Hugging Face
//! cache, so a model fetched once (by us or by Python) loads offline afterwards. Environment,
//! as in Python: `HF_ENDPOINT` (mirror URL), `HF_HOME` (cache in `$HF_HOME/hub`) or
//! `HF_HUB_CACHE`, `HF_HUB_OFFLINE=1` (cache only), `HF_TOKEN` (private or gated repos).

use std::path::PathBuf;

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{Error, Result};
use crate::model::load::safetensors::{shard_names, ModelFiles};
use crate::model::load::tokenizer_files::{
    ExtraFiles, TokenizerFiles, CHAT_TEMPLATE, GENERATION_CONFIG, TOKENIZER_CONFIG,
};

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

/// Downloads (or finds in the cache) the files of a hub model.
pub(crate) fn fetch(repo: &str, revision: Option<&str>, hub: &HubOptions) -> Result<ModelFiles> {
    fetch_files(repo, revision, hub, true)
}

/// The config and tokenizer files of a hub model, without its weights (an empty list): what
/// a model served elsewhere needs here.
pub(crate) fn fetch_tokenizer(repo: &str, revision: Option<&str>, hub: &HubOptions) -> Result<ModelFiles> {
    fetch_files(repo, revision, hub, false)
}

fn fetch_files(repo: &str, revision: Option<&str>, hub: &HubOptions, weights: bool) -> Result<ModelFiles> {
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
    let weights = if !weights {
        Vec::new()
    } else {
        weight_files(&getter)?
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

/// The safetensors weights of a hub model: one file or the shards its index lists.
fn weight_files(getter: &Getter) -> Result<Vec<PathBuf>> {
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
    Ok(weights)
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
