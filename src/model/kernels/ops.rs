//! Fused CPU kernels for the hot elementwise steps that candle would run as several
//! single-threaded passes, each allocating a full-size tensor, with their composed candle
//! fallbacks off CPU f32.

use candle_core::{bail, CpuStorage, DType, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

use super::activation::{gelu_erf, gelu_tanh, Activation};

/// Runs `f` on the f32 data of a contiguous CPU tensor.
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        bail!("expected a CPU tensor")
    };
    let data = cpu.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((a, b)) => f(&data[a..b]),
        None => bail!("expected a contiguous tensor"),
    }
}

/// Rows of at least this many floats per rayon task.
pub(crate) const GRAIN: usize = 1 << 14;

/// `n` zeros for a kernel's output. A large `vec![0.0; n]` is one thread's memset (and page
/// faults), which the other threads wait for, so from [`PARALLEL_ZEROS`] on the thread pool
/// writes them; below, waking the pool costs more than it saves.
pub(crate) fn zeros(n: usize) -> Vec<f32> {
    if n < PARALLEL_ZEROS {
        return vec![0f32; n];
    }
    let mut v = Vec::with_capacity(n);
    v.par_extend(rayon::iter::repeat_n(0f32, n));
    v
}

/// Floats (64 KB) from which [`zeros`] uses the thread pool.
const PARALLEL_ZEROS: usize = GRAIN;

/// `act(gate) * up` for `[n, 2f]` rows that hold gate then up; returns `[n, f]`. One parallel
/// pass on CPU f32; candle ops elsewhere.
pub(crate) fn gated(gate_up: &Tensor, act: Activation) -> Result<Tensor> {
    let (n, two_f) = gate_up.dims2()?;
    let f = two_f / 2;
    if !is_cpu_f32(gate_up) {
        return gated_composed(gate_up, act);
    }
    let mut out = zeros(n * f);
    with_f32(gate_up, |src| {
        let rows = (GRAIN / two_f.max(1)).max(1);
        out.par_chunks_mut(rows * f)
            .zip(src.par_chunks(rows * two_f))
            .for_each(|(dst, src)| {
                for (dst, src) in dst.chunks_mut(f).zip(src.chunks(two_f)) {
                    let (gate, up) = src.split_at(f);
                    match act {
                        Activation::Silu => dst
                            .iter_mut()
                            .zip(gate)
                            .zip(up)
                            .for_each(|((d, &g), &u)| *d = g / (1.0 + (-g).exp()) * u),
                        act => dst
                            .iter_mut()
                            .zip(gate)
                            .zip(up)
                            .for_each(|((d, &g), &u)| *d = act.scalar(g) * u),
                    }
                }
            });
        Ok(())
    })?;
    Tensor::from_vec(out, (n, f), gate_up.device())
}

/// [`gated`] from candle ops (any device and dtype, with a backward pass).
pub(crate) fn gated_composed(gate_up: &Tensor, act: Activation) -> Result<Tensor> {
    let f = gate_up.dim(1)? / 2;
    act.apply(&gate_up.narrow(1, 0, f)?)? * gate_up.narrow(1, f, f)?
}

/// [`bias_act`] from candle ops (any device and dtype, with a backward pass).
pub(crate) fn bias_act_composed(x: &Tensor, bias: &Tensor, act: Option<Activation>) -> Result<Tensor> {
    let y = x.broadcast_add(bias)?;
    act.map_or(Ok(y.clone()), |a| a.apply(&y))
}

pub(crate) fn is_cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// `log_softmax(logits[r])[targets[r]]` for every row of `[n, vocab]` logits, without
/// materialising the log-softmax: one fused pass (sums in f64) on CPU f32, candle ops on the
/// logits' own device elsewhere, so only the `n` numbers leave a GPU.
pub fn target_logprobs(logits: &Tensor, targets: &[u32]) -> Result<Vec<f32>> {
    let (n, vocab) = logits.dims2()?;
    if targets.len() != n {
        bail!("{} targets for {n} rows of logits", targets.len());
    }
    if let Some(t) = targets.iter().find(|&&t| t as usize >= vocab) {
        bail!("target id {t} outside the vocabulary of {vocab}");
    }
    if !is_cpu_f32(logits) {
        return target_logprobs_composed(logits, targets);
    }
    with_f32(logits, |data| {
        Ok(data
            .par_chunks(vocab.max(1))
            .zip(targets.par_iter())
            .map(|(row, &t)| {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum: f64 = row
                    .chunks(16)
                    .map(|c| c.iter().map(|&x| (x - max).exp()).sum::<f32>() as f64)
                    .sum();
                ((row[t as usize] - max) as f64 - sum.ln()) as f32
            })
            .collect())
    })
}

