//! A model that an inference server serves (vLLM, SGLang, TGI, a llama.cpp server): the
//! target's log-probs under each prompt come from the server, in the protocol it speaks
//! ([`protocol`]), with the tokens it scored checked against llm-attr's ([`align`]). The
//! tokenizer and chat template are local (`--tokenizer`). Methods never know: this is one
//! more [`Scorer`], and an engine backend (`engine::served`) for the server's queue.
//!
//! `Scorer::score` is synchronous and runs on worker or blocking threads; the HTTP runs on a
//! small runtime this model owns, so no caller's async threads are ever blocked.

pub mod align;
pub mod args;
pub mod check;
mod client;
mod openai_echo;
mod probe;
pub mod protocol;
mod sglang;
#[cfg(test)]
mod tests;
mod tgi;
mod vllm;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::{ArchInfo, ModelInfo, ScoreItem, Tokenizer};
use crate::scorer::Scorer;
use client::Client;
pub use protocol::Protocol;
use protocol::{Echoed, ServerFacts};

/// How long a probe of the server (start, `/ready`) may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `/ready` waits for the server.
const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a lazy start tries the server again.
const LAZY_PAUSE: Duration = Duration::from_secs(2);
/// The context assumed of a server that does not say its own.
const UNKNOWN_CONTEXT: usize = 1 << 20;

/// Whether a `--model` value names an inference server rather than a local model.
pub fn is_remote(spec: &str) -> bool {
    let s = spec.trim_start().to_ascii_lowercase();
    s.starts_with("http://") || s.starts_with("https://")
}

/// The operator's settings of a remote model (flags and env vars only; never a request's).
#[derive(Clone)]
pub struct RemoteSettings {
    /// `http(s)://HOST:PORT[/v1]`.
    pub url: String,
    /// The served model's name; `None`: the only one the server lists.
    pub model: Option<String>,
    /// Local spec whose tokenizer and chat template are used; `None`: the served name.
    pub tokenizer: Option<String>,
    /// The protocol to speak (`auto` probes the server once).
    pub protocol: Protocol,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Prompts per request, where the protocol takes lists.
    pub batch: usize,
    /// Time budget of one request, retries included.
    pub timeout: Duration,
    /// Bearer token for the server; never logged or shown.
    pub api_key: Option<String>,
    /// Start without the server; it is reached at first use.
    pub lazy: bool,
    /// A local model spec the server's log-probs are compared with at start.
    pub verify_with: Option<String>,
    /// Largest difference allowed by `verify_with`, in nats.
    pub verify_tolerance: f64,
}

impl RemoteSettings {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        RemoteSettings {
            url: url.into(),
            model: None,
            tokenizer: None,
            protocol: Protocol::Auto,
            concurrency: 8,
            batch: 16,
            timeout: Duration::from_secs(120),
            api_key: None,
            lazy: false,
            verify_with: None,
            verify_tolerance: 0.1,
        }
    }

    /// Prompts per request: `batch`, or one where the protocol takes one.
    pub fn effective_batch(&self, protocol: Protocol) -> usize {
        if protocol.takes_lists() {
            self.batch.max(1)
        } else {
            1
        }
    }
}

impl std::fmt::Debug for RemoteSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSettings")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("tokenizer", &self.tokenizer)
            .field("protocol", &self.protocol)
            .field("concurrency", &self.concurrency)
            .field("batch", &self.batch)
            .field("timeout", &self.timeout)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("lazy", &self.lazy)
            .field("verify_with", &self.verify_with)
            .finish()
    }
}

/// What the requests need, shared with the tasks on the runtime.
struct Shared {
    client: Client,
    facts: ServerFacts,
    tokenizer: Tokenizer,
    /// Tokens the tokenizer puts in front of every prompt (a BOS), which a server that takes
    /// text adds itself.
    lead: Vec<u32>,
}

