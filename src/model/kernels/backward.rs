//! Fused kernels with hand-written backward passes, for the gradient methods.
//!
//! candle's autograd differentiates its elementwise ops one by one: an RMSNorm is six ops
//! forward and a dozen backward, each a single-threaded pass that allocates a full-size
//! tensor, and a matmul's backward also computes the weight's gradient. The gradient methods
//! only need the gradient of the input embeddings, so each hot step here runs its fused
//! forward kernel and attaches the gradient of its one varying input as a single pass
//! ([`with_backward`]). The weights are constants: no gradient is computed for them.
//!
//! The matmul, softmax and RoPE here run on CPU f32 and on a GPU (candle's kernels there);
//! the others are CPU f32 kernels. Elsewhere [`super::Kernels::Differentiable`] composes
//! candle ops instead.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CudaStorage, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

use super::activation::Activation;
use super::ops::{gated, with_f32, zeros, GRAIN};
use super::rope::RopeStyle;

/// The gradient of an op's input from the gradient of its output.
type InputGradient = Box<dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync>;

/// Whether [`with_backward`] can carry a value like `t`: CPU f32 or any GPU tensor.
pub(crate) fn attaches(t: &Tensor) -> bool {
    t.device().is_cuda() || (t.device().is_cpu() && t.dtype() == candle_core::DType::F32)
}

/// `value` (computed by a kernel without a backward pass) as the output of an op on `input`
/// whose backward pass is `backward`. Where [`attaches`] holds.
fn with_backward(input: &Tensor, value: Tensor, backward: InputGradient) -> Result<Tensor> {
    input.apply_op1(Attached {
        value: Mutex::new(Some(value)),
        backward,
    })
}

struct Attached {
    /// Taken by the forward pass, so the graph does not keep a second copy.
    value: Mutex<Option<Tensor>>,
    backward: InputGradient,
}

impl Attached {
    fn take(&self) -> Result<Tensor> {
        let value = self
            .value
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned".into()))?
            .take();
        match value {
            Some(value) => value.contiguous(),
            None => bail!("with-backward: the forward pass ran twice"),
        }
    }
}

impl candle_core::CustomOp1 for Attached {
    fn name(&self) -> &'static str {
        "with-backward"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        let value = self.take()?;
        let data = with_f32(&value, |v| Ok(v.to_vec()))?;
        Ok((CpuStorage::F32(data), value.shape().clone()))
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        let mut value = self.take()?;
        // The clone below copies the whole buffer, which from offset 0 holds the value (and
        // the values here are fresh tensors: a copy is the rare case).
        if value.layout().start_offset() != 0 {
            value = value.affine(1.0, 0.0)?;
        }
        let (storage, layout) = value.storage_and_layout();
        let Storage::Cuda(cuda) = &*storage else {
            bail!("with-backward: the value is not on the GPU")
        };
        Ok((cuda.try_clone(layout)?, value.shape().clone()))
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        (self.backward)(grad).map(Some)
    }
}

/// `x @ w` for `[n, in]` rows and a constant `[in, out]` weight.
pub(crate) fn matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let value = x.matmul(w)?;
    let wt = w.t()?;
    with_backward(x, value, Box::new(move |g| input_gradient(g, &wt)))
}

/// `g @ wt`, the gradient of a matmul's input. On CPU f32, rows of `g` that are all zero (a
/// target token's gradient never reaches the positions after it) are left out of the matmul:
/// their rows of the product are zero.
fn input_gradient(g: &Tensor, wt: &Tensor) -> Result<Tensor> {
    let (m, out) = g.dims2()?;
    if !super::ops::is_cpu_f32(g) || !g.is_contiguous() {
        return g.matmul(wt);
    }
    let live = with_f32(g, |g| {
        Ok(g.par_chunks(out.max(1))
            .enumerate()
            .filter(|(_, row)| row.iter().any(|&v| v != 0.0))
            .map(|(i, _)| i as u32)
            .collect::<Vec<u32>>())
    })?;
    // Too few zero rows to pay for the gather and the scatter.
    if live.len() * 16 > m * 15 {
        return g.matmul(wt);
    }
    let n_in = wt.dim(1)?;
    let live_t = Tensor::new(live.as_slice(), g.device())?;
    let product = g.index_select(&live_t, 0)?.matmul(wt)?;
    let mut full = zeros(m * n_in);
    with_f32(&product, |p| {
        for (row, src) in live.iter().zip(p.chunks_exact(n_in.max(1))) {
            let start = *row as usize * n_in;
            if let Some(dst) = full.get_mut(start..start + n_in) {
                dst.copy_from_slice(src);
            }
        }
        Ok(())
    })?;
    Tensor::from_vec(full, (m, n_in), g.device())
}

