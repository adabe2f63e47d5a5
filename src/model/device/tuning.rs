//! How the engine drives a device: worker threads, padded tokens per forward pass, and the
//! plan of the gradient methods' passes and chunks.

use candle_core::Device;

/// Default padded-token budget of one forward pass on the CPU.
pub(crate) const DEFAULT_TOKEN_BUDGET: usize = 2048;

/// How the engine drives a device: worker threads, padded tokens per forward pass, and how the
/// gradient methods lay out their passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tuning {
    pub workers: usize,
    pub token_budget: usize,
    pub gradients: GradientPlan,
}

/// Tokens of one chunk of a gradient job on the CPU (about 1 GB of activations at SmolLM2's
/// shape); a job whose copies fit in one is stacked, since its forward pass computes each
/// weight matmul for one copy ([`crate::model::kernels::Kernels::Copies`]) and its one
/// backward pass multiplies every copy's gradients in one bigger matmul per weight.
const CPU_GRADIENT_CHUNK: usize = 1024;

/// Tokens of one chunk of a gradient job on a GPU.
const GPU_GRADIENT_CHUNK: usize = 4096;

/// A CPU forward pass already uses every core, so one worker; batches past ~2k tokens gain
/// nothing there, and its gradient passes are bound by arithmetic. A GPU needs big batches to
/// be busy, and one worker per GPU keeps passes from competing for its memory (the 125
/// sequences of an exact three-feature request fit in one); its gradient passes on few points
/// are bound by kernel launches, so they are stacked up to a chunk (see [`Passes`]).
pub(crate) fn tuning(device: &Device) -> Tuning {
    match device {
        Device::Cpu => Tuning {
            workers: 1,
            token_budget: DEFAULT_TOKEN_BUDGET,
            gradients: GradientPlan {
                stack_up_to: CPU_GRADIENT_CHUNK,
                token_budget: CPU_GRADIENT_CHUNK,
            },
        },
        _ => Tuning {
            workers: 1,
            token_budget: 16_384,
            // Stacked while the whole job fits one chunk: beyond, the copies' arithmetic
            // outweighs the launches they save.
            gradients: GradientPlan {
                stack_up_to: GPU_GRADIENT_CHUNK,
                token_budget: GPU_GRADIENT_CHUNK,
            },
        },
    }
}

/// Which passes a job's points take, and how big a chunk of them may be
/// ([`tuning`] says what suits a device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GradientPlan {
    /// A job is [`Passes::Stacked`] when its copies of all its points come to at most this
    /// many tokens, else [`Passes::PerToken`]. 0: never stacked; `usize::MAX`: always.
    pub stack_up_to: usize,
    /// Tokens of one chunk (all its copies): bounds the activations a backward pass keeps
    /// (about 1 MB per token for a 135M-parameter model in f32, 6 MB for an 8B one in bf16).
    pub token_budget: usize,
}

impl GradientPlan {
    /// The passes of a job of `points` points, each `len` tokens, and `k` target tokens.
    pub fn passes(&self, points: usize, len: usize, k: usize) -> Passes {
        if points.saturating_mul(len).saturating_mul(k) <= self.stack_up_to {
            Passes::Stacked
        } else {
            Passes::PerToken
        }
    }

    /// This plan with its passes fixed (`--gradient-passes`).
    pub fn forced(self, passes: Passes) -> GradientPlan {
        let stack_up_to = match passes {
            Passes::PerToken => 0,
            Passes::Stacked => usize::MAX,
        };
        GradientPlan { stack_up_to, ..self }
    }
}

/// How each target token gets its own gradients. Timed on an H200 on a 20-token prompt and a
/// 9-token target (scripts/gpu-check.sh, one run): gradient × input, 1 point, took 0.07 s
/// stacked and 0.42 s per token at SmolLM2's shape (0.13 and 0.66 s at Llama-3.1-8B's), and
/// integrated gradients, 50 points, 0.50 s stacked and 0.43 s per token (2.74 and 2.05 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Passes {
    /// One forward pass that every target token shares, then a backward pass per token: the
    /// least passes' overhead for many points, where the matmuls are big already.
    PerToken,
    /// A copy of the points per target token, each copy differentiating its own token's
    /// value, so one forward and one backward pass serve them all. The forward pass's weight
    /// matmuls compute one copy; its other ops and the backward pass run on every copy, in k
    /// times fewer kernel launches (a GPU's time on few points) and matmuls k times as tall
    /// (a CPU's on few points: small matmuls waste it).
    Stacked,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Integrated gradients' 50 points run a pass per token on a GPU; gradient × input's one
    /// point and gradient SHAP's 5 are stacked (t1_grad: 28 tokens, 9 target tokens). Forcing
    /// the passes overrides the rule.
    #[test]
    fn a_gpu_stacks_few_points_and_runs_many_per_token() {
        let cpu = tuning(&candle_core::Device::Cpu).gradients;
        assert_eq!(cpu.passes(1, 28, 9), Passes::Stacked, "the CPU stacks one point");
        assert_eq!(cpu.passes(5, 28, 9), Passes::PerToken, "but not five");
        let gpu = GradientPlan {
            stack_up_to: 4096,
            token_budget: 4096,
        };
        assert_eq!(gpu.passes(1, 28, 9), Passes::Stacked);
        assert_eq!(gpu.passes(5, 28, 9), Passes::Stacked);
        assert_eq!(gpu.passes(50, 28, 9), Passes::PerToken);
        assert_eq!(gpu.forced(Passes::Stacked).passes(50, 28, 9), Passes::Stacked);
        assert_eq!(gpu.forced(Passes::PerToken).passes(1, 28, 9), Passes::PerToken);
        assert_eq!(gpu.forced(Passes::Stacked).token_budget, 4096);
    }
}
