//! Language models: loading, teacher-forced scoring of target continuations, greedy generation.
//!
//! The model owns the tensors. Everything above this module sees token ids and log-probs.
//!
//! - [`load`]: specs, the hub, safetensors and GGUF files, tokenizers from them (and
//!   `Model::load`);
//! - [`arch`]: the architectures, their family registry, configs and KV cache;
//! - [`kernels`]: fused forward ops and their hand-written backward passes;
//! - [`device`]: where a model runs and how the engine drives it; [`gradient`]: the gradient
//!   methods' passes;
//! - [`prefix`]: which items of a batch share a prefix, and the prefix cache; [`pass`]: a
//!   batch's scoring passes.

pub(crate) mod arch;
pub(crate) mod device;
pub(crate) mod gradient;
pub(crate) mod kernels;
pub mod load;
mod pass;
pub(crate) mod prefix;
pub(crate) mod tokenizer;

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::error::{Error, Result};
pub use arch::config::{DecoderConfig, Rope, RopeScaling};
pub use arch::family::{Entry, Family};
pub use arch::gpt2::bias_gelu;
pub use arch::kv_cache::KvCache;
pub use arch::{ArchInfo, Architecture, Part};
pub use device::tuning::{GradientPlan, Passes};
pub use device::{resolve, DeviceArgs, DeviceChoice, DtypeChoice, LoadOptions};
pub use gradient::{Combine, GradientJob};
pub use kernels::activation::Activation;
pub use kernels::bf16::matmul as cpu_bf16_matmul;
pub use kernels::ops::target_logprobs;
pub use kernels::Kernels;
pub use load::ModelSpec;
pub use prefix::{BatchScores, DEFAULT_PREFIX_CACHE_MB};
pub use tokenizer::Tokenizer;

/// `GET /v1/model`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModelInfo {
    /// The model: its hub spec (`hf:ORG/NAME`) or the name of its directory or `.gguf` file.
    pub spec: String,
    /// Whether the model has a chat template (requests may then give `messages`).
    pub chat_template: bool,
    /// Whether the gradient methods run on this model (not on one an inference server serves).
    pub gradients: bool,
    /// The architecture's facts.
    #[serde(flatten)]
    pub arch: ArchInfo,
}

/// One sequence to score: log p(target_k | prompt, target_<k) for every k.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScoreItem {
    /// Prompt token ids (at least one).
    pub prompt: Vec<u32>,
    /// Target token ids, scored after the prompt (at least one).
    pub target: Vec<u32>,
}

impl ScoreItem {
    /// Tokens fed to the model: the last target token is never an input.
    pub fn input_len(&self) -> usize {
        self.prompt.len() + self.target.len() - 1
    }
}

/// A loaded model and its tokenizer. Shared behind an `Arc`; all methods take `&self`.
pub struct Model {
    arch: Box<dyn Architecture>,
    tokenizer: Tokenizer,
    info: ModelInfo,
    device: Device,
    /// How the gradient methods run here.
    gradients: GradientPlan,
    /// Shared-prefix reuse and its cache.
    prefix: prefix::PrefixReuse,
    /// Input tokens computed and reused (from a shared or cached prefix) since loading.
    computed: AtomicU64,
    reused: AtomicU64,
}

impl Model {
    /// A model from a loaded architecture and its tokenizer; `spec` names it in [`ModelInfo`].
    pub fn new(arch: Box<dyn Architecture>, tokenizer: Tokenizer, spec: &str) -> Self {
        let info = ModelInfo {
            spec: spec.to_string(),
            chat_template: tokenizer.chat_template().is_some(),
            gradients: true,
            arch: arch.info(),
        };
        let device = arch.device().clone();
        Model {
            arch,
            tokenizer,
            info,
            gradients: device::tuning(&device).gradients,
            device,
            prefix: prefix::PrefixReuse::new(DEFAULT_PREFIX_CACHE_MB << 20),
            computed: AtomicU64::new(0),
            reused: AtomicU64::new(0),
        }
    }

    /// Turns shared-prefix reuse on or off (on by default): the scores are the same either way.
    pub fn set_prefix_reuse(&self, on: bool) {
        self.prefix.set_on(on);
    }

    /// Empties the prefix cache and bounds it to `bytes` (0: no cache; the sequences of a batch
    /// still share their prefixes).
    pub fn set_prefix_cache_bytes(&self, bytes: usize) {
        self.prefix.set_capacity(bytes);
    }