/// [`matmul`] of `[copies * n, in]` rows that are `copies` equal copies of the first `n`:
/// the first copy's product, repeated (the backward pass multiplies every copy's gradient).
pub(crate) fn matmul_copies(x: &Tensor, w: &Tensor, copies: usize) -> Result<Tensor> {
    let rows = x.dim(0)?;
    if copies <= 1 || rows % copies != 0 {
        return matmul(x, w);
    }
    let value = x.narrow(0, 0, rows / copies)?.matmul(w)?.repeat((copies, 1))?;
    let wt = w.t()?;
    with_backward(x, value, Box::new(move |g| input_gradient(g, &wt)))
}

/// `log_softmax(logits[i])[targets[i]]` of `[n, vocab]` CPU f32 logits, `[n, 1]`, in one
/// pass with a hand-written backward pass (`g * (onehot - softmax)`): candle's composed
/// log-softmax runs a dozen single-threaded passes over the vocabulary each way.
pub(crate) fn target_log_prob(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let (n, vocab) = logits.dims2()?;
    let logits = logits.contiguous()?;
    let value = super::ops::target_logprobs(&logits, targets)?;
    let value = Tensor::from_vec(value, (n, 1), logits.device())?;
    let (input, targets) = (logits.clone(), targets.to_vec());
    let backward = move |g: &Tensor| {
        let g = g.flatten_all()?.to_vec1::<f32>()?;
        let mut out = zeros(n * vocab);
        with_f32(&input, |x| {
            out.par_chunks_mut(vocab.max(1))
                .zip(x.par_chunks(vocab.max(1)))
                .enumerate()
                .for_each(|(i, (d, x))| {
                    let (g, t) = (g.get(i).copied().unwrap_or(0.0), targets.get(i).copied());
                    softmax_gradient_row(x, g, t, d)
                });
            Ok(())
        })?;
        Tensor::from_vec(out, (n, vocab), input.device())
    };
    with_backward(&logits, value, Box::new(backward))
}

/// `d = -g * softmax(x)`, plus `g` at `target`: the gradient of `g * log_softmax(x)[target]`.
fn softmax_gradient_row(x: &[f32], g: f32, target: Option<u32>, d: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = x
        .chunks(16)
        .map(|c| c.iter().map(|&v| (v - max).exp()).sum::<f32>() as f64)
        .sum();
    let scale = -g / sum as f32;
    for (d, &v) in d.iter_mut().zip(x) {
        *d = scale * (v - max).exp();
    }
    if let Some(d) = target.and_then(|t| d.get_mut(t as usize)) {
        *d += g;
    }
}

/// RMSNorm of the last dimension with a constant weight. The mean square is summed in f64:
/// SmolLM2's first position carries activations in the thousands, and integrated gradients
/// on it is sensitive enough that f32 sums in a different order than PyTorch's moved an
/// attribution by 1%.
pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    let x = x.contiguous()?;
    let value = x.apply_op2_no_bwd(weight, &RmsNormForward { eps })?;
    let (input, op) = (
        x.clone(),
        RmsNormBackward {
            weight: weight.clone(),
            eps,
        },
    );
    with_backward(
        &x,
        value,
        Box::new(move |g| input.apply_op2_no_bwd(&g.contiguous()?, &op)),
    )
}

/// Softmax over the last dimension.
pub(crate) fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let y = candle_nn::ops::softmax_last_dim(&x.contiguous()?)?;
    let out = y.clone();
    // dx = y * (g - sum(g * y)): small tensors (attention rows), candle ops are enough.
    with_backward(
        x,
        y,
        Box::new(move |g| out.mul(&g.broadcast_sub(&(g * &out)?.sum_keepdim(candle_core::D::Minus1)?)?)),
    )
}

