//! The causal softmax of attention scores in one parallel pass on CPU f32, without a mask
//! tensor: each query row's softmax runs over the keys it sees and writes 0 for the rest,
//! which is what adding the `-inf` causal mask and taking the softmax gives. For a long
//! prompt this skips building and adding a `[t, past + t]` mask (single-threaded in candle)
//! and half the exponentials.

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use super::ops::{is_cpu_f32, with_f32, zeros, GRAIN};

/// Where the queries of a block of attention rows sit: `t` new positions after `past` cached
/// ones, and the sliding window of the layer, if any.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Causal {
    pub(crate) t: usize,
    pub(crate) past: usize,
    pub(crate) window: Option<usize>,
}

impl Causal {
    /// The keys `lo..hi` that the query of row `row` sees (rows cycle through the `t`
    /// positions: `[.., group * t, keys]` stacks the heads of a group along the rows).
    fn seen(self, row: usize, keys: usize) -> (usize, usize) {
        let q = self.past + row % self.t.max(1);
        let hi = (q + 1).min(keys);
        let lo = self.window.map_or(0, |w| (q + 1).saturating_sub(w));
        (lo.min(hi), hi)
    }
}

/// Softmax over the last axis of `att` (`[.., rows, past + t]`, rows cycling through the `t`
/// query positions) under the causal mask of `at`; `None` off CPU f32 (the caller adds the
/// mask and runs the softmax there).
pub(crate) fn causal_softmax(att: &Tensor, at: Causal) -> Result<Option<Tensor>> {
    if !is_cpu_f32(att) {
        return Ok(None);
    }
    let att = att.contiguous()?;
    let keys = att.dims().last().copied().unwrap_or(0);
    if keys == 0 {
        return Ok(Some(att));
    }
    let mut out = zeros(att.elem_count());
    with_f32(&att, |src| {
        let rows = (GRAIN / keys).max(1);
        out.par_chunks_mut(rows * keys)
            .zip(src.par_chunks(rows * keys))
            .enumerate()
            .for_each(|(chunk, (dst, src))| {
                for (i, (dst, src)) in dst.chunks_mut(keys).zip(src.chunks(keys)).enumerate() {
                    let (lo, hi) = at.seen(chunk * rows + i, keys);
                    softmax_into(&src[lo..hi], &mut dst[lo..hi]);
                }
            });
        Ok(())
    })?;
    Ok(Some(Tensor::from_vec(out, att.shape(), att.device())?))
}

/// `dst = softmax(src)`, as candle's softmax computes it (max, exponentials, one division).
fn softmax_into(src: &[f32], dst: &mut [f32]) {
    let max = src.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = (s - max).exp();
        sum += *d;
    }
    dst.iter_mut().for_each(|d| *d /= sum);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::arch::kv_cache::Masks;
    use crate::model::kernels::ops::max_abs_diff;
    use candle_core::{DType, Device};

    /// Equal to adding the mask and taking candle's softmax, with and without a cache and a
    /// sliding window, heads of a group stacked along the rows.
    #[test]
    fn causal_softmax_matches_the_masked_softmax() {
        let masks = Masks::new(&Device::Cpu);
        for (t, past, window) in [(7, 0, None), (5, 3, None), (9, 4, Some(3)), (1, 6, Some(2))] {
            let att = Tensor::randn(0f32, 3.0, (2, 3, 2 * t, past + t), &Device::Cpu).unwrap();
            let at = Causal { t, past, window };
            let got = causal_softmax(&att, at).unwrap().unwrap();
            let want = match masks.get(t, past, window, DType::F32).unwrap() {
                Some(mask) => att
                    .reshape((2, 3, 2, t, past + t))
                    .unwrap()
                    .broadcast_add(&mask)
                    .unwrap()
                    .reshape((2, 3, 2 * t, past + t))
                    .unwrap(),
                None => att.clone(),
            };
            let want = candle_nn::ops::softmax_last_dim(&want).unwrap();
            let d = max_abs_diff(&got, &want);
            assert!(d < 1e-6, "t {t} past {past} window {window:?}: {d}");
        }
    }
}
