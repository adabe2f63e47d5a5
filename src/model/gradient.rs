//! Gradients of the target tokens' log-probs with respect to the input embeddings, for the
//! gradient methods (Captum's LayerIntegratedGradients and LayerGradientXActivation on the
//! embedding layer, as LLMGradientAttribution runs them, and gradient SHAP's random points on
//! the same path).
//!
//! Captum runs one forward and backward pass per target token, over the prompt and the target
//! tokens before it. Here one forward pass over the prompt and the whole target (but its last
//! token) serves every target token, since a causal model's prediction of target token k never
//! sees what comes after it; the interpolation steps go through it as one batch (in chunks
//! that bound the memory the backward pass keeps), and each target token gets its own backward
//! pass through that shared graph. Only differentiable ops are used
//! ([`Architecture::forward_from_embeddings`]).

use candle_core::{DType, Tensor, Var, D};

use crate::error::{Error, Result};
use crate::model::Architecture;

/// Padded tokens of one chunk of interpolation steps: bounds the activations a backward pass
/// keeps (about 1 MB per token for a 135M-parameter model).
pub const GRADIENT_TOKEN_BUDGET: usize = 1024;

/// One gradient attribution. Point s of the path gives, for target token k and prompt
/// position p, `q[k][s][p] = (x_p - b_p) . grad_{x_p} f_k(b + a_s (x - b))`, where x is the
/// embedding of the prompt followed by the target's earlier tokens, b the baseline's, and f_k
/// the log-prob (or prob) of target token k; `combine` says how the points make rows.
#[derive(Debug, Clone)]
pub struct GradientJob {
    pub prompt: Vec<u32>,
    /// Baseline ids, as long as `prompt` (the target tokens are never replaced); `None`: the
    /// zero embedding (gradient × input).
    pub baseline: Option<Vec<u32>>,
    pub target: Vec<u32>,
    /// Points along the path, in [0, 1].
    pub alphas: Vec<f64>,
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
    pub fn rows_per_token(&self, points: usize) -> usize {
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

    /// The rows the job gives: per target token, one (weighted) or one per point.
    pub fn n_rows(&self) -> usize {
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
/// `job.combine` says).
/// `progress(done, total)` is called after each chunk of steps and stops the work when it
/// fails (cancellation).
pub fn attribute(
    arch: &dyn Architecture,
    job: &GradientJob,
    token_budget: usize,
    progress: &mut dyn FnMut(usize, usize) -> Result<()>,
) -> Result<Vec<Vec<f64>>> {
    job.check()?;
    let dev = arch.device();
    let (p, k) = (job.prompt.len(), job.target.len());
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
    let diff_f32 = diff.squeeze(0)?.to_dtype(DType::F32)?;
    let n = job.alphas.len();
    // Equal chunks of at most `token_budget` tokens.
    let chunks = (n * len).div_ceil(token_budget).clamp(1, n);
    let per_chunk = n.div_ceil(chunks);
    let mut attr = vec![vec![0.0f64; p]; job.n_rows()];
    let mut done = 0;
    while done < n {
        let m = per_chunk.min(n - done);
        let alphas: Vec<f32> = job.alphas[done..done + m].iter().map(|&a| a as f32).collect();
        let alphas = Tensor::from_vec(alphas, (m, 1, 1), dev)?.to_dtype(x.dtype())?;
        // The steps' embeddings, as one batch.
        let points = Var::from_tensor(&base.broadcast_add(&diff.broadcast_mul(&alphas)?)?)?;
        let hidden = arch.forward_from_embeddings(points.as_tensor())?;
        let rows = hidden.narrow(1, p - 1, k)?;
        for row in 0..k {
            let grads = target_value(arch, &rows, row, job.target[row], job.prob)?
                .sum_all()?
                .backward()?;
            let g = grads
                .get(points.as_tensor())
                .ok_or_else(|| Error::Internal("no gradient reached the embeddings".into()))?
                .to_dtype(DType::F32)?;
            // q[s][p] of this chunk's points.
            let q = g
                .broadcast_mul(&diff_f32)?
                .sum(2)?
                .narrow(1, 0, p)?
                .to_vec2::<f32>()?;
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
    debug_assert_eq!(len, p + k - 1);
    Ok(attr)
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
    let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let f = log_probs.narrow(1, target as usize, 1)?;
    if prob {
        f.exp()
    } else {
        Ok(f)
    }
}
