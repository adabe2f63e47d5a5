//! Language models: loading, teacher-forced scoring of target continuations, greedy generation.
//!
//! The model owns the tensors. Everything above this module sees token ids and log-probs.

pub mod gguf;
pub mod gpt2;
pub mod llama;
pub mod spec;
pub mod tokenizer;

use std::sync::Arc;

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use serde::Serialize;

use crate::error::{Error, Result};
pub use spec::ModelSpec;
pub use tokenizer::Tokenizer;

/// What one architecture file provides. Inputs are right-padded `[batch, len]` u32 ids with
/// positions starting at 0; the causal mask alone keeps padding (always after the real tokens)
/// out of every real position.
pub trait Architecture: Send + Sync {
    /// Final hidden states (after the last norm), `[batch, len, hidden]`.
    fn hidden(&self, ids: &Tensor) -> candle_core::Result<Tensor>;
    /// Final hidden states at `rows` only (u32 indices into the `batch * len` positions),
    /// `[n, hidden]`. An architecture may override it to skip work that feeds no selected row;
    /// by default it runs `hidden` and picks the rows.
    fn hidden_rows(&self, ids: &Tensor, rows: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let h = self.hidden(ids)?;
        let d = h.dim(2)?;
        h.reshape((b * t, d))?.index_select(rows, 0)
    }
    /// LM head on selected rows: `[n, hidden]` -> `[n, vocab]`.
    fn logits(&self, hidden: &Tensor) -> candle_core::Result<Tensor>;
    /// Greedy continuation with a KV cache; stops after `max_new_tokens` or at a `stop` id
    /// (which is included in the result).
    fn generate(&self, prompt: &[u32], max_new_tokens: usize, stop: &[u32]) -> candle_core::Result<Vec<u32>>;
    fn info(&self) -> ArchInfo;
}

/// Static facts about a loaded architecture.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ArchInfo {
    /// `gpt2` or `llama`.
    pub architecture: String,
    pub parameters: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub hidden_size: usize,
    pub layers: usize,
    pub heads: usize,
    /// Data type the forward pass runs in.
    pub dtype: String,
}

/// `GET /v1/model`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModelInfo {
    /// The spec the model was loaded from (`hf:ORG/NAME`, a directory or a `.gguf` file).
    pub spec: String,
    #[serde(flatten)]
    pub arch: ArchInfo,
}

/// One sequence to score: log p(target_k | prompt, target_<k) for every k.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScoreItem {
    pub prompt: Vec<u32>,
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
}

impl Model {
    pub fn new(arch: Box<dyn Architecture>, tokenizer: Tokenizer, spec: &str) -> Self {
        let info = ModelInfo {
            spec: spec.to_string(),
            arch: arch.info(),
        };
        Model {
            arch,
            tokenizer,
            info,
            device: Device::Cpu,
        }
    }

    /// Loads a model from a spec: `hf:ORG/NAME[@REV]`, a directory, or a `.gguf` file.
    pub fn load(spec: &str) -> Result<Arc<Model>> {
        spec::load(spec).map(Arc::new)
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

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
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        for (i, item) in batch.iter().enumerate() {
            self.check(item, &format!("sequences[{i}]"))?;
        }
        let len = batch.iter().map(ScoreItem::input_len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(batch.len() * len);
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for (b, item) in batch.iter().enumerate() {
            let input = item.prompt.iter().chain(&item.target[..item.target.len() - 1]);
            let start = ids.len();
            ids.extend(input);
            ids.resize(start + len, 0);
            for (k, &t) in item.target.iter().enumerate() {
                rows.push((b * len + item.prompt.len() - 1 + k) as u32);
                targets.push(t);
            }
        }
        let ids = Tensor::from_vec(ids, (batch.len(), len), &self.device)?;
        let rows = Tensor::from_vec(rows, targets.len(), &self.device)?;
        let picked = self.arch.hidden_rows(&ids, &rows)?;
        let logits = self.arch.logits(&picked)?;
        let flat = target_logprobs(&logits, &targets)?;
        let mut out = Vec::with_capacity(batch.len());
        let mut at = 0;
        for item in batch {
            out.push(flat[at..at + item.target.len()].to_vec());
            at += item.target.len();
        }
        Ok(out)
    }

    /// Scores many items in batches of at most `token_budget` padded tokens, shortest first.
    /// Results come back in the order of `items`.
    pub fn score_all(&self, items: &[ScoreItem], token_budget: usize) -> Result<Vec<Vec<f32>>> {
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by_key(|&i| items[i].input_len());
        let mut out = vec![Vec::new(); items.len()];
        for chunk in batches(&order, |i| items[i].input_len(), token_budget) {
            let batch: Vec<ScoreItem> = chunk.iter().map(|&i| items[i].clone()).collect();
            for (&i, scores) in chunk.iter().zip(self.score(&batch)?) {
                out[i] = scores;
            }
        }
        Ok(out)
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
        Ok(self
            .arch
            .generate(prompt, max_new_tokens, self.tokenizer.eos_ids())?)
    }
}

/// `log softmax(logits[i])[targets[i]]` for every row of `[n, vocab]` logits: one parallel pass
/// per row (max, then a sum of exps accumulated in f64), without materialising the full
/// log-softmax matrix.
pub fn target_logprobs(logits: &Tensor, targets: &[u32]) -> Result<Vec<f32>> {
    use rayon::prelude::*;
    let logits = logits.to_dtype(DType::F32)?.contiguous()?;
    let (n, vocab) = logits.dims2()?;
    if n != targets.len() {
        return Err(Error::Internal(format!(
            "{n} rows of logits for {} targets",
            targets.len()
        )));
    }
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= vocab) {
        return Err(Error::Internal(format!(
            "target id {t} is outside the {vocab} logits"
        )));
    }
    let (storage, layout) = logits.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) = (&*storage, layout.contiguous_offsets())
    else {
        return Err(Error::Internal("logits are not contiguous f32 on the CPU".into()));
    };
    Ok(data[start..end]
        .par_chunks(vocab.max(1))
        .zip(targets.par_iter())
        .map(|(row, &t)| (f64::from(row[t as usize]) - logsumexp(row)) as f32)
        .collect())
}