/// A model served by an inference server.
pub struct RemoteModel {
    shared: Arc<Shared>,
    info: ModelInfo,
    batch: usize,
    concurrency: usize,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for RemoteModel {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl RemoteModel {
    /// Finds the server (probing its protocol where `auto`), loads the tokenizer and runs
    /// the start-up self-check (and `verify_with`). Blocking: call from a blocking thread.
    pub fn connect(settings: &RemoteSettings) -> Result<RemoteModel> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("llm-attr-remote")
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("cannot start the HTTP runtime: {e}")))?;
        let client = Client::new(&settings.url, settings.api_key.clone(), settings.timeout)?;
        let c = client.clone();
        let (asked, name) = (settings.protocol, settings.model.clone());
        let facts = wait(
            &runtime,
            async move { probe::probe(&c, asked, name.as_deref()).await },
        )??;
        let spec = settings
            .tokenizer
            .clone()
            .unwrap_or_else(|| default_tokenizer(&facts.model));
        let tokenizer = crate::model::load::load_tokenizer(&spec).map_err(|e| {
            Error::Model(format!(
                "--tokenizer {spec}: {e} (give the served model's tokenizer with --tokenizer)"
            ))
        })?;
        let lead = tokenizer.encode_prompt("")?;
        let info = info(&client, &facts, &tokenizer);
        let model = RemoteModel {
            batch: settings.effective_batch(facts.protocol),
            concurrency: settings.concurrency.max(1),
            shared: Arc::new(Shared {
                client,
                facts,
                tokenizer,
                lead,
            }),
            info,
            runtime: Some(runtime),
        };
        check::self_check(&model)?;
        if let Some(spec) = &settings.verify_with {
            check::verify_with(&model, spec, settings.verify_tolerance)?;
        }
        Ok(model)
    }

    /// [`RemoteModel::connect`]; with `lazy`, tried again every few seconds while the server
    /// cannot be reached (until `until`, where given), so a service may start first.
    pub fn connect_patiently(
        settings: &RemoteSettings,
        until: Option<std::time::Instant>,
    ) -> Result<RemoteModel> {
        loop {
            match RemoteModel::connect(settings) {
                Err(Error::Remote {
                    unavailable: true,
                    message,
                    ..
                }) if settings.lazy && until.is_none_or(|u| std::time::Instant::now() + LAZY_PAUSE < u) => {
                    tracing::warn!("waiting for the inference server (--remote-lazy): {message}");
                    std::thread::sleep(LAZY_PAUSE);
                }
                other => return other,
            }
        }
    }

    /// The protocol in use.
    pub fn protocol(&self) -> Protocol {
        self.shared.facts.protocol
    }

    /// The served model's name.
    pub fn model_name(&self) -> &str {
        &self.shared.facts.model
    }

    /// Prompts per request.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Requests in flight at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// What identifies the served model for the score cache: the server's URL, the model's
    /// name and the revision it reports (never local weights).
    pub fn identity(&self) -> String {
        let f = &self.shared.facts;
        format!(
            "remote\n{}\n{}\n{}",
            self.shared.client.root(),
            f.model,
            f.revision
        )
    }

    /// HTTP requests sent to the server so far: every try of every call (the start-up probe
    /// and self-check, scoring, generation, `/ready`), retries included.
    pub fn requests_sent(&self) -> u64 {
        self.shared.client.sent()
    }

    /// Whether the server answers now (`/ready`).
    pub fn reachable(&self) -> bool {
        let c = self.shared.client.clone();
        self.run(async move { c.get("/v1/models", READY_TIMEOUT).await.is_ok() })
            .unwrap_or(false)
    }

    /// One batch, as one request where the protocol takes lists (else one request per
    /// item, all at once).
    pub fn score_batch(&self, items: &[ScoreItem]) -> Result<Vec<Vec<f32>>> {
        self.check_items(items)?;
        let shared = self.shared.clone();
        let items = items.to_vec();
        self.run(async move { score_request(&shared, &items).await })?
    }

    /// Rejects an item longer than the server's context before anything is sent.
    pub fn check(&self, item: &ScoreItem, field: &str) -> Result<()> {
        let ctx = self.context_length();
        let n = item.prompt.len() + item.target.len();
        if n > ctx {
            return Err(Error::too_large(
                field,
                format!(
                    "{n} tokens (prompt + target) exceed the inference server's context of {} (it \
                     also generates one token)",
                    ctx + 1
                ),
            ));
        }
        Ok(())
    }

    fn check_items(&self, items: &[ScoreItem]) -> Result<()> {
        items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| self.check(item, &format!("sequences[{i}]")))
    }

    /// Greedy continuation, generated by the server.
    pub fn generate_ids(&self, prompt: &[u32], max_new_tokens: usize) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Err(Error::invalid("prompt", "the prompt is empty"));
        }
        let shared = self.shared.clone();
        let prompt = prompt.to_vec();
        let mut ids = self.run(async move { generate(&shared, &prompt, max_new_tokens).await })??;
        let eos = self.shared.tokenizer.eos_ids();
        if let Some(end) = ids.iter().position(|id| eos.contains(id)) {
            ids.truncate(end);
        }
        ids.truncate(max_new_tokens);
        Ok(ids)
    }

    /// Runs `fut` on this model's runtime and waits for it on this thread.
    fn run<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> Result<T> {
        match &self.runtime {
            Some(rt) => wait(rt, fut),
            None => Err(Error::Cancelled),
        }
    }
}

