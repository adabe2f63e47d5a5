//! The one cache policy every architecture shares: additive attention masks built once per
//! shape, and a key/value cache for greedy generation.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Device, Result, Tensor};

/// Keys and values of every layer for the one sequence being generated,
/// `[1, kv_heads, positions, head_dim]` each.
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub(crate) fn new(layers: usize) -> Self {
        KvCache {
            layers: vec![None; layers],
        }
    }

    /// Positions already cached.
    pub(crate) fn len(&self) -> usize {
        self.layers[0].as_ref().map_or(0, |(k, _)| k.dims()[2])
    }

    /// Appends a step's keys and values to layer `i`'s and returns all of them.
    pub(crate) fn append(&mut self, i: usize, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let (k, v) = match &self.layers[i] {
            Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
            None => (k, v),
        };
        self.layers[i] = Some((k.clone(), v.clone()));
        Ok((k, v))
    }
}

/// A mask's shape: query length, key length, sliding window, dtype.
type MaskKey = (usize, usize, Option<usize>, DType);

/// Additive causal masks (0 where a query sees a key, -inf elsewhere), kept per shape.
pub(crate) struct Masks {
    device: Device,
    cache: Mutex<HashMap<MaskKey, Tensor>>,
}

/// Cached mask elements before the cache is emptied (a 1024 x 1024 mask alone is 4 MB).
const MAX_CACHED: usize = 8 << 20;

impl Masks {
    pub(crate) fn new(device: &Device) -> Self {
        Masks {
            device: device.clone(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// `[len, past + len]` for queries at positions `past..past + len`: query `q` sees key `k`
    /// when `k <= q` and, with a sliding window, `q - k < window`. `None` when nothing is
    /// masked (one query that sees every key).
    pub(crate) fn get(
        &self,
        len: usize,
        past: usize,
        window: Option<usize>,
        dtype: DType,
    ) -> Result<Option<Tensor>> {
        let total = past + len;
        let window = window.filter(|&w| w < total);
        if len == 1 && window.is_none() {
            return Ok(None);
        }
        let key = (len, past, window, dtype);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = cache.get(&key) {
            return Ok(Some(m.clone()));
        }
        let data: Vec<f32> = (0..len)
            .flat_map(|i| {
                let q = past + i;
                (0..total).map(move |k| {
                    let seen = k <= q && window.is_none_or(|w| q - k < w);
                    if seen {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
            })
            .collect();
        let m = Tensor::from_vec(data, (len, total), &self.device)?.to_dtype(dtype)?;
        let cached: usize = cache.values().map(Tensor::elem_count).sum();
        if cached + len * total > MAX_CACHED {
            cache.clear();
        }
        cache.insert(key, m.clone());
        Ok(Some(m))
    }
}

/// First index of the largest value (as `torch.argmax`).
pub(crate) fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_of_equal_values() {
        assert_eq!(argmax(&[0.0, 2.0, 1.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY, -1.0]), 1);
    }

    #[test]
    fn masks_are_causal_and_windowed() {
        let masks = Masks::new(&Device::Cpu);
        let seen = |m: Tensor| -> Vec<Vec<bool>> {
            m.to_vec2::<f32>()
                .unwrap()
                .into_iter()
                .map(|r| r.into_iter().map(|x| x == 0.0).collect())
                .collect()
        };
        let m = masks.get(3, 0, None, DType::F32).unwrap().unwrap();
        assert_eq!(
            seen(m),
            vec![
                vec![true, false, false],
                vec![true, true, false],
                vec![true, true, true]
            ]
        );
        let m = masks.get(2, 2, Some(2), DType::F32).unwrap().unwrap();
        assert_eq!(
            seen(m),
            vec![vec![false, true, true, false], vec![false, false, true, true]]
        );
        assert!(masks.get(1, 5, None, DType::F32).unwrap().is_none());
        assert!(masks.get(1, 5, Some(9), DType::F32).unwrap().is_none());
        assert!(masks.get(1, 5, Some(3), DType::F32).unwrap().is_some());
    }
}
