//! Fused CPU kernels for the hot elementwise steps that candle would run as several
//! single-threaded passes, each allocating a full-size tensor.

use candle_core::{bail, Device, Result, Storage, Tensor};
use rayon::prelude::*;

/// Runs `f` on the f32 data of a contiguous CPU tensor.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
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
const GRAIN: usize = 1 << 14;

/// `silu(gate) * up` for `[n, 2f]` rows that hold gate then up; returns `[n, f]`.
pub fn swiglu(gate_up: &Tensor) -> Result<Tensor> {
    let (n, two_f) = gate_up.dims2()?;
    let f = two_f / 2;
    let mut out = vec![0f32; n * f];
    with_f32(gate_up, |src| {
        let rows = (GRAIN / two_f.max(1)).max(1);
        out.par_chunks_mut(rows * f)
            .zip(src.par_chunks(rows * two_f))
            .for_each(|(dst, src)| {
                for (dst, src) in dst.chunks_mut(f).zip(src.chunks(two_f)) {
                    let (gate, up) = src.split_at(f);
                    for ((d, &g), &u) in dst.iter_mut().zip(gate).zip(up) {
                        *d = g / (1.0 + (-g).exp()) * u;
                    }
                }
            });
        Ok(())
    })?;
    Tensor::from_vec(out, (n, f), &Device::Cpu)
}

/// `log_softmax(logits[r])[targets[r]]` for every row of f32 `[n, vocab]` logits, without
/// materialising the log-softmax (sums in f64).
pub fn target_logprobs(logits: &Tensor, targets: &[u32]) -> Result<Vec<f32>> {
    let (n, vocab) = logits.dims2()?;
    if targets.len() != n {
        bail!("{} targets for {n} rows of logits", targets.len());
    }
    if let Some(t) = targets.iter().find(|&&t| t as usize >= vocab) {
        bail!("target id {t} outside the vocabulary of {vocab}");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swiglu_matches_candle() {
        let x = Tensor::randn(0f32, 2.0, (37, 2 * 50), &Device::Cpu).unwrap();
        let want = (x.narrow(1, 0, 50).unwrap().silu().unwrap() * x.narrow(1, 50, 50).unwrap()).unwrap();
        let got = swiglu(&x).unwrap();
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
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
}
