//! Gradients of the target tokens' log-probs with respect to the input embeddings, for the
//! gradient methods (Captum's LayerIntegratedGradients and LayerGradientXActivation on the
//! embedding layer, as LLMGradientAttribution runs them, and gradient SHAP's random points on
//! the same path).
//!
//! Captum runs one forward and backward pass per target token, over the prompt and the target
//! tokens before it. Here one forward pass over the prompt and the whole target (but its last
//! token) serves every target token, since a causal model's prediction of target token k never
//! sees what comes after it; the interpolation steps go through it as one batch (in chunks
//! that bound the memory the backward pass keeps). How the target tokens then get their own
//! gradients depends on the device and on how many points the job has ([`GradientPlan`]). Only differentiable ops are used
//! ([`Architecture::forward_from_embeddings`]).

use std::cell::Cell;
use std::ops::Range;

use candle_core::{DType, Tensor, Var, D};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::model::arch::Architecture;
use crate::model::device::{self, GradientPlan, Passes};
use crate::model::kernels::backward;

/// One gradient attribution. Point s of the path gives, for target token k and prompt
/// position p, `q[k][s][p] = (x_p - b_p) . grad_{x_p} f_k(b + a_s (x - b))`, where x is the
/// embedding of the prompt followed by the target's earlier tokens, b the baseline's, and f_k
/// the log-prob (or prob) of target token k; `combine` says how the points make rows.
#[derive(Debug, Clone)]
pub struct GradientJob {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Baseline ids, as long as `prompt` (the target tokens are never replaced); `None`: the
    /// zero embedding (gradient × input).
    pub baseline: Option<Vec<u32>>,
    /// Target token ids; each gets its rows of gradients.
    pub target: Vec<u32>,
    /// Points along the path, in [0, 1].
    pub alphas: Vec<f64>,
    /// How the points make the rows.
    pub combine: Combine,
    /// Differentiate the probability instead of the log-prob.
    pub prob: bool,
}

/// How the points' gradients make the job's rows.
#[derive(Debug, Clone, PartialEq)]
pub enum Combine {
    /// An integral: one row per target token, `sum_s w_s q[k][s]`, a weight per point.
    Weighted(Vec<f64>),
    /// Every point's own row, `q[k][s]` at row `k * points + s`: for a method that samples the
    /// points and estimates its standard errors from them.
    EachPoint,
}

impl Combine {
    /// Rows per target token, for a job of `points` points.
    pub(crate) fn rows_per_token(&self, points: usize) -> usize {
        match self {
            Combine::Weighted(_) => 1,
            Combine::EachPoint => points,
        }
    }
}

impl GradientJob {
    /// The prompt and the target's earlier tokens: the sequence every target token is
    /// predicted from.
    fn sequence(&self, prompt: &[u32]) -> Vec<u32> {
        let mut ids = prompt.to_vec();
        ids.extend(&self.target[..self.target.len() - 1]);
        ids
    }

    /// Its work, as `/v1/plan` counts it and the engine measures it: tokens times the passes
    /// over them, `points x sequence x (1 + target tokens)` (a forward pass and a backward pass
    /// per target token), and the tokens the forward pass feeds, `points x sequence`.
    pub fn work(&self) -> (usize, usize) {
        let forward = self.alphas.len() * (self.prompt.len() + self.target.len().saturating_sub(1));
        (forward * (1 + self.target.len()), forward)
    }

    /// The rows the job gives: per target token, one (weighted) or one per point.
    pub(crate) fn n_rows(&self) -> usize {
        self.target.len() * self.combine.rows_per_token(self.alphas.len())
    }

    /// Fails on a job of the wrong shape (the run layer builds jobs from checked requests).
    pub fn check(&self) -> Result<()> {
        let weights = match &self.combine {
            Combine::Weighted(w) => w.len(),
            Combine::EachPoint => self.alphas.len(),
        };
        if self.alphas.is_empty() || weights != self.alphas.len() {
            return Err(Error::Internal("a gradient job needs one weight per step".into()));
        }
        if self.target.is_empty() || self.prompt.is_empty() {
            return Err(Error::Internal(
                "a gradient job needs a prompt and a target".into(),
            ));
        }
        if self
            .baseline
            .as_ref()
            .is_some_and(|b| b.len() != self.prompt.len())
        {
            return Err(Error::Internal(
                "the baseline is not as long as the prompt".into(),
            ));
        }
        Ok(())
    }
}