    /// Bytes the prefix cache holds now.
    pub fn prefix_cache_bytes(&self) -> usize {
        self.prefix.lock().bytes()
    }

    /// Input tokens computed, and reused from a shared or cached prefix, since loading.
    pub fn token_counts(&self) -> (u64, u64) {
        (
            self.computed.load(Ordering::Relaxed),
            self.reused.load(Ordering::Relaxed),
        )
    }

    /// Where the weights live and the forward passes run.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Padded tokens per forward pass suited to the device (see [`device::tuning`]).
    pub fn token_budget(&self) -> usize {
        device::tuning(&self.device).token_budget
    }

    /// The architecture, for what needs tensors (gradient methods).
    pub fn arch(&self) -> &dyn Architecture {
        self.arch.as_ref()
    }

    /// The tokenizer prompts and targets are encoded with.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// What is loaded (`GET /v1/model`).
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Most tokens one sequence (prompt + target) may hold.
    pub fn context_length(&self) -> usize {
        self.info.arch.context_length
    }

    /// Checks one item without running the model; `field` names it in the error.
    pub fn check(&self, item: &ScoreItem, field: &str) -> Result<()> {
        if item.target.is_empty() {
            return Err(Error::invalid(field, "the target is empty"));
        }
        if item.prompt.is_empty() {
            return Err(Error::invalid(
                field,
                "the prompt is empty: the first target token needs a context",
            ));
        }
        let vocab = self.info.arch.vocab_size;
        if let Some(id) = item
            .prompt
            .iter()
            .chain(&item.target)
            .find(|&&id| id as usize >= vocab)
        {
            return Err(Error::invalid(
                field,
                format!("token id {id} is out of range (vocabulary size {vocab})"),
            ));
        }
        let ctx = self.context_length();
        if item.input_len() > ctx {
            return Err(Error::too_large(
                field,
                format!(
                    "{} tokens exceed the model's context length of {ctx}",
                    item.input_len()
                ),
            ));
        }
        Ok(())
    }

    /// Log-probs of every target token of every item, from one teacher-forced forward pass over
    /// the whole batch (right-padded). The LM head runs only at the positions that predict a
    /// target token.
    pub fn score(&self, batch: &[ScoreItem]) -> Result<Vec<Vec<f32>>> {
        for (i, item) in batch.iter().enumerate() {
            self.check(item, &format!("sequences[{i}]"))?;
        }
        self.score_checked(batch)
    }

    /// `score` for items that already passed [`Model::check`] (the engine checks them before
    /// they are queued).
    pub(crate) fn score_checked(&self, batch: &[ScoreItem]) -> Result<Vec<Vec<f32>>> {
        Ok(self.score_reusing(batch)?.scores)
    }

    /// [`Model::score_checked`] with what the passes reused: the items that share a prefix
    /// compute it once (see [`prefix`]). A batch that runs out of device memory is scored in
    /// halves (see [`split_on_oom`]).
    pub(crate) fn score_reusing(&self, batch: &[ScoreItem]) -> Result<BatchScores> {
        let out = split_on_oom(
            batch,
            &mut |part| self.forward_batch(part),
            &device::name(&self.device),
        )?;
        let reused: usize = out.reused.iter().sum();
        let total: usize = batch.iter().map(ScoreItem::input_len).sum();
        self.reused.fetch_add(reused as u64, Ordering::Relaxed);
        let computed = total.saturating_sub(reused) as u64;
        self.computed.fetch_add(computed, Ordering::Relaxed);
        Ok(out)
    }

    /// Scores many items in batches of at most `token_budget` padded tokens: shortest first,
    /// or with prefix reuse on, those that share a prefix together (see
    /// [`prefix::order_for_reuse`]). Results come back in the order of `items`.
    pub fn score_all(&self, items: &[ScoreItem], token_budget: usize) -> Result<Vec<Vec<f32>>> {
        let order = match self.prefix.is_on() {
            true => prefix::order_for_reuse(items),
            false => {
                let mut order: Vec<usize> = (0..items.len()).collect();
                order.sort_by_key(|&i| items[i].input_len());
                order
            }
        };
        let mut out = vec![Vec::new(); items.len()];
        for chunk in batches(&order, |i| items[i].input_len(), token_budget) {
            let batch: Vec<ScoreItem> = chunk.iter().map(|&i| items[i].clone()).collect();
            for (&i, scores) in chunk.iter().zip(self.score(&batch)?) {
                out[i] = scores;
            }
        }
        Ok(out)
    }

