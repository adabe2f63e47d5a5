//! The forward pass's building blocks in two implementations ([`Kernels`]): fused kernels for
//! scoring and generation ([`ops`]), and differentiable ones for the gradient methods (fused
//! kernels with hand-written backward passes, [`backward`], or composed candle ops), with the
//! activations and RoPE pairings they take.

pub(crate) mod activation;
pub(crate) mod backward;
pub(crate) mod bf16;
pub(crate) mod causal;
pub(crate) mod ops;
pub(crate) mod rope;

use candle_core::{Result, Tensor, D};

pub(crate) use activation::Activation;
pub(crate) use causal::Causal;
use ops::is_cpu_f32;
pub(crate) use rope::RopeStyle;

/// Which implementation a forward pass uses for norms, softmax, RoPE and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// Fused kernels (candle's and this module's): the scoring and generation path. They have
    /// no backward pass; ours fall back to candle ops off CPU f32.
    Fused,
    /// Every step with a backward pass (gradient methods): on CPU f32 the fused kernels with
    /// hand-written backward passes of [`backward`] (its matmul, softmax and RoPE on a GPU
    /// too), elsewhere composed candle ops.
    Differentiable,
    /// [`Kernels::Differentiable`] over a batch that is this many identical copies of its
    /// first part, one after the other (a copy per target token, each to be differentiated on
    /// its own): the weight matmuls compute the first copy and repeat it, so only the backward
    /// pass, where the copies differ, does the arithmetic of every copy.
    Copies(usize),
}

impl Kernels {
    pub(crate) fn rms_norm(self, x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
        match self {
            Kernels::Fused => candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps),
            Kernels::Differentiable | Kernels::Copies(_) if is_cpu_f32(x) && is_cpu_f32(weight) => {
                backward::rms_norm(x, weight, eps)
            }
            Kernels::Differentiable | Kernels::Copies(_) => candle_nn::ops::rms_norm_slow(x, weight, eps),
        }
    }

    pub(crate) fn layer_norm(self, x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
        match self {
            Kernels::Fused => candle_nn::ops::layer_norm(x, weight, bias, eps),
            Kernels::Differentiable | Kernels::Copies(_) => {
                candle_nn::ops::layer_norm_slow(x, weight, bias, eps)
            }
        }
    }

    pub(crate) fn softmax_last_dim(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Kernels::Fused => candle_nn::ops::softmax_last_dim(x),
            Kernels::Differentiable | Kernels::Copies(_) if backward::attaches(x) => {
                backward::softmax_last_dim(x)
            }
            Kernels::Differentiable | Kernels::Copies(_) => candle_nn::ops::softmax(x, D::Minus1),
        }
    }

    /// The causal softmax of attention scores in one fused pass without a mask tensor
    /// ([`causal::causal_softmax`]): on CPU f32 with [`Kernels::Fused`]; `None` elsewhere,
    /// where the caller adds the mask and runs [`Kernels::softmax_last_dim`].
    pub(crate) fn causal_softmax(self, att: &Tensor, at: Causal) -> Result<Option<Tensor>> {
        match self {
            Kernels::Fused => causal::causal_softmax(att, at),
            Kernels::Differentiable | Kernels::Copies(_) => Ok(None),
        }
    }

    /// RoPE on `[b, heads, t, head_dim]` with `[t, head_dim / 2]` tables.
    pub(crate) fn rope(self, x: &Tensor, cos: &Tensor, sin: &Tensor, style: RopeStyle) -> Result<Tensor> {
        use candle_nn::rotary_emb as r;
        match (self, style) {
            (Kernels::Fused, RopeStyle::Half) => r::rope(&x.contiguous()?, cos, sin),
            (Kernels::Fused, RopeStyle::Interleaved) => r::rope_i(&x.contiguous()?, cos, sin),
            (Kernels::Differentiable | Kernels::Copies(_), style)
                if backward::attaches(x) && x.dtype() == cos.dtype() =>
            {
                backward::rope(x, cos, sin, style)
            }
            (Kernels::Differentiable | Kernels::Copies(_), RopeStyle::Half) => r::rope_slow(x, cos, sin),
            (Kernels::Differentiable | Kernels::Copies(_), RopeStyle::Interleaved) => {
                r::rope_i_slow(x, cos, sin)
            }
        }
    }

    /// `act(gate) * up` for `[n, 2f]` rows holding gate then up.
    pub(crate) fn gated(self, gate_up: &Tensor, act: Activation) -> Result<Tensor> {
        match self {
            Kernels::Fused => ops::gated(gate_up, act),
            Kernels::Differentiable | Kernels::Copies(_) if is_cpu_f32(gate_up) => {
                backward::gated_act(gate_up, act)
            }
            Kernels::Differentiable | Kernels::Copies(_) => ops::gated_composed(gate_up, act),
        }
    }

    /// `x @ w` for `[n, in]` rows and a weight `w` (`[in, out]`). Differentiable with a
    /// backward pass for `x` alone: candle's own matmul backward also computes the weight's
    /// gradient, which gradient methods never use and which costs as much again. A bf16 weight
    /// on the CPU goes to [`bf16::matmul`] (f32 rows in and out), which has no backward pass.
    pub(crate) fn matmul(self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        match self {
            Kernels::Fused if bf16::applies(w) => bf16::matmul(x, w),
            Kernels::Differentiable if bf16::applies(w) => {
                candle_core::bail!("dtype: {}", bf16::NO_GRADIENTS)
            }
            Kernels::Differentiable if backward::attaches(x) && x.dtype() == w.dtype() => {
                backward::matmul(x, w)
            }
            Kernels::Copies(n) if backward::attaches(x) && x.dtype() == w.dtype() => {
                backward::matmul_copies(x, w, n)
            }
            _ => x.matmul(w),
        }
    }

    /// `act(x + bias)` for `[n, out]` rows.
    pub(crate) fn bias_act(self, x: &Tensor, bias: &Tensor, act: Option<Activation>) -> Result<Tensor> {
        match self {
            Kernels::Fused => ops::bias_act(x, bias, act),
            Kernels::Differentiable | Kernels::Copies(_) => ops::bias_act_composed(x, bias, act),
        }
    }
}