/// Runs `job` on `arch`: rows over the prompt positions, per target token (and point, as
/// `job.combine` says), with the passes and chunks `plan` says.
/// `progress(done, total)` is called after each chunk of steps, and between the target tokens'
/// backward passes (or waves of them) with the chunk's start, and stops the work when it fails
/// (cancellation): a long target never runs on for more than one wave after its request is
/// gone.
pub(crate) fn attribute(
    arch: &dyn Architecture,
    job: &GradientJob,
    plan: GradientPlan,
    progress: &dyn Fn(usize, usize) -> Result<()>,
) -> Result<Vec<Vec<f64>>> {
    job.check()?;
    let path = Path::new(arch, job)?;
    let n = job.alphas.len();
    let passes = plan.passes(n, path.len, job.target.len());
    let copies = match passes {
        Passes::PerToken => 1,
        Passes::Stacked => job.target.len(),
    };
    // Equal chunks of at most `token_budget` tokens.
    let chunks = (n * path.len * copies).div_ceil(plan.token_budget).clamp(1, n);
    let per_chunk = n.div_ceil(chunks);
    let mut attr = vec![vec![0.0f64; path.prompt_len]; job.n_rows()];
    let mut done = 0;
    let device = device::name(arch.device());
    // Why `progress` stopped the job between passes; candle's error only carries it out.
    let stopped = Cell::new(None);
    let run = |range: Range<usize>| {
        let between = || {
            progress(range.start, n).map_err(|e| {
                stopped.set(Some(e));
                candle_core::Error::Msg("stopped".into())
            })
        };
        let points = path.points(&job.alphas[range.clone()])?;
        match passes {
            Passes::PerToken => per_token(arch, job, &path, &points, &between),
            Passes::Stacked => stacked(arch, job, &path, &points),
        }
    };
    while done < n {
        let m = per_chunk.min(n - done);
        let q = halving_on_oom(done..done + m, &run, &device).map_err(|e| stopped.take().unwrap_or(e))?;
        // q[row][i]: target token `row` at the chunk's point i.
        for (row, q) in q.iter().enumerate() {
            for (i, q) in q.iter().enumerate() {
                let s = done + i;
                let (out, w) = match &job.combine {
                    Combine::Weighted(w) => (&mut attr[row], w[s]),
                    Combine::EachPoint => (&mut attr[row * n + s], 1.0),
                };
                for (a, &v) in out.iter_mut().zip(q) {
                    *a += w * f64::from(v);
                }
            }
        }
        done += m;
        progress(done, n)?;
    }
    Ok(attr)
}

/// The straight path from the baseline's embeddings to the input's, over the prompt and the
/// target's earlier tokens (the target tokens are never replaced, so their difference is 0).
struct Path {
    base: Tensor,
    diff: Tensor,
    /// `diff` as `[len, hidden]` f32, for projecting gradients onto the path.
    diff_f32: Tensor,
    prompt_len: usize,
    len: usize,
}

impl Path {
    fn new(arch: &dyn Architecture, job: &GradientJob) -> Result<Path> {
        let dev = arch.device();
        let embed = |ids: Vec<u32>| -> candle_core::Result<Tensor> {
            arch.embed(&Tensor::new(ids.as_slice(), dev)?.unsqueeze(0)?)
        };
        let x = embed(job.sequence(&job.prompt))?;
        let base = match &job.baseline {
            Some(b) => embed(job.sequence(b))?,
            None => x.zeros_like()?,
        };
        let diff = (&x - &base)?;
        let len = x.dim(1)?;
        debug_assert_eq!(len, job.prompt.len() + job.target.len() - 1);
        Ok(Path {
            diff_f32: diff.squeeze(0)?.to_dtype(DType::F32)?,
            base,
            diff,
            prompt_len: job.prompt.len(),
            len,
        })
    }

    /// The embeddings at `alphas` along the path, `[points, len, hidden]`.
    fn points(&self, alphas: &[f64]) -> candle_core::Result<Tensor> {
        let alphas: Vec<f32> = alphas.iter().map(|&a| a as f32).collect();
        let n = alphas.len();
        let alphas = Tensor::from_vec(alphas, (n, 1, 1), self.base.device())?.to_dtype(self.base.dtype())?;
        self.base.broadcast_add(&self.diff.broadcast_mul(&alphas)?)
    }

    /// `q[s][p] = (x_p - b_p) . g[s][p]` at each prompt position, for gradients `g` at points
    /// (`[points, len, hidden]`).
    fn project(&self, g: &Tensor) -> candle_core::Result<Vec<Vec<f32>>> {
        g.to_dtype(DType::F32)?
            .broadcast_mul(&self.diff_f32)?
            .sum(2)?
            .narrow(1, 0, self.prompt_len)?
            .to_vec2::<f32>()
    }
}