    /// Gradient attribution of `job` (see [`gradient::attribute`]), planned as the model was
    /// loaded; `progress(done, total)`, after each chunk of steps and between the target tokens'
    /// passes (waves of them on a CPU), stops the work when it fails.
    pub fn gradients(
        &self,
        job: &GradientJob,
        progress: &dyn Fn(usize, usize) -> Result<()>,
    ) -> Result<Vec<Vec<f64>>> {
        self.gradients_laid_out(job, self.gradients, progress)
    }

    /// [`Model::gradients`] with a chosen plan: every plan gives the same numbers, which the
    /// tests check on a CPU for the one a GPU uses.
    pub fn gradients_laid_out(
        &self,
        job: &GradientJob,
        plan: GradientPlan,
        progress: &dyn Fn(usize, usize) -> Result<()>,
    ) -> Result<Vec<Vec<f64>>> {
        let item = ScoreItem {
            prompt: job.prompt.clone(),
            target: job.target.clone(),
        };
        self.check(&item, "text")?;
        if self.device().is_cpu() && self.arch.info().dtype == DType::BF16.as_str() {
            return Err(Error::invalid("dtype", kernels::bf16::NO_GRADIENTS));
        }
        if let Some(b) = &job.baseline {
            self.check(
                &ScoreItem {
                    prompt: b.clone(),
                    target: job.target.clone(),
                },
                "baseline_token",
            )?;
        }
        gradient::attribute(self.arch(), job, plan, progress)
    }

    /// Greedy continuation of `prompt` (ids), stopping at an end-of-sequence token.
    pub fn generate(&self, prompt: &[u32], max_new_tokens: usize) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Err(Error::invalid("prompt", "the prompt is empty"));
        }
        let ctx = self.context_length();
        if prompt.len() + max_new_tokens > ctx {
            return Err(Error::too_large(
                "max_new_tokens",
                format!(
                    "{} prompt tokens + {max_new_tokens} new tokens exceed the context length of {ctx}",
                    prompt.len()
                ),
            ));
        }
        let vocab = self.info.arch.vocab_size;
        if let Some(id) = prompt.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::invalid(
                "prompt",
                format!("token id {id} is out of range (vocabulary size {vocab})"),
            ));
        }
        Ok(greedy(
            self.arch.as_ref(),
            prompt,
            max_new_tokens,
            self.tokenizer.eos_ids(),
        )?)
    }
}