/// [`target_logprobs`] from candle ops (any device and dtype), in f32: the row maximum, the
/// log of the summed exponentials, the target's logit.
fn target_logprobs_composed(logits: &Tensor, targets: &[u32]) -> Result<Vec<f32>> {
    let logits = logits.to_dtype(DType::F32)?;
    let targets = Tensor::new(targets, logits.device())?.unsqueeze(1)?;
    let shifted = logits.broadcast_sub(&logits.max_keepdim(1)?)?;
    let log_sum = shifted.exp()?.sum_keepdim(1)?.log()?;
    (shifted.gather(&targets, 1)? - log_sum)?.squeeze(1)?.to_vec1()
}

/// `act(x + bias)` for a contiguous f32 `[rows, out]` tensor and an `[out]` bias, in one
/// parallel pass.
pub(crate) fn bias_act(x: &Tensor, bias: &Tensor, act: Option<Activation>) -> Result<Tensor> {
    if !is_cpu_f32(x) {
        return bias_act_composed(x, bias, act);
    }
    x.apply_op2_no_bwd(bias, &BiasAct(act))
}

/// Adds a `[out]` bias to every row of a contiguous `[rows, out]` f32 tensor and applies an
/// activation, spread over the rayon pool (candle's elementwise ops run on one thread).
struct BiasAct(Option<Activation>);

impl candle_core::CustomOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "bias-act"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::F32(b)) = (x, b) else {
            bail!("bias-act: f32 only");
        };
        let (Some((x0, x1)), Some((b0, b1))) = (xl.contiguous_offsets(), bl.contiguous_offsets()) else {
            bail!("bias-act: contiguous tensors only");
        };
        let (x, b) = (&x[x0..x1], &b[b0..b1]);
        let width = b.len();
        if width == 0 || xl.dims().last() != Some(&width) {
            bail!("bias-act: shape {:?} does not end with {width}", xl.dims());
        }
        let mut out = zeros(x.len());
        // Rows in chunks of about 16k values: enough work per task, enough tasks per core.
        let rows = (GRAIN / width).max(1);
        let act = self.0;
        out.par_chunks_mut(rows * width)
            .zip(x.par_chunks(rows * width))
            .for_each(|(o, x)| {
                for (o, x) in o.chunks_exact_mut(width).zip(x.chunks_exact(width)) {
                    match act {
                        None => o.iter_mut().zip(x).zip(b).for_each(|((o, &x), &b)| *o = x + b),
                        Some(Activation::GeluTanh) => o
                            .iter_mut()
                            .zip(x)
                            .zip(b)
                            .for_each(|((o, &x), &b)| *o = gelu_tanh(x + b)),
                        Some(Activation::GeluErf) => o
                            .iter_mut()
                            .zip(x)
                            .zip(b)
                            .for_each(|((o, &x), &b)| *o = gelu_erf(x + b)),
                        Some(Activation::Relu) => o
                            .iter_mut()
                            .zip(x)
                            .zip(b)
                            .for_each(|((o, &x), &b)| *o = (x + b).max(0.0)),
                        Some(Activation::Silu) => o
                            .iter_mut()
                            .zip(x)
                            .zip(b)
                            .for_each(|((o, &x), &b)| *o = Activation::Silu.scalar(x + b)),
                    }
                }
            });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }
}

