//! Memory-mapped safetensors files as a `VarBuilder` backend that converts each tensor straight
//! from the map into the model's dtype, in parallel, and then lets go of the map's pages.
//!
//! candle's own backend copies each tensor out of the map in the file's dtype, converts that
//! copy on one thread, and keeps every page of the map resident until the `VarBuilder` is
//! dropped: a 1B bf16 model loaded in f32 peaked at 6 bytes per parameter (4 for the weights, 2
//! for the mapped file). Here the pages of a tensor leave the process as soon as it is
//! converted (they stay in the page cache), so the peak is the weights plus one tensor.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor, WithDType};
use candle_nn::var_builder::SimpleBackend;
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::SafeTensors;

use crate::error::{Error, Result};
use crate::model::arch::layout::transpose_rows;

/// Where a tensor's bytes are: which file, and its range in that file's map.
struct Entry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// The memory-mapped weight files and an index of their tensors; clones share them.
#[derive(Clone)]
pub(crate) struct Mapped(Arc<Files>);

struct Files {
    maps: Vec<Mmap>,
    tensors: HashMap<String, Entry>,
}

impl Mapped {
    /// Maps `files` and reads their headers.
    ///
    /// # Safety
    /// As for every memory map: nobody may truncate or rewrite the files while they are mapped
    /// (the `Mapped` lives while the model loads; tensors are copied out).
    pub(crate) unsafe fn open(files: &[PathBuf]) -> Result<Self> {
        let mut mapped = Files {
            maps: Vec::with_capacity(files.len()),
            tensors: HashMap::new(),
        };
        for (i, path) in files.iter().enumerate() {
            let bad = |m: String| Error::Model(format!("{}: {m}", path.display()));
            let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
            // SAFETY: the caller keeps the file unchanged while it is mapped.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| bad(e.to_string()))?;
            let (header, meta) = SafeTensors::read_metadata(&map).map_err(|e| bad(e.to_string()))?;
            let base = 8 + header;
            for (name, info) in meta.tensors() {
                let dtype = DType::try_from(info.dtype).map_err(|e| bad(format!("{name}: {e}")))?;
                let entry = Entry {
                    file: i,
                    dtype,
                    shape: info.shape.clone(),
                    start: base + info.data_offsets.0,
                    end: base + info.data_offsets.1,
                };
                // A tensor in two files: the later one, as candle's loader has it.
                mapped.tensors.insert(name.clone(), entry);
            }
            mapped.maps.push(map);
        }
        Ok(Mapped(Arc::new(mapped)))
    }

    /// Tensor `name`'s entry and the map its bytes are in.
    fn entry(&self, name: &str) -> Option<(&Entry, &Mmap)> {
        let e = self.0.tensors.get(name)?;
        Some((e, self.0.maps.get(e.file)?))
    }

    /// Tensor `name` in `dtype` on `device`.
    fn load(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let (entry, map) = self.entry(name).ok_or_else(|| {
            candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }
            .bt()
        })?;
        let bytes = map
            .get(entry.start..entry.end)
            .ok_or_else(|| candle_core::Error::Msg(format!("{name}: its bytes are past the file's end")))?;
        #[cfg(unix)]
        let _ = map.advise_range(memmap2::Advice::WillNeed, entry.start, bytes.len());
        let tensor = match device {
            Device::Cpu => match convert(bytes, entry.dtype, dtype, &entry.shape) {
                Some(t) => t,
                None => Tensor::from_raw_buffer(bytes, entry.dtype, &entry.shape, device)?.to_dtype(dtype),
            },
            _ => Tensor::from_raw_buffer(bytes, entry.dtype, &entry.shape, device)?.to_dtype(dtype),
        }?;
        release(map, entry.start, bytes.len());
        Ok(tensor)
    }
}

