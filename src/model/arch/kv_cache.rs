//! The one cache policy every architecture shares: additive attention masks built once per
//! shape, and a key/value cache for greedy generation and for prefixes that a batch shares.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Device, Result, Tensor};

/// Keys and values of every layer, `[1, kv_heads, positions, head_dim]` each: the sequence
/// being generated, or a prefix that a batch of suffixes shares (see [`KvCache::shared`]).
#[derive(Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Set on a view of a prefix for a batch of suffixes.
    view: Option<View>,
}

/// A read-only view of a one-sequence prefix for a batch of suffixes: appends broadcast the
/// prefix over the batch and leave it as it was; the new keys and values of one row of the
/// batch (`keep`: the row and its real length) are kept.
#[derive(Clone)]
struct View {
    keep: Option<(usize, usize)>,
    kept: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub(crate) fn new(layers: usize) -> Self {
        KvCache {
            layers: vec![None; layers],
            view: None,
        }
    }

    /// Positions already cached.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(Option::as_ref)
            .map_or(0, |(k, _)| k.dims()[2])
    }

    /// True before the first step.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a step's keys and values to layer `i`'s and returns all of them. On a
    /// [`KvCache::shared`] view, the cached prefix is broadcast over the step's batch and the
    /// cache itself does not grow.
    pub fn append(&mut self, i: usize, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let Some(layer) = self.layers.get(i) else {
            candle_core::bail!("the cache has no layer {i}");
        };
        let Some(view) = &mut self.view else {
            let (k, v) = match layer {
                Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
                None => (k, v),
            };
            self.layers[i] = Some((k.clone(), v.clone()));
            return Ok((k, v));
        };
        if let (Some((row, len)), Some(slot)) = (view.keep, view.kept.get_mut(i)) {
            let pick = |t: &Tensor| t.narrow(0, row, 1)?.narrow(2, 0, len)?.contiguous();
            *slot = Some((pick(&k)?, pick(&v)?));
        }
        match layer {
            Some((pk, pv)) => {
                let b = k.dim(0)?;
                Ok((
                    Tensor::cat(&[&expand(pk, b)?, &k], 2)?,
                    Tensor::cat(&[&expand(pv, b)?, &v], 2)?,
                ))
            }
            None => Ok((k, v)),
        }
    }

    /// A view of this (one-sequence) cache for a forward pass over a batch of suffixes that all
    /// follow it; with `keep`, the view keeps the new keys and values of that batch row, its
    /// first `len` positions, for [`KvCache::into_kept`].
    pub fn shared(&self, keep: Option<(usize, usize)>) -> KvCache {
        KvCache {
            layers: self.layers.clone(),
            view: Some(View {
                keep,
                kept: vec![None; self.layers.len()],
            }),
        }
    }

    /// After a pass through a [`KvCache::shared`] view with `keep`: the prefix followed by the
    /// kept row, as a cache of its own (`None` when nothing was kept).
    pub fn into_kept(self) -> Result<Option<KvCache>> {
        let Some(view) = self.view else {
            return Ok(None);
        };
        let mut layers = Vec::with_capacity(self.layers.len());
        for (prefix, kept) in self.layers.into_iter().zip(view.kept) {
            let Some((k, v)) = kept else {
                return Ok(None);
            };
            layers.push(Some(match prefix {
                Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                None => (k, v),
            }));
        }
        Ok(Some(KvCache { layers, view: None }))
    }

    /// The first `len` positions (a prefix of the cached sequence), copied so that they hold
    /// no more memory than they need.
    pub fn truncated(&self, len: usize) -> Result<KvCache> {
        if len >= self.len() {
            return Ok(KvCache {
                layers: self.layers.clone(),
                view: None,
            });
        }
        let cut = |t: &Tensor| t.narrow(2, 0, len)?.contiguous();
        let layers = self
            .layers
            .iter()
            .map(|l| l.as_ref().map(|(k, v)| Ok((cut(k)?, cut(v)?))).transpose())
            .collect::<Result<_>>()?;
        Ok(KvCache { layers, view: None })
    }

    /// Bytes the cached keys and values take.
    pub fn bytes(&self) -> usize {
        let size = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        self.layers.iter().flatten().map(|(k, v)| size(k) + size(v)).sum()
    }
}

/// `t` (`[1, ..]`) repeated `b` times along the batch axis, contiguous.
fn expand(t: &Tensor, b: usize) -> Result<Tensor> {
    if t.dim(0)? == b {
        return Ok(t.clone());
    }
    let mut dims = t.dims().to_vec();
    dims[0] = b;
    t.broadcast_as(dims)?.contiguous()
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