/// Scores `batch` with `run`; when a pass runs out of device memory, scores each half in turn
/// (recursively), so a batch too big for the device still completes and only a sequence that
/// does not fit on its own fails. `device` names the device in that error.
pub(crate) fn split_on_oom<R, F>(batch: &[ScoreItem], run: &mut F, device: &str) -> Result<R>
where
    R: Joined,
    F: FnMut(&[ScoreItem]) -> candle_core::Result<R>,
{
    match run(batch) {
        Ok(scores) => Ok(scores),
        Err(e) if device::is_out_of_memory(&e) && batch.len() > 1 => {
            let longest = batch.iter().map(ScoreItem::input_len).max().unwrap_or(0);
            tracing::warn!(
                sequences = batch.len(),
                padded_tokens = longest * batch.len(),
                "{device} ran out of memory; scoring the batch in halves (a smaller --batch-tokens avoids this)"
            );
            let (a, b) = batch.split_at(batch.len() / 2);
            let out = split_on_oom(a, run, device)?;
            Ok(out.joined(split_on_oom(b, run, device)?))
        }
        Err(e) if device::is_out_of_memory(&e) => Err(Error::too_large(
            "sequences",
            format!(
                "a sequence of {} tokens does not fit in the memory of {device} ({e})",
                batch.first().map_or(0, ScoreItem::input_len)
            ),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Results of consecutive parts of a batch, joined in order.
pub(crate) trait Joined {
    fn joined(self, next: Self) -> Self;
}

impl Joined for Vec<Vec<f32>> {
    fn joined(mut self, next: Self) -> Self {
        self.extend(next);
        self
    }
}

impl Joined for BatchScores {
    fn joined(self, next: Self) -> Self {
        self.join(next)
    }
}

/// The one greedy-generation loop: the prompt in one step, then one token per step through the
/// KV cache; stops after `max_new_tokens` or at a `stop` id (which is included).
pub fn greedy(
    arch: &dyn Architecture,
    prompt: &[u32],
    max_new_tokens: usize,
    stop: &[u32],
) -> candle_core::Result<Vec<u32>> {
    let mut out = Vec::with_capacity(max_new_tokens);
    let mut cache = arch.new_cache();
    let mut input = prompt.to_vec();
    while out.len() < max_new_tokens && !input.is_empty() {
        let ids = Tensor::new(input.as_slice(), arch.device())?.unsqueeze(0)?;
        let hidden = arch.step(&ids, &mut cache)?;
        let logits = arch.logits(&hidden)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let next = arch::kv_cache::argmax(&logits[0]);
        out.push(next);
        if stop.contains(&next) {
            break;
        }
        input = vec![next];
    }
    Ok(out)
}

/// Splits `order` (already sorted by length) into consecutive runs whose padded size
/// (count x longest) stays within `budget`; a run always holds at least one item.
pub fn batches<F: Fn(usize) -> usize>(order: &[usize], len: F, budget: usize) -> Vec<&[usize]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut longest = 0;
    for (k, &i) in order.iter().enumerate() {
        let l = len(i).max(longest);
        if k > start && l * (k - start + 1) > budget {
            out.push(&order[start..k]);
            start = k;
            longest = len(i);
        } else {
            longest = l;
        }
    }
    if start < order.len() {
        out.push(&order[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: u32) -> ScoreItem {
        ScoreItem {
            prompt: vec![n; n as usize],
            target: vec![n],
        }
    }

    fn oom() -> candle_core::Error {
        candle_core::Error::Msg("DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into())
    }

    /// An injected out-of-memory failure on batches over 3 sequences: the batch is split until
    /// the parts fit, and the results come back complete and in order.
    #[test]
    fn out_of_memory_splits_the_batch() {
        let batch: Vec<ScoreItem> = (1..=7).map(item).collect();
        let mut sizes = Vec::new();
        let mut run = |part: &[ScoreItem]| {
            sizes.push(part.len());
            if part.len() > 3 {
                return Err(oom());
            }
            Ok(part.iter().map(|it| vec![it.prompt.len() as f32]).collect())
        };
        let out: Vec<Vec<f32>> = split_on_oom(&batch, &mut run, "cuda:0").unwrap();
        assert_eq!(out, (1..=7).map(|n| vec![n as f32]).collect::<Vec<_>>());
        assert_eq!(sizes, [7, 3, 4, 2, 2]);
    }

    /// Only a single sequence that does not fit fails, with an error naming the device; other
    /// errors pass through unsplit.
    #[test]
    fn out_of_memory_on_one_sequence_fails_clearly() {
        let batch: Vec<ScoreItem> = (1..=4).map(item).collect();
        let mut run = |part: &[ScoreItem]| {
            if part.iter().any(|it| it.prompt.len() == 3) {
                return Err(oom());
            }
            Ok(vec![vec![0.0]; part.len()])
        };
        let e = split_on_oom(&batch, &mut run, "cuda:0").unwrap_err();
        assert_eq!(e.field(), Some("sequences"));
        assert!(
            e.to_string()
                .contains("3 tokens does not fit in the memory of cuda:0"),
            "{e}"
        );
        let mut calls = 0;
        let mut other = |_: &[ScoreItem]| -> candle_core::Result<Vec<Vec<f32>>> {
            calls += 1;
            Err(candle_core::Error::Msg("shape mismatch".into()))
        };
        assert!(matches!(
            split_on_oom(&batch, &mut other, "cpu"),
            Err(Error::Model(_))
        ));
        assert_eq!(calls, 1);
    }

    #[test]
    fn batches_respect_the_budget() {
        let lens = [3usize, 3, 4, 10, 10, 30];
        let order: Vec<usize> = (0..lens.len()).collect();
        let out = batches(&order, |i| lens[i], 20);
        assert_eq!(out, vec![&[0, 1, 2][..], &[3, 4][..], &[5][..]]);
        for b in &out {
            let longest = b.iter().map(|&i| lens[i]).max().unwrap();
            assert!(b.len() == 1 || longest * b.len() <= 20);
        }
    }
}