/// RoPE on `[b, heads, t, head_dim]`: a rotation of each pair, so its backward pass is the
/// rotation by the opposite angle.
pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, style: RopeStyle) -> Result<Tensor> {
    use candle_nn::rotary_emb as r;
    let apply = move |x: &Tensor, cos: &Tensor, sin: &Tensor| match style {
        RopeStyle::Half => r::rope(&x.contiguous()?, cos, sin),
        RopeStyle::Interleaved => r::rope_i(&x.contiguous()?, cos, sin),
    };
    let value = apply(x, cos, sin)?;
    let (cos, back_sin) = (cos.clone(), sin.neg()?);
    with_backward(x, value, Box::new(move |g| apply(g, &cos, &back_sin)))
}

/// `act(gate) * up` for `[n, 2f]` rows holding gate then up.
pub(crate) fn gated_act(gate_up: &Tensor, act: Activation) -> Result<Tensor> {
    let gate_up = gate_up.contiguous()?;
    let value = gated(&gate_up, act)?;
    let input = gate_up.clone();
    with_backward(
        &gate_up,
        value,
        Box::new(move |g| input.apply_op2_no_bwd(&g.contiguous()?, &GatedBackward(act))),
    )
}

/// Runs `row(i, out_row)` over the rows of `out` (`width` wide) on the rayon pool.
fn rows_in_parallel(out: &mut [f32], width: usize, row: impl Fn(usize, &mut [f32]) + Sync) {
    let per_task = (GRAIN / width.max(1)).max(1);
    out.par_chunks_mut(per_task * width)
        .enumerate()
        .for_each(|(c, chunk)| {
            for (k, o) in chunk.chunks_exact_mut(width).enumerate() {
                row(c * per_task + k, o);
            }
        });
}

/// Both inputs' f32 data, checked contiguous and of equal row width `width`.
fn two_f32<'a>(
    (a, al): (&'a CpuStorage, &Layout),
    (b, bl): (&'a CpuStorage, &Layout),
) -> Result<(&'a [f32], &'a [f32])> {
    let (CpuStorage::F32(a), CpuStorage::F32(b)) = (a, b) else {
        bail!("backward kernels take f32 only")
    };
    let (Some((a0, a1)), Some((b0, b1))) = (al.contiguous_offsets(), bl.contiguous_offsets()) else {
        bail!("backward kernels take contiguous tensors only")
    };
    Ok((&a[a0..a1], &b[b0..b1]))
}

/// `1 / sqrt(mean(x^2) + eps)` of one row, summed in f64.
fn inverse_rms(x: &[f32], eps: f32) -> f64 {
    let mean_sq = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len() as f64;
    1.0 / (mean_sq + f64::from(eps)).sqrt()
}

/// `y = x / rms(x) * w` over rows of `x`, for a `[width]` weight `w`.
struct RmsNormForward {
    eps: f32,
}

impl candle_core::CustomOp2 for RmsNormForward {
    fn name(&self) -> &'static str {
        "rms-norm-f64-sums"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = two_f32((x, xl), (w, wl))?;
        let n = w.len();
        if n == 0 || x.len() % n != 0 || xl.dims().last() != Some(&n) {
            bail!("rms-norm: shape {:?} with a weight of {n}", xl.dims());
        }
        let mut out = zeros(x.len());
        rows_in_parallel(&mut out, n, |i, y| {
            let x = &x[i * n..(i + 1) * n];
            let inv = inverse_rms(x, self.eps) as f32;
            for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                *y = x * inv * w;
            }
        });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }
}

/// `dx` of `y = x / rms(x) * w` from `x` and `dy`:
/// `dx = (w dy) / r - x (sum_j w_j dy_j x_j) / (n r^3)`, `r = sqrt(mean(x^2) + eps)`.
struct RmsNormBackward {
    weight: Tensor,
    eps: f32,
}

