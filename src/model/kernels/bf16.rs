//! The CPU's bf16 matmul: f32 rows times a bf16 weight, with f32 accumulation and an f32
//! result, through MKL's `cblas_gemm_bf16bf16f32` ([`crate::model::device::mkl`]): AMX tiles or
//! AVX512-BF16 where the CPU has them.
//!
//! A candle `CustomOp2` (no backward pass: the gradient methods do not run in bf16 on the CPU),
//! so the decoder multiplies by a bf16 weight as by an f32 one and everything else (norms,
//! softmax, RoPE, the residual stream) stays f32. The rows go to bf16 (round to nearest even)
//! as they enter; MKL runs sequentially on each of the rayon pool's threads, over its own
//! share of the rows (the pool candle's f32 matmul uses too). Split in two, a projection of
//! SmolLM2's at t1's 3,200 rows keeps its GFLOP per CPU second (benches/floor.rs
//! `FLOOR_MATMUL=1`: 29.5 against 30.0 on one thread at qkv, 32.3 against 33.3 at gate_up), so
//! the split costs a thread nothing and gives the work to every free core.

use candle_core::{bail, CpuStorage, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::model::device::mkl::{self, Gemm};

/// Why the gradient methods do not run with bf16 weights on the CPU.
pub(crate) const NO_GRADIENTS: &str = "the gradient methods do not run in bf16 on the CPU (its \
     bf16 matmul has no backward pass): load the model with --dtype f32 (the CPU's default)";

/// Fewest rows a thread takes: below this, splitting costs more than it gains.
const MIN_ROWS: usize = 16;

/// True when `w` is a bf16 weight held on the CPU: a matmul by it runs here.
pub(crate) fn applies(w: &Tensor) -> bool {
    w.device().is_cpu() && w.dtype() == DType::BF16
}

/// `x @ w` for f32 rows `x` (`[.., k]`) and a bf16 weight `w` (`[k, n]`: contiguous, or the
/// transpose of a contiguous `[n, k]`) on the CPU; f32 `[.., n]`. Needs Intel MKL (an error
/// says where it was looked for); the rows are split over the current rayon pool.
pub fn matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let dims = x.dims().to_vec();
    let Some((&k, lead)) = dims.split_last() else {
        bail!("bf16 matmul: a scalar has no rows");
    };
    let m: usize = lead.iter().product();
    let y = x
        .reshape((m, k))?
        .contiguous()?
        .apply_op2_no_bwd(w, &Bf16Matmul)?;
    let n = y.dim(1)?;
    y.reshape([lead, &[n]].concat())
}

struct Bf16Matmul;

impl candle_core::CustomOp2 for Bf16Matmul {
    fn name(&self) -> &'static str {
        "bf16-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::BF16(w)) = (s1, s2) else {
            bail!("bf16 matmul: expects f32 rows and a bf16 weight")
        };
        let ((m, k), (k2, n)) = (l1.shape().dims2()?, l2.shape().dims2()?);
        if k != k2 {
            bail!("bf16 matmul: [{m}, {k}] rows by a [{k2}, {n}] weight");
        }
        let Some((a0, a1)) = l1.contiguous_offsets() else {
            bail!("bf16 matmul: the rows must be contiguous")
        };
        let (b_transposed, b) = weight(w, l2, k, n)?;
        let Some(x) = x.get(a0..a1) else {
            bail!("bf16 matmul: the rows' storage is shorter than [{m}, {k}]")
        };
        let c = run(x, as_bits(b), b_transposed, m, n, k).map_err(candle_core::Error::Msg)?;
        Ok((CpuStorage::F32(c), Shape::from((m, n))))
    }
}

/// The weight's values and whether they are stored `[n, k]` (to be read transposed).
fn weight<'a>(w: &'a [half::bf16], l: &Layout, k: usize, n: usize) -> Result<(bool, &'a [half::bf16])> {
    let start = l.start_offset();
    let transposed = match l.stride() {
        [s0, 1] if *s0 == n => false,
        [1, s1] if *s1 == k => true,
        s => bail!("bf16 matmul: the weight's strides {s:?} are neither [k, n] nor its transpose"),
    };
    match w.get(start..start + k * n) {
        Some(b) => Ok((transposed, b)),
        None => bail!("bf16 matmul: the weight's storage is shorter than [{k}, {n}]"),
    }
}

/// bf16 values as their bit patterns, which is how MKL takes them.
fn as_bits(v: &[half::bf16]) -> &[u16] {
    // SAFETY: `bf16` is `#[repr(transparent)]` over `u16`.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u16>(), v.len()) }
}

/// `x @ b` (`x`: `[m, k]` f32), the rows split over the rayon pool's threads, each converting
/// its rows to bf16 and calling MKL once.
fn run(
    x: &[f32],
    b: &[u16],
    b_transposed: bool,
    m: usize,
    n: usize,
    k: usize,
) -> std::result::Result<Vec<f32>, String> {
    let mkl = mkl::get()?;
    let threads = rayon::current_num_threads().max(1);
    let rows = m.div_ceil(threads).max(MIN_ROWS).max(1);
    let mut c = super::ops::zeros(m * n);
    if m == 0 || n == 0 || k == 0 {
        return Ok(c);
    }
    c.par_chunks_mut(rows * n)
        .zip(x.par_chunks(rows * k))
        .try_for_each(|(c, x)| {
            let a: Vec<u16> = x.iter().map(|v| half::bf16::from_f32(*v).to_bits()).collect();
            mkl.gemm(Gemm {
                m: x.len() / k,
                n,
                k,
                a: &a,
                b,
                b_transposed,
                c,
            })
        })?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Rows times a bf16 weight, stored `[k, n]` or `[n, k]`: candle's f32 matmul of the same
    /// bf16-rounded values, up to f32 summation order, with rows that split unevenly.
    #[test]
    fn matches_f32_of_the_rounded_values() {
        if let Err(e) = mkl::get() {
            eprintln!("skipped: {e}");
            return;
        }
        let dev = Device::Cpu;
        let (m, k, n) = (37, 70, 45);
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (k, n), &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let rounded = x.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
        let want = rounded.matmul(&w.to_dtype(DType::F32).unwrap()).unwrap();
        let stored_nk = w.t().unwrap().contiguous().unwrap();
        for w in [w.clone(), stored_nk.t().unwrap()] {
            assert!(applies(&w));
            let got = matmul(&x.reshape((1, m, k)).unwrap(), &w).unwrap();
            assert_eq!(got.dims(), &[1, m, n]);
            let d = crate::model::kernels::ops::max_abs_diff(&got.squeeze(0).unwrap(), &want);
            assert!(d < 1e-4, "{d}");
        }
        assert!(matmul(
            &x,
            &w.t().unwrap().contiguous().unwrap().narrow(1, 1, k - 2).unwrap()
        )
        .is_err());
    }
}