/// [`Passes::PerToken`]: `q[row][s]` for the points, one shared forward pass and a backward
/// pass per target token, with `between()` before each wave of passes but the first.
///
/// On a CPU with several threads, the passes go in waves of one per thread, run at once: about
/// a third of a backward pass is candle's single-threaded elementwise work (adding up each
/// node's gradient), which the other passes' matmuls then overlap. The passes are independent,
/// so the numbers are the same.
fn per_token(
    arch: &dyn Architecture,
    job: &GradientJob,
    path: &Path,
    points: &Tensor,
    between: &dyn Fn() -> candle_core::Result<()>,
) -> candle_core::Result<Rows> {
    let points = Var::from_tensor(points)?;
    let hidden = arch.forward_from_embeddings(points.as_tensor())?;
    let rows = hidden.narrow(1, path.prompt_len - 1, job.target.len())?;
    let pass = |row: usize| {
        let value = target_value(arch, &rows, row, job.target[row], job.prob)?;
        path.project(&gradient(&value, &points)?)
    };
    let wave = threads(arch);
    let mut out = Vec::with_capacity(job.target.len());
    for start in (0..job.target.len()).step_by(wave) {
        if start > 0 {
            between()?;
        }
        let end = (start + wave).min(job.target.len());
        out.extend(at_once((start..end).collect(), pass)?);
    }
    Ok(out)
}

/// [`Passes::Stacked`]: `q[row][s]` for the points, from copy `row` of them, whose value is
/// target token `row`'s alone; one backward pass for all, after a forward pass whose weight
/// matmuls compute one copy ([`Architecture::forward_from_copies`]). On a CPU with several
/// threads the target tokens go in as many stacks, run at once, for the reason
/// [`per_token`] gives.
fn stacked(
    arch: &dyn Architecture,
    job: &GradientJob,
    path: &Path,
    points: &Tensor,
) -> candle_core::Result<Rows> {
    let stacks = per_thread(arch, job.target.len());
    let q = at_once(stacks, |rows| stack(arch, job, path, points, rows))?;
    Ok(q.into_iter().flatten().collect())
}

/// `f` of each of `items`, in order: at once on the thread pool when there are several, and on
/// this thread when there is one (a GPU's passes stay on the thread that runs the job).
fn at_once<I: Send, T: Send>(
    items: Vec<I>,
    f: impl Fn(I) -> candle_core::Result<T> + Sync + Send,
) -> candle_core::Result<Vec<T>> {
    match items.len() {
        0 | 1 => items.into_iter().map(f).collect(),
        _ => items.into_par_iter().map(f).collect(),
    }
}

/// The target tokens `rows` of [`stacked`] as one stack: `q[row][s]` for each.
fn stack(
    arch: &dyn Architecture,
    job: &GradientJob,
    path: &Path,
    points: &Tensor,
    rows: Range<usize>,
) -> candle_core::Result<Rows> {
    let (m, k) = (points.dim(0)?, rows.len());
    let copies = Var::from_tensor(&points.repeat((k, 1, 1))?)?;
    let hidden = arch.forward_from_copies(copies.as_tensor(), k)?;
    let ends = hidden.narrow(1, path.prompt_len - 1, job.target.len())?;
    let values = rows
        .clone()
        .enumerate()
        .map(|(c, row)| target_value(arch, &ends.narrow(0, c * m, m)?, row, job.target[row], job.prob))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let g = gradient(&Tensor::cat(&values, 0)?, &copies)?;
    (0..k).map(|c| path.project(&g.narrow(0, c * m, m)?)).collect()
}

/// `0..n` cut into one contiguous range per thread on a CPU (fewer when `n` is smaller), or
/// one range elsewhere.
fn per_thread(arch: &dyn Architecture, n: usize) -> Vec<Range<usize>> {
    split(n, threads(arch))
}

/// How many passes or stacks run at once: one per thread of the pool on a CPU, one on a GPU.
fn threads(arch: &dyn Architecture) -> usize {
    match arch.device().is_cpu() {
        true => rayon::current_num_threads().max(1),
        false => 1,
    }
}

/// `0..n` cut into at most `parts` contiguous ranges of (nearly) equal length, in order.
fn split(n: usize, parts: usize) -> Vec<Range<usize>> {
    let size = n.div_ceil(parts.clamp(1, n.max(1))).max(1);
    (0..n).step_by(size).map(|a| a..(a + size).min(n)).collect()
}

/// The gradient of the sum of `value` with respect to `at`.
fn gradient(value: &Tensor, at: &Var) -> candle_core::Result<Tensor> {
    let grads = value.sum_all()?.backward()?;
    match grads.get(at.as_tensor()) {
        Some(g) => Ok(g.clone()),
        None => candle_core::bail!("no gradient reached the embeddings"),
    }
}

/// `q[row][i]`: the projected gradients of target token `row` at point i of a chunk.
type Rows = Vec<Vec<Vec<f32>>>;