impl Mapped {
    /// The matrices `names` (each with the `[rows, cols]` it must have; one `cols`) in `to`
    /// (f32 or bf16) stacked, the first `scaled.0` rows times `scaled.1` (in f32), and
    /// transposed to `[cols, sum rows]`, converted from the file's f32, bf16 or f16 in the same
    /// parallel pass, into the only copy. `None` where that does not apply (a tensor missing or
    /// of another shape or dtype, another `to`): the caller reads them one by one then, with
    /// the errors that gives.
    pub(crate) fn stacked_transposed(
        &self,
        names: &[(String, [usize; 2])],
        scaled: Option<(usize, f64)>,
        to: DType,
    ) -> Option<candle_core::Result<Tensor>> {
        use half::{bf16, f16};
        let (first, [_, cols]) = names.first()?;
        let dtype = self.entry(first)?.0.dtype;
        let mut parts = Vec::with_capacity(names.len());
        for (name, shape) in names {
            let (e, map) = self.entry(name)?;
            if e.shape.as_slice() != shape.as_slice() || shape[1] != *cols || e.dtype != dtype {
                return None;
            }
            parts.push((map, e.start, map.get(e.start..e.end)?));
        }
        let (n, mul) = scaled.map_or((0, 1.0), |(n, s)| (n, s as f32));
        let slices: Vec<&[u8]> = parts.iter().map(|p| p.2).collect();
        let cols = *cols;
        let s = (&slices[..], cols, n, mul);
        let out = match (dtype, to) {
            (DType::F32, DType::F32) => fused(s, f32::from_le_bytes, |x| x),
            (DType::BF16, DType::F32) => fused(s, |b| bf16::from_le_bytes(b).to_f32(), |x| x),
            (DType::F16, DType::F32) => fused(s, |b| f16::from_le_bytes(b).to_f32(), |x| x),
            (DType::F32, DType::BF16) => fused(s, f32::from_le_bytes, bf16::from_f32),
            (DType::BF16, DType::BF16) => fused(s, |b| bf16::from_le_bytes(b).to_f32(), bf16::from_f32),
            (DType::F16, DType::BF16) => fused(s, |b| f16::from_le_bytes(b).to_f32(), bf16::from_f32),
            _ => return None,
        };
        for (map, start, bytes) in parts {
            release(map, start, bytes.len());
        }
        Some(out)
    }
}

/// `W`-byte values in rows of `cols` (the stacked `slices`) decoded by `f`, the first `n` rows
/// times `mul` (as candle scales f32: `x * mul + 0`), stored by `g`, transposed.
fn fused<const W: usize, T: WithDType>(
    (slices, cols, n, mul): (&[&[u8]], usize, usize, f32),
    f: impl Fn([u8; W]) -> f32 + Sync,
    g: impl Fn(f32) -> T + Sync,
) -> candle_core::Result<Tensor> {
    if cols == 0 {
        candle_core::bail!("a matrix of no columns");
    }
    let mut rows: Vec<&[[u8; W]]> = Vec::new();
    for s in slices {
        let (values, rest) = s.as_chunks::<W>();
        if !rest.is_empty() || values.len() % cols != 0 {
            candle_core::bail!("{} bytes are not rows of {cols} values", s.len());
        }
        rows.extend(values.chunks_exact(cols));
    }
    let out = transpose_rows(&rows, cols, [0; W], |b, r| {
        let x = f(b);
        g(if r < n { x * mul + 0.0 } else { x })
    });
    Tensor::from_vec(out, (cols, rows.len()), &Device::Cpu)
}

/// Drops the pages of `map[start..start + len]` from this process (they stay in the page cache
/// and fault back in from it if read again), so a loaded tensor's file pages stop counting in
/// its resident memory.
fn release(map: &Mmap, start: usize, len: usize) {
    #[cfg(unix)]
    // SAFETY: the map is read-only and its file unchanged (see `Mapped::open`), so discarding
    // its pages changes nothing a reader can see: the next read faults the same bytes back in.
    let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len) };
    #[cfg(not(unix))]
    let _ = (map, start, len);
}

/// Elements per rayon task when converting.
const CHUNK: usize = 1 << 16;

/// `bytes` (little-endian `from` values) as a CPU tensor of `to`, converted in parallel; `None`
/// for a pair of dtypes left to candle.
fn convert(bytes: &[u8], from: DType, to: DType, shape: &[usize]) -> Option<candle_core::Result<Tensor>> {
    use half::{bf16, f16};
    let shape = Shape::from(shape);
    Some(match (from, to) {
        (DType::F32, DType::F32) => decode(bytes, shape, f32::from_le_bytes),
        (DType::BF16, DType::F32) => decode(bytes, shape, |b| bf16::from_le_bytes(b).to_f32()),
        (DType::F16, DType::F32) => decode(bytes, shape, |b| f16::from_le_bytes(b).to_f32()),
        (DType::BF16, DType::BF16) => decode(bytes, shape, bf16::from_le_bytes),
        (DType::F16, DType::F16) => decode(bytes, shape, f16::from_le_bytes),
        _ => return None,
    })
}

/// Decodes `W`-byte values into a new tensor, `CHUNK` values per task.
fn decode<const W: usize, T: WithDType>(
    bytes: &[u8],
    shape: Shape,
    f: impl Fn([u8; W]) -> T + Sync,
) -> candle_core::Result<Tensor> {
    let (values, rest) = bytes.as_chunks::<W>();
    if !rest.is_empty() || values.len() != shape.elem_count() {
        candle_core::bail!(
            "{} bytes do not hold a {shape:?} tensor of {}",
            bytes.len(),
            T::DTYPE.as_str()
        );
    }
    // Uninitialised, so that the threads fault the pages in as they write them (zeroing them
    // first would fault them all in on this thread).
    let mut out = Vec::with_capacity(values.len());
    let Some(slots) = out.spare_capacity_mut().get_mut(..values.len()) else {
        candle_core::bail!("cannot allocate {} values", values.len());
    };
    slots
        .par_chunks_mut(CHUNK)
        .zip(values.par_chunks(CHUNK))
        .for_each(|(out, values)| {
            for (o, v) in out.iter_mut().zip(values) {
                o.write(f(*v));
            }
        });
    // SAFETY: the chunks of the first `values.len()` slots and of `values` pair up one to one,
    // so every one of those slots was written.
    unsafe { out.set_len(values.len()) };
    Tensor::from_vec(out, shape, &Device::Cpu)
}