/// Waits on this (non-async) thread for `fut` run on `rt` (`Cancelled` when the runtime
/// shut down first).
fn wait<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<T> {
    match futures::executor::block_on(rt.spawn(fut)) {
        Ok(v) => Ok(v),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(Error::Cancelled),
    }
}

/// The tokenizer of a served name: a local path as it is, else the hub repo of that name.
fn default_tokenizer(model: &str) -> String {
    if std::path::Path::new(model).exists() {
        model.to_string()
    } else {
        format!("hf:{model}")
    }
}

fn info(client: &Client, facts: &ServerFacts, tokenizer: &Tokenizer) -> ModelInfo {
    ModelInfo {
        spec: format!("{} ({})", facts.model, client.root()),
        chat_template: tokenizer.chat_template().is_some(),
        gradients: false,
        arch: ArchInfo {
            architecture: format!("remote ({})", facts.protocol.name()),
            parameters: 0,
            vocab_size: tokenizer.vocab_size(),
            // One token is generated after the sequence.
            context_length: facts.context.map_or(UNKNOWN_CONTEXT, |c| c.saturating_sub(1)),
            hidden_size: 0,
            layers: 0,
            heads: 0,
            dtype: "remote".into(),
        },
    }
}

/// The text of a sequence for a server that tokenizes it itself: without the lead tokens it
/// adds again.
fn text_of(shared: &Shared, seq: &[u32]) -> Result<String> {
    let body = seq.strip_prefix(shared.lead.as_slice()).unwrap_or(seq);
    shared.tokenizer.decode(body)
}

/// One request (or, for one-prompt protocols, one per item, together) and its checked
/// target log-probs.
async fn score_request(shared: &Shared, items: &[ScoreItem]) -> Result<Vec<Vec<f32>>> {
    let f = &shared.facts;
    let echoed: Vec<Echoed> = match f.protocol {
        Protocol::Vllm => vllm::parse_scores(&post(shared, vllm::score_call(&f.model, items)).await?, items)?,
        Protocol::Sglang => sglang::parse_scores(&post(shared, sglang::score_call(items)).await?, items)?,
        Protocol::Tgi | Protocol::OpenaiEcho | Protocol::Auto => {
            let each = items.iter().map(|item| score_text(shared, item));
            futures::future::try_join_all(each).await?
        }
    };
    items
        .iter()
        .zip(&echoed)
        .map(|(item, e)| align::target_logprobs(item, e, &shared.tokenizer))
        .collect()
}

async fn score_text(shared: &Shared, item: &ScoreItem) -> Result<Echoed> {
    let seq = protocol::sequence(item);
    let text = text_of(shared, &seq)?;
    if shared.facts.protocol == Protocol::Tgi {
        return tgi::parse_scores(&post(shared, tgi::score_call(&text)).await?);
    }
    let call = openai_echo::score_call(&shared.facts.model, &text);
    let mut echoed = openai_echo::parse_scores(&post(shared, call).await?)?;
    // llama-cpp-python leaves the BOS it added out of the echo: the prompt's tokens and the
    // one generated, without the lead.
    let lead = shared.lead.len();
    if lead > 0 && seq.starts_with(&shared.lead) && echoed.tokens.len() + lead == seq.len() + 1 {
        echoed.start = lead;
    }
    Ok(echoed)
}

async fn post(shared: &Shared, call: protocol::Call) -> Result<Value> {
    shared.client.post(call.path, &call.body).await
}