/// `ln(sum(exp(row)))`, written so the compiler vectorises it: 8 independent lanes for the max
/// and for the sum (accumulated in f64), and a polynomial `exp`.
fn logsumexp(row: &[f32]) -> f64 {
    const LANES: usize = 8;
    let chunks = row.chunks_exact(LANES);
    let rest = chunks.remainder();
    let mut m = [f32::NEG_INFINITY; LANES];
    for c in chunks.clone() {
        for i in 0..LANES {
            m[i] = if c[i] > m[i] { c[i] } else { m[i] };
        }
    }
    let max = rest
        .iter()
        .chain(&m)
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    if !max.is_finite() {
        // Empty row, all -inf, or +inf/NaN logits: let f64 arithmetic say so.
        return f64::from(max);
    }
    let mut s = [0f64; LANES];
    for c in chunks {
        for i in 0..LANES {
            s[i] += f64::from(exp_neg(c[i] - max));
        }
    }
    let sum: f64 = s.iter().sum::<f64>() + rest.iter().map(|&x| f64::from(exp_neg(x - max))).sum::<f64>();
    f64::from(max) + sum.ln()
}

/// `exp(x)` for `x <= 0` (x = logit - max), relative error below 2e-7; exactly 0 below -87.
/// Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, then a degree-6 polynomial for exp(r).
#[inline(always)]
fn exp_neg(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Round to nearest without a libm call: adding 1.5 * 2^23 pushes the fraction out.
    const MAGIC: f32 = 12_582_912.0;
    let below = x < -87.0;
    let x = if below { -87.0 } else { x };
    let n = (x * LOG2E + MAGIC) - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if below {
        0.0
    } else {
        p * scale
    }
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

    #[test]
    fn exp_neg_is_accurate() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let want = f64::from(x).exp();
            let got = f64::from(exp_neg(x));
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_3;
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert_eq!(exp_neg(0.0), 1.0);
        assert_eq!(exp_neg(-1000.0), 0.0);
        assert_eq!(exp_neg(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn target_logprobs_match_f64_log_softmax() {
        let n = 5;
        let vocab = 50_257;
        let logits = (Tensor::randn(0f32, 4.0, (n, vocab), &Device::Cpu).unwrap() * 1.0).unwrap();
        let targets: Vec<u32> = vec![0, 17, 50_256, 3, 25_000];
        let got = target_logprobs(&logits, &targets).unwrap();
        let rows = logits.to_vec2::<f32>().unwrap();
        for ((row, &t), g) in rows.iter().zip(&targets).zip(&got) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
            let want = row[t as usize] as f64 - lse;
            assert!((*g as f64 - want).abs() < 2e-5, "{g} vs {want}");
        }
        // Short rows (below one lane group) and a row with -inf entries.
        let small = Tensor::new(&[[0f32, f32::NEG_INFINITY, 1.0]], &Device::Cpu).unwrap();
        let lp = target_logprobs(&small, &[2]).unwrap()[0];
        let want = 1.0 - (1f64 + 1f64.exp()).ln();
        assert!((lp as f64 - want).abs() < 1e-6);
        assert_eq!(target_logprobs(&small, &[1]).unwrap()[0], f32::NEG_INFINITY);
        assert!(target_logprobs(&small, &[3]).is_err());
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