impl SimpleBackend for Mapped {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.load(name, dtype, dev)?;
        if tensor.shape() != &s {
            Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: s,
                got: tensor.shape().clone(),
            }
            .bt())?
        }
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.tensors.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every fast conversion gives candle's values, bit for bit.
    #[test]
    fn conversions_match_candle() {
        let values: Vec<f32> = (0..3 * CHUNK + 7)
            .map(|i| ((i as f32) * 0.37).sin() * 10f32.powi(i as i32 % 7 - 3))
            .chain([0.0, -0.0, f32::INFINITY, f32::NAN, 1e-40])
            .collect();
        let n = values.len();
        let src = Tensor::from_vec(values, n, &Device::Cpu).unwrap();
        for from in [DType::F32, DType::BF16, DType::F16] {
            let t = src.to_dtype(from).unwrap();
            let bytes: Vec<u8> = match from {
                DType::F32 => t
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
                DType::BF16 => t
                    .to_vec1::<half::bf16>()
                    .unwrap()
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
                _ => t
                    .to_vec1::<half::f16>()
                    .unwrap()
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            };
            for to in [DType::F32, from] {
                let ours = convert(&bytes, from, to, &[n]).unwrap().unwrap();
                let theirs = Tensor::from_raw_buffer(&bytes, from, &[n], &Device::Cpu)
                    .unwrap()
                    .to_dtype(to)
                    .unwrap();
                let bits = |t: &Tensor| -> Vec<u32> {
                    t.to_dtype(DType::F32)
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                        .iter()
                        .map(|v| v.to_bits())
                        .collect()
                };
                assert_eq!(ours.dtype(), to);
                assert_eq!(bits(&ours), bits(&theirs), "{from:?} -> {to:?}");
            }
        }
        assert!(convert(&[0u8; 6], DType::F32, DType::F32, &[2]).unwrap().is_err());
        assert!(convert(&[0u8; 4], DType::U8, DType::F32, &[4]).is_none());
    }

    /// Stacked and transposed straight from the file: candle's ops' values, bit for bit, from
    /// f32, bf16 and f16 files; anything unusual is left to the caller.
    #[test]
    fn stacked_from_the_map_match_candle() {
        let dir = tempfile::tempdir().unwrap();
        let q = Tensor::randn(0f32, 1.0, (70, 33), &Device::Cpu).unwrap();
        let k = Tensor::randn(0f32, 1.0, (9, 33), &Device::Cpu).unwrap();
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let (q, k) = (q.to_dtype(dtype).unwrap(), k.to_dtype(dtype).unwrap());
            let path = dir.path().join(format!("{}.safetensors", dtype.as_str()));
            let tensors = HashMap::from([("a.q".to_string(), q.clone()), ("a.k".to_string(), k.clone())]);
            candle_core::safetensors::save(&tensors, &path).unwrap();
            // SAFETY: the test's own file, not changed while mapped.
            let mapped = unsafe { Mapped::open(std::slice::from_ref(&path)) }.unwrap();
            let names = [("a.q".to_string(), [70, 33]), ("a.k".to_string(), [9, 33])];
            let ours = mapped
                .stacked_transposed(&names, Some((70, 0.125)), DType::F32)
                .unwrap()
                .unwrap();
            let f32s = [q.to_dtype(DType::F32).unwrap(), k.to_dtype(DType::F32).unwrap()];
            let theirs = crate::model::arch::layout::stacked_transposed(&f32s, Some((70, 0.125))).unwrap();
            let bits = |t: &Tensor| -> Vec<u32> {
                t.flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect()
            };
            assert_eq!(ours.dims(), &[33, 79]);
            assert_eq!(bits(&ours), bits(&theirs), "{dtype:?}");
            let wrong = [("a.q".to_string(), [33, 70])];
            assert!(mapped.stacked_transposed(&wrong, None, DType::F32).is_none());
            let missing = [("a.v".to_string(), [9, 33])];
            assert!(mapped.stacked_transposed(&missing, None, DType::F32).is_none());
            // In bf16: the f32 result rounded once (0.125 scales exactly).
            let b16 = mapped
                .stacked_transposed(&names, Some((70, 0.125)), DType::BF16)
                .unwrap()
                .unwrap();
            assert_eq!(b16.dtype(), DType::BF16);
            assert_eq!(
                bits(&b16.to_dtype(DType::F32).unwrap()),
                bits(
                    &theirs
                        .to_dtype(DType::BF16)
                        .unwrap()
                        .to_dtype(DType::F32)
                        .unwrap()
                )
            );
        }
    }
}