async fn generate(shared: &Shared, prompt: &[u32], n: usize) -> Result<Vec<u32>> {
    let f = &shared.facts;
    let tok = &shared.tokenizer;
    match f.protocol {
        Protocol::Vllm => {
            match vllm::parse_generated(&post(shared, vllm::generate_call(&f.model, prompt, n)).await?)? {
                Ok(ids) => Ok(ids),
                Err(text) => tok.encode(&text),
            }
        }
        Protocol::Sglang => sglang::parse_generated(&post(shared, sglang::generate_call(prompt, n)).await?),
        Protocol::Tgi => {
            tgi::parse_generated(&post(shared, tgi::generate_call(&text_of(shared, prompt)?, n)).await?)
        }
        Protocol::OpenaiEcho | Protocol::Auto => {
            let call = openai_echo::generate_call(&f.model, &text_of(shared, prompt)?, n);
            tok.encode(&openai_echo::parse_generated(&post(shared, call).await?)?)
        }
    }
}

/// The order that puts sequences sharing a prefix next to each other (for servers that reuse
/// a cached prefix).
pub fn prefix_order(items: &[ScoreItem]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&items[a], &items[b]);
        x.prompt
            .iter()
            .chain(&x.target)
            .cmp(y.prompt.iter().chain(&y.target))
    });
    order
}

impl Scorer for RemoteModel {
    fn tokenizer(&self) -> &Tokenizer {
        &self.shared.tokenizer
    }

    fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Every item, sorted by prefix, in requests of `batch` with `concurrency` in flight;
    /// progress counts the sequences that came back.
    fn score(
        &self,
        items: Vec<ScoreItem>,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Vec<Vec<f32>>> {
        self.check_items(&items)?;
        let total = items.len();
        let order = prefix_order(&items);
        let chunks: Vec<Vec<usize>> = order.chunks(self.batch.max(1)).map(<[usize]>::to_vec).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let (shared, concurrency, items) = (self.shared.clone(), self.concurrency, Arc::new(items));
        let all = items.clone();
        let rt = self.runtime.as_ref().ok_or(Error::Cancelled)?;
        let task = rt.spawn(async move {
            let mut stream = futures::stream::iter(chunks)
                .map(|idx| {
                    let (shared, all) = (shared.clone(), all.clone());
                    async move {
                        let batch: Vec<ScoreItem> = idx.iter().map(|&i| all[i].clone()).collect();
                        (idx, score_request(&shared, &batch).await)
                    }
                })
                .buffer_unordered(concurrency);
            while let Some(done) = stream.next().await {
                let failed = done.1.is_err();
                if tx.send(done).is_err() || failed {
                    break;
                }
            }
        });
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); total];
        let mut done = 0;
        for (idx, scores) in rx {
            let scores = scores.inspect_err(|_| task.abort())?;
            for (i, s) in idx.into_iter().zip(scores) {
                out[i] = s;
                done += 1;
            }
            progress(done, total);
        }
        if done < total {
            return Err(Error::Internal("the remote scoring task ended early".into()));
        }
        Ok(out)
    }

    fn generate(&self, prompt: &[u32], max_new_tokens: usize) -> Result<Vec<u32>> {
        self.generate_ids(prompt, max_new_tokens)
    }
}

/// A scorer that hands its inner scorer the items sorted by prefix (so a batcher groups
/// those sharing one) and gives the scores back in the caller's order.
pub struct PrefixOrdered<S>(pub S);

impl<S: Scorer> Scorer for PrefixOrdered<S> {
    crate::scorer_facts_from!(0);

    fn score(
        &self,
        items: Vec<ScoreItem>,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Vec<Vec<f32>>> {
        let order = prefix_order(&items);
        let mut slots: Vec<Option<ScoreItem>> = items.into_iter().map(Some).collect();
        let sorted: Vec<ScoreItem> = order.iter().filter_map(|&i| slots[i].take()).collect();
        let scores = self.0.score(sorted, progress)?;
        let mut out = vec![Vec::new(); order.len()];
        for (&i, s) in order.iter().zip(scores) {
            out[i] = s;
        }
        Ok(out)
    }

    fn generate(&self, prompt: &[u32], max_new_tokens: usize) -> Result<Vec<u32>> {
        self.0.generate(prompt, max_new_tokens)
    }

    fn gradients(
        &self,
        job: crate::model::GradientJob,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Vec<Vec<f64>>> {
        self.0.gradients(job, progress)
    }

    fn is_cancelled(&self) -> bool {
        self.0.is_cancelled()
    }
}