/// `run` over the points `range`. A range that runs out of device memory runs in halves; only
/// a single point that does not fit fails, with an error that says so.
fn halving_on_oom(
    range: Range<usize>,
    run: &dyn Fn(Range<usize>) -> candle_core::Result<Rows>,
    device: &str,
) -> Result<Rows> {
    match run(range.clone()) {
        Ok(q) => Ok(q),
        Err(e) if device::is_out_of_memory(&e) && range.len() > 1 => {
            tracing::warn!(
                points = range.len(),
                "{device} ran out of memory; the gradient chunk runs in halves"
            );
            let mid = range.start + range.len() / 2;
            let mut q = halving_on_oom(range.start..mid, run, device)?;
            for (row, more) in q.iter_mut().zip(halving_on_oom(mid..range.end, run, device)?) {
                row.extend(more);
            }
            Ok(q)
        }
        Err(e) if device::is_out_of_memory(&e) => Err(Error::too_large(
            "text",
            format!("one point of the gradient path does not fit in the memory of {device} ({e})"),
        )),
        Err(e) => Err(e.into()),
    }
}

/// f_k of every step, `[steps]`: the log-prob (or prob) of target token `row` (`target`) from
/// the final hidden states `rows` (`[steps, target tokens, hidden]`). Each target token has its
/// own head and log-softmax, so its backward pass never runs through the others' vocabularies;
/// the head is a 2-D matmul, as a batched one would broadcast its weight to every step (and its
/// backward pass would build a gradient that size).
fn target_value(
    arch: &dyn Architecture,
    rows: &Tensor,
    row: usize,
    target: u32,
    prob: bool,
) -> candle_core::Result<Tensor> {
    let hidden = rows.narrow(1, row, 1)?.squeeze(1)?.contiguous()?;
    let logits = arch.logits(&hidden)?.to_dtype(DType::F32)?;
    let f = if logits.device().is_cpu() {
        let targets = vec![target; logits.dim(0)?];
        backward::target_log_prob(&logits, &targets)?
    } else {
        candle_nn::ops::log_softmax(&logits, D::Minus1)?.narrow(1, target as usize, 1)?
    };
    if prob {
        f.exp()
    } else {
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    fn oom() -> candle_core::Error {
        candle_core::Error::Msg("DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into())
    }

    /// Two target tokens' rows for the points `range`: point i gives `i` and `-i`.
    fn rows(range: Range<usize>) -> Rows {
        vec![
            range.clone().map(|i| vec![i as f32]).collect(),
            range.map(|i| vec![-(i as f32)]).collect(),
        ]
    }

    /// Chunks over 2 points run out of memory: they run in halves, and every target token's
    /// rows come back whole and in the points' order.
    #[test]
    fn out_of_memory_halves_the_chunk() {
        let sizes = RefCell::new(Vec::new());
        let run = |range: Range<usize>| {
            sizes.borrow_mut().push(range.len());
            if range.len() > 2 {
                return Err(oom());
            }
            Ok(rows(range))
        };
        assert_eq!(halving_on_oom(0..7, &run, "cuda:0").unwrap(), rows(0..7));
        assert_eq!(sizes.into_inner(), [7, 3, 1, 2, 4, 2, 2]);
    }

    /// The stacks cover every target token once, in order, one stack per thread at most.
    #[test]
    fn split_covers_every_token_in_order() {
        for n in 0..12 {
            for parts in 0..6 {
                let ranges = split(n, parts);
                let flat: Vec<usize> = ranges.iter().cloned().flatten().collect();
                assert_eq!(flat, (0..n).collect::<Vec<_>>(), "n {n} parts {parts}");
                assert!(ranges.len() <= parts.max(1), "n {n} parts {parts}: {ranges:?}");
                assert!(ranges.iter().all(|r| !r.is_empty()));
            }
        }
        assert_eq!(split(8, 3), [0..3, 3..6, 6..8]);
    }

    /// Only a single point that does not fit fails, naming the device; other errors pass
    /// through without a retry.
    #[test]
    fn out_of_memory_on_one_point_fails_clearly() {
        let e = halving_on_oom(0..3, &|_| Err(oom()), "cuda:0").unwrap_err();
        assert_eq!(e.field(), Some("text"));
        assert!(
            e.to_string()
                .contains("one point of the gradient path does not fit in the memory of cuda:0"),
            "{e}"
        );
        let calls = RefCell::new(0);
        let other = |_| {
            *calls.borrow_mut() += 1;
            Err(candle_core::Error::Msg("shape mismatch".into()))
        };
        assert!(halving_on_oom(0..4, &other, "cuda:0").is_err());
        assert_eq!(calls.into_inner(), 1);
    }
}