impl candle_core::CustomOp2 for RmsNormBackward {
    fn name(&self) -> &'static str {
        "rms-norm-backward"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g) = two_f32((x, xl), (g, gl))?;
        let w = with_f32(&self.weight, |w| Ok(w.to_vec()))?;
        let n = w.len();
        if n == 0 || x.len() != g.len() || x.len() % n != 0 {
            bail!(
                "rms-norm-backward: shapes {:?} and {:?} with a weight of {n}",
                xl.dims(),
                gl.dims()
            );
        }
        let mut out = zeros(x.len());
        rows_in_parallel(&mut out, n, |i, dx| {
            let (x, g) = (&x[i * n..(i + 1) * n], &g[i * n..(i + 1) * n]);
            let inv = inverse_rms(x, self.eps);
            let dot: f64 = x
                .iter()
                .zip(g)
                .zip(&w)
                .map(|((&x, &g), &w)| f64::from(x * g * w))
                .sum();
            let (a, b) = (inv as f32, (dot * inv * inv * inv / n as f64) as f32);
            for (((d, &x), &g), &w) in dx.iter_mut().zip(x).zip(g).zip(&w) {
                *d = a * w * g - b * x;
            }
        });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }
}

/// The gradient of `[n, 2f]` gate-then-up rows from that of `act(gate) * up` (`[n, f]`):
/// `d gate = dy * up * act'(gate)`, `d up = dy * act(gate)`.
struct GatedBackward(Activation);

