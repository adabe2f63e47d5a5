//! Weights put into the layout the forward pass multiplies by, once, as they load: matrices
//! stored `[out, in]` stacked along `out` (Q, K and V; gate and up), the query rows scaled, and
//! the whole transposed to `[in, out]`, in one parallel pass over CPU memory; from memory-mapped
//! safetensors, in the same pass as the conversion to f32, so no other copy is ever made.
//!
//! candle would do it as a concatenation, a scaling and a transposing copy, each a full-size
//! single-threaded pass, the transposing one element by element through strided indices; that
//! was most of a model's load time.

use candle_core::{DType, Device, Storage, Tensor, WithDType};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::model::arch::{full_name, weight};
use crate::model::load::Mapped;

/// Output rows (input columns) per rayon task.
const TILE: usize = 64;
/// Source rows read side by side.
const GROUP: usize = 8;

/// The matrices `weight` under each of `parts` (`[rows_i, cols]` each, as stored), in `dtype`,
/// stacked, scaled and transposed as [`stacked_transposed`] does; read straight from `mapped`
/// where the weights are mapped safetensors and the model runs on the CPU in f32 or bf16.
pub(crate) fn load_stacked_transposed(
    parts: &[(VarBuilder, usize)],
    cols: usize,
    scaled: Option<(usize, f64)>,
    mapped: Option<&Mapped>,
    dtype: DType,
) -> Result<Tensor> {
    let parts: Vec<(VarBuilder, usize)> = parts
        .iter()
        .map(|(vb, rows)| (vb.clone().set_dtype(dtype), *rows))
        .collect();
    let direct = parts
        .first()
        .is_some_and(|(vb, _)| vb.device().is_cpu() && matches!(vb.dtype(), DType::F32 | DType::BF16));
    if let Some(mapped) = mapped.filter(|_| direct) {
        let names: Vec<(String, [usize; 2])> = parts
            .iter()
            .map(|(vb, rows)| (full_name(vb, "weight"), [*rows, cols]))
            .collect();
        if let Some(t) = mapped.stacked_transposed(&names, scaled, dtype) {
            return t.map_err(|e| Error::Model(format!("weights: {e}")));
        }
    }
    let tensors = parts
        .iter()
        .map(|(vb, rows)| weight(vb, &[*rows, cols], "weight"))
        .collect::<Result<Vec<_>>>()?;
    stacked_transposed(&tensors, scaled)
}

/// `parts` (`[rows_i, cols]` each) stacked along their rows, the first `scaled.0` rows times
/// `scaled.1` (as `x * s` in candle: `x * s + 0` in the tensor's dtype), transposed to a
/// contiguous `[cols, sum rows_i]`.
pub(crate) fn stacked_transposed(parts: &[Tensor], scaled: Option<(usize, f64)>) -> Result<Tensor> {
    let fast = parts.iter().all(|p| p.device().is_cpu() && p.rank() == 2);
    let out = match parts.first().map(Tensor::dtype) {
        Some(DType::F32) if fast => cpu::<f32>(parts, scaled)?,
        Some(DType::F16) if fast => cpu::<half::f16>(parts, scaled)?,
        Some(DType::BF16) if fast => cpu::<half::bf16>(parts, scaled)?,
        _ => None,
    };
    match out {
        Some(t) => Ok(t),
        None => composed(parts, scaled),
    }
}

/// The same with candle ops (a GPU, or tensors the CPU path does not take).
fn composed(parts: &[Tensor], scaled: Option<(usize, f64)>) -> Result<Tensor> {
    let mut w = Tensor::cat(parts, 0)?;
    if let Some((n, s)) = scaled {
        w = scale_rows(&w, n, s)?;
    }
    Ok(w.t()?.contiguous()?)
}

/// `x` with its first `n` rows multiplied by `s`.
pub(crate) fn scale_rows(x: &Tensor, n: usize, s: f64) -> Result<Tensor> {
    let rest = x.dim(0)? - n;
    Ok(Tensor::cat(
        &[(x.narrow(0, 0, n)? * s)?, x.narrow(0, n, rest)?],
        0,
    )?)
}