/// The largest `|a - b|` over all elements (for tests).
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::Kernels;
    use candle_core::Device;

    #[test]
    fn gated_matches_candle() {
        let x = Tensor::randn(0f32, 2.0, (37, 2 * 50), &Device::Cpu).unwrap();
        for act in [Activation::Silu, Activation::GeluTanh] {
            let want = Kernels::Differentiable.gated(&x, act).unwrap();
            let got = Kernels::Fused.gated(&x, act).unwrap();
            assert!(max_abs_diff(&got, &want) < 1e-5, "{act:?}");
        }
    }

    #[test]
    fn target_logprobs_match_log_softmax() {
        let x = Tensor::randn(0f32, 5.0, (9, 1000), &Device::Cpu).unwrap();
        let targets: Vec<u32> = (0..9).map(|i| i * 111).collect();
        let got = target_logprobs(&x, &targets).unwrap();
        let lp = candle_nn::ops::log_softmax(&x, 1)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (i, &t) in targets.iter().enumerate() {
            assert!(
                (got[i] - lp[i][t as usize]).abs() < 1e-5,
                "{} {}",
                got[i],
                lp[i][t as usize]
            );
        }
        assert!(target_logprobs(&x, &[5]).is_err());
        assert!(target_logprobs(&x, &[1000; 9]).is_err());
    }

    /// The path a GPU takes (candle ops) agrees with the fused CPU kernel, in f32 and from
    /// bf16 logits; the bf16 logits are exactly representable in f32, so only summation order
    /// differs.
    #[test]
    fn composed_target_logprobs_match_the_fused_kernel() {
        let x = Tensor::randn(0f32, 5.0, (9, 1000), &Device::Cpu).unwrap();
        let targets: Vec<u32> = (0..9).map(|i| i * 97 + 3).collect();
        let fused = target_logprobs(&x, &targets).unwrap();
        let composed = target_logprobs_composed(&x, &targets).unwrap();
        for (f, c) in fused.iter().zip(&composed) {
            assert!((f - c).abs() < 1e-4, "{f} {c}");
        }
        let half = x.to_dtype(DType::BF16).unwrap();
        let from_half = target_logprobs(&half, &targets).unwrap();
        let want = target_logprobs(&half.to_dtype(DType::F32).unwrap(), &targets).unwrap();
        for (h, w) in from_half.iter().zip(&want) {
            assert!((h - w).abs() < 1e-4, "{h} {w}");
        }
    }

    /// Off CPU f32, the fused ops fall back to candle ops with the same results, up to bf16's
    /// rounding of the outputs (relative, since the outputs reach tens).
    #[test]
    fn fused_ops_fall_back_off_cpu_f32() {
        let dev = Device::Cpu;
        let wave = |n: usize, scale: f64| {
            let v: Vec<f32> = (0..n).map(|i| (scale * (0.37 * i as f64).sin()) as f32).collect();
            Tensor::from_vec(v, n, &dev).unwrap()
        };
        let x = wave(7 * 48, 6.0).reshape((7, 48)).unwrap();
        let b = wave(48, 1.5);
        let half = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
        let back = |t: Tensor| t.to_dtype(DType::F32).unwrap();
        let close = |got: &Tensor, want: &Tensor| {
            let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            max_abs_diff(got, want) <= 1e-2 * (1.0 + scale.to_scalar::<f32>().unwrap())
        };
        for act in [Activation::Silu, Activation::GeluTanh, Activation::GeluErf] {
            let got = back(gated(&half(&x), act).unwrap());
            let want = gated(&back(half(&x)), act).unwrap();
            assert!(close(&got, &want), "gated {act:?}");
            let got = back(bias_act(&half(&x), &half(&b), Some(act)).unwrap());
            let want = bias_act(&back(half(&x)), &back(half(&b)), Some(act)).unwrap();
            assert!(close(&got, &want), "bias_act {act:?}");
        }
    }

    /// The fused bias + activation op equals candle's own ops on odd shapes (rows not a
    /// multiple of the chunk size), including large |x| where exp overflows.
    #[test]
    fn bias_act_matches_reference_ops() {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 3.0, (37, 301), &dev).unwrap() * 1.0).unwrap();
        let x = Tensor::cat(&[&x, &Tensor::full(-200f32, (1, 301), &dev).unwrap()], 0).unwrap();
        let x = Tensor::cat(&[&x, &Tensor::full(200f32, (1, 301), &dev).unwrap()], 0).unwrap();
        let b = Tensor::randn(0f32, 1.0, 301, &dev).unwrap();
        let plain = x.broadcast_add(&b).unwrap();
        let cases: [(Option<Activation>, Tensor); 4] = [
            (None, plain.clone()),
            (Some(Activation::GeluTanh), plain.gelu().unwrap()),
            (Some(Activation::GeluErf), plain.gelu_erf().unwrap()),
            (Some(Activation::Relu), plain.relu().unwrap()),
        ];
        for (act, want) in cases {
            let got = bias_act(&x, &b, act).unwrap();
            let diff = max_abs_diff(&got, &want);
            assert!(diff < 2e-5, "{act:?}: max difference {diff}");
        }
    }
}