impl candle_core::CustomOp2 for GatedBackward {
    fn name(&self) -> &'static str {
        "gated-backward"
    }

    fn cpu_fwd(
        &self,
        gu: &CpuStorage,
        gul: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (gu, g) = two_f32((gu, gul), (g, gl))?;
        let Some(&two_f) = gul.dims().last() else {
            bail!("gated-backward: a scalar input")
        };
        let f = two_f / 2;
        if f == 0 || gu.len() != 2 * g.len() {
            bail!("gated-backward: shapes {:?} and {:?}", gul.dims(), gl.dims());
        }
        let act = self.0;
        let mut out = zeros(gu.len());
        rows_in_parallel(&mut out, two_f, |i, d| {
            let (gate, up) = gu[i * two_f..(i + 1) * two_f].split_at(f);
            let dy = &g[i * f..(i + 1) * f];
            let (d_gate, d_up) = d.split_at_mut(f);
            for j in 0..f {
                let (value, slope) = act.value_and_slope(gate[j]);
                d_gate[j] = dy[j] * up[j] * slope;
                d_up[j] = dy[j] * value;
            }
        });
        Ok((CpuStorage::F32(out), gul.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::ops::max_abs_diff;
    use candle_core::{Device, Var, D};

    /// Deterministic values in about [-2, 2].
    fn wave(shape: &[usize], phase: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| 2.0 * ((i as f32) * 0.37 + phase).sin()).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// The gradient of `sum(f(x) * r)` for a fixed `r`, through `f`.
    fn grad_of(x: &Tensor, f: &dyn Fn(&Tensor) -> Result<Tensor>) -> Tensor {
        let v = Var::from_tensor(x).unwrap();
        let y = f(v.as_tensor()).unwrap();
        let r = wave(y.dims(), 1.3);
        let grads = (y * r).unwrap().sum_all().unwrap().backward().unwrap();
        grads.get(v.as_tensor()).unwrap().clone()
    }

    /// Fused and composed agree on the value and on the gradient.
    fn same(
        x: &Tensor,
        fused: &dyn Fn(&Tensor) -> Result<Tensor>,
        composed: &dyn Fn(&Tensor) -> Result<Tensor>,
    ) {
        let close = |a: &Tensor, b: &Tensor, what: &str| {
            let d = max_abs_diff(a, b);
            let scale = max_abs_diff(b, &b.zeros_like().unwrap());
            assert!(
                d <= 1e-4 * scale.max(1.0),
                "{what}: differs by {d} (scale {scale})"
            );
        };
        close(&fused(x).unwrap(), &composed(x).unwrap(), "value");
        close(&grad_of(x, fused), &grad_of(x, composed), "gradient");
    }

    #[test]
    fn rms_norm_gradient_matches_candle() {
        let (x, w) = (wave(&[6, 16], 0.0), (wave(&[16], 2.0) * 0.5).unwrap());
        same(&x, &|x| rms_norm(x, &w, 1e-5), &|x| {
            candle_nn::ops::rms_norm_slow(x, &w, 1e-5)
        });
        // Rows spread over several rayon tasks, and an all-zero row.
        let x = wave(&[3, 40, 576], 0.3)
            .broadcast_mul(&wave(&[3, 40, 1], 0.9))
            .unwrap();
        let x = x
            .slice_assign(
                &[0..1, 0..1, 0..576],
                &Tensor::zeros((1, 1, 576), candle_core::DType::F32, &Device::Cpu).unwrap(),
            )
            .unwrap();
        let w = wave(&[576], 2.0);
        same(&x, &|x| rms_norm(x, &w, 1e-5), &|x| {
            candle_nn::ops::rms_norm_slow(x, &w, 1e-5)
        });
    }

    #[test]
    fn softmax_gradient_matches_candle() {
        let x = wave(&[2, 3, 5, 7], 0.4);
        same(&x, &softmax_last_dim, &|x| candle_nn::ops::softmax(x, D::Minus1));
    }

    #[test]
    fn rope_gradient_matches_candle_in_both_styles() {
        let x = wave(&[2, 3, 5, 8], 0.7);
        let (cos, sin) = (
            wave(&[5, 4], 0.1).cos().unwrap(),
            wave(&[5, 4], 0.1).sin().unwrap(),
        );
        use candle_nn::rotary_emb as r;
        same(&x, &|x| rope(x, &cos, &sin, RopeStyle::Half), &|x| {
            r::rope_slow(x, &cos, &sin)
        });
        same(&x, &|x| rope(x, &cos, &sin, RopeStyle::Interleaved), &|x| {
            r::rope_i_slow(x, &cos, &sin)
        });
    }

    #[test]
    fn gated_gradient_matches_candle_for_every_activation() {
        let x = wave(&[5, 12], 0.2);
        for act in [
            Activation::Silu,
            Activation::GeluTanh,
            Activation::GeluErf,
            Activation::Relu,
        ] {
            let composed =
                |x: &Tensor| -> Result<Tensor> { act.apply(&x.narrow(1, 0, 6)?)? * x.narrow(1, 6, 6)? };
            same(&x, &|x| gated_act(x, act), &composed);
        }
    }

    /// Rows of zeros in the output's gradient (a quarter of them, then none) are left out of
    /// the matmul and come back as zero rows.
    #[test]
    fn matmul_gradient_skips_zero_rows() {
        let w = wave(&[6, 5], 0.5);
        let g = wave(&[8, 5], 0.9);
        let mask: Vec<f32> = (0..8).map(|i| if i % 4 == 3 { 0.0 } else { 1.0 }).collect();
        let mask = Tensor::from_vec(mask, (8, 1), &Device::Cpu).unwrap();
        for g in [g.broadcast_mul(&mask).unwrap(), g] {
            let got = input_gradient(&g, &w.t().unwrap()).unwrap();
            let want = g.matmul(&w.t().unwrap()).unwrap();
            assert!(max_abs_diff(&got, &want) <= 1e-5);
        }
    }

    #[test]
    fn matmul_of_copies_matches_candle() {
        let x = wave(&[4, 6], 0.0).repeat((3, 1)).unwrap();
        let w = wave(&[6, 3], 0.5);
        same(&x, &|x| matmul_copies(x, &w, 3), &|x| x.matmul(&w));
    }

    #[test]
    fn target_log_prob_gradient_matches_candle() {
        let x = (wave(&[3, 50], 0.3) * 4.0).unwrap();
        let targets = [7u32, 0, 49];
        let ids = Tensor::new(&targets, &Device::Cpu).unwrap().unsqueeze(1).unwrap();
        same(&x, &|x| target_log_prob(x, &targets), &|x| {
            candle_nn::ops::log_softmax(x, D::Minus1)?.gather(&ids, 1)
        });
    }

    #[test]
    fn matmul_gradient_matches_candle() {
        let (x, w) = (wave(&[4, 6], 0.0), wave(&[6, 3], 0.5));
        same(&x, &|x| matmul(x, &w), &|x| x.matmul(&w));
    }
}