/// The CPU pass for dtype `T`; `None` when the parts are not all contiguous `T` of one width.
fn cpu<T: WithDType>(parts: &[Tensor], scaled: Option<(usize, f64)>) -> Result<Option<Tensor>> {
    let cols = parts.first().map_or(Ok(0), |p| p.dim(1))?;
    if cols == 0 {
        return Ok(None);
    }
    let guards: Vec<_> = parts.iter().map(Tensor::storage_and_layout).collect();
    let mut sources: Vec<&[T]> = Vec::with_capacity(parts.len());
    for (storage, layout) in &guards {
        let (Storage::Cpu(cpu), Some((a, b))) = (&**storage, layout.contiguous_offsets()) else {
            return Ok(None);
        };
        let data = cpu.as_slice::<T>()?;
        match data.get(a..b) {
            Some(d) if layout.dims().get(1) == Some(&cols) => sources.push(d),
            _ => return Ok(None),
        }
    }
    // Source rows, in stacking order, as slices of `cols` values.
    let rows: Vec<&[T]> = sources.iter().flat_map(|s| s.chunks_exact(cols)).collect();
    let (n, mul, add) = match scaled {
        Some((n, s)) => (n, T::from_f64(s), T::from_f64(0.0)),
        None => (0, T::one(), T::zero()),
    };
    let out = transpose_rows(
        &rows,
        cols,
        T::zero(),
        |v, r| if r < n { v * mul + add } else { v },
    );
    Ok(Some(Tensor::from_vec(out, (cols, rows.len()), &Device::Cpu)?))
}

/// `rows` (each `cols` values) transposed: `out[c * rows.len() + r] = f(rows[r][c], r)`
/// (`missing` for a row too short: none is), in parallel, each value written once into memory
/// never zeroed first (so the threads that write the pages fault them in).
pub(crate) fn transpose_rows<S: Copy + Sync, T: Send>(
    rows: &[&[S]],
    cols: usize,
    missing: S,
    f: impl Fn(S, usize) -> T + Sync,
) -> Vec<T> {
    let total = rows.len();
    let mut out = Vec::with_capacity(cols * total);
    let Some(slots) = out.spare_capacity_mut().get_mut(..cols * total) else {
        return Vec::new();
    };
    if total == 0 {
        return Vec::new();
    }
    slots
        .par_chunks_mut(TILE * total)
        .enumerate()
        .for_each(|(block, out)| {
            let c0 = block * TILE;
            // GROUP rows at a time: GROUP sequential read streams, one short contiguous store
            // per output row.
            for (g, group) in rows.chunks(GROUP).enumerate() {
                let r0 = g * GROUP;
                for (dst, c) in out.chunks_exact_mut(total).zip(c0..) {
                    let dst = dst.iter_mut().skip(r0).zip(group).zip(r0..);
                    for ((d, row), r) in dst {
                        d.write(f(row.get(c).copied().unwrap_or(missing), r));
                    }
                }
            }
        });
    // SAFETY: the tasks cover the first `cols * total` slots (`cols` output rows of `total`,
    // `TILE` rows per task) and write every slot of each row (`rows` has `total` entries).
    unsafe { out.set_len(cols * total) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU pass gives candle's ops' values, bit for bit, in every dtype it takes.
    #[test]
    fn matches_candle_ops() {
        let dev = Device::Cpu;
        let a = Tensor::randn(0f32, 1.0, (70, 130), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, (3, 130), &dev).unwrap();
        let c = Tensor::randn(0f32, 1.0, (129, 130), &dev).unwrap();
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let parts: Vec<Tensor> = [&a, &b, &c].iter().map(|t| t.to_dtype(dtype).unwrap()).collect();
            for scaled in [None, Some((73, 0.125)), Some((70, 1.0 / 3.0))] {
                let ours = stacked_transposed(&parts, scaled).unwrap();
                let theirs = composed(&parts, scaled).unwrap();
                assert_eq!(ours.dims(), &[130, 202]);
                let bits = |t: &Tensor| -> Vec<u32> {
                    let v = t.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
                    v.to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
                };
                assert_eq!(bits(&ours), bits(&theirs), "{dtype:?} {scaled:?}");
            }
        }
        // A transposed view is not contiguous: candle's ops take it.
        let t = a.t().unwrap();
        let ours = stacked_transposed(std::slice::from_ref(&t), None).unwrap();
        assert_eq!(ours.to_vec2::<f32>().unwrap(), a.to_vec2::<f32>().unwrap());
    }
}
