//! The score cache: target log-probs by model digest and token ids, so a prompt already scored
//! (by any request, job or replica) is never scored again. An in-process LRU bounded in bytes,
//! backed by a shared store (Redis) when one is configured. It sits at the scorer seam:
//! [`CachedScorer`] wraps whatever scores (the engine, a job's fan-out).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::model::{GradientJob, Model, ScoreItem};
use crate::scorer::Scorer;

/// A store shared between replicas: binary keys to binary values. Failures are misses: the
/// cache only ever saves work.
pub(crate) trait SharedScores: Send + Sync {
    /// Values of `keys`, in order (None: absent or unreachable). Called from a blocking thread.
    fn get_many(&self, keys: &[Vec<u8>]) -> Vec<Option<Vec<u8>>>;
    /// Stores entries (best effort). Called from a blocking thread.
    fn put_many(&self, entries: Vec<(Vec<u8>, Vec<u8>)>);
}

/// Bookkeeping per entry beyond its numbers (map and order slots, vector headers).
const ENTRY_OVERHEAD: usize = 128;

struct Lru {
    map: HashMap<ScoreItem, (Vec<f32>, u64)>,
    order: BTreeMap<u64, ScoreItem>,
    tick: u64,
    bytes: usize,
    capacity: usize,
}

fn entry_bytes(item: &ScoreItem, scores: &[f32]) -> usize {
    4 * (item.prompt.len() + item.target.len() + scores.len()) + ENTRY_OVERHEAD
}

impl Lru {
    fn get(&mut self, item: &ScoreItem) -> Option<Vec<f32>> {
        self.tick += 1;
        let tick = self.tick;
        let (scores, t) = self.map.get_mut(item)?;
        let old = std::mem::replace(t, tick);
        let scores = scores.clone();
        if let Some(k) = self.order.remove(&old) {
            self.order.insert(tick, k);
        }
        Some(scores)
    }

    fn put(&mut self, item: ScoreItem, scores: Vec<f32>) {
        let size = entry_bytes(&item, &scores);
        if size > self.capacity || self.map.contains_key(&item) {
            return;
        }
        while self.bytes + size > self.capacity {
            let Some((_, old)) = self.order.pop_first() else {
                break;
            };
            if let Some((s, _)) = self.map.remove(&old) {
                self.bytes -= entry_bytes(&old, &s);
            }
        }
        self.tick += 1;
        self.order.insert(self.tick, item.clone());
        self.map.insert(item, (scores, self.tick));
        self.bytes += size;
    }
}

/// Counters for /metrics.
#[derive(Default)]
pub(crate) struct CacheStats {
    pub local_hits: AtomicU64,
    pub shared_hits: AtomicU64,
    pub misses: AtomicU64,
}

pub(crate) struct ScoreCache {
    digest: String,
    local: Mutex<Lru>,
    shared: Option<Arc<dyn SharedScores>>,
    pub stats: CacheStats,
}

impl ScoreCache {
    /// A cache for the model whose digest is `digest`, holding up to `capacity_bytes` here
    /// (0: no local copies) and sharing through `shared` when given.
    pub(crate) fn new(digest: String, capacity_bytes: usize, shared: Option<Arc<dyn SharedScores>>) -> Self {
        ScoreCache {
            digest,
            local: Mutex::new(Lru {
                map: HashMap::new(),
                order: BTreeMap::new(),
                tick: 0,
                bytes: 0,
                capacity: capacity_bytes,
            }),
            shared,
            stats: CacheStats::default(),
        }
    }

    fn local(&self) -> MutexGuard<'_, Lru> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn digest(&self) -> &str {
        &self.digest
    }

    /// (entries, bytes) held here.
    pub(crate) fn size(&self) -> (usize, usize) {
        let l = self.local();
        (l.map.len(), l.bytes)
    }

    /// The key in the shared store: exact token ids, no hash to collide.
    fn shared_key(&self, item: &ScoreItem) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.digest.len() + 8 + 4 * (item.prompt.len() + item.target.len()));
        k.extend_from_slice(b"score:");
        k.extend_from_slice(self.digest.as_bytes());
        k.push(b':');
        k.extend_from_slice(&(item.prompt.len() as u32).to_le_bytes());
        for id in item.prompt.iter().chain(&item.target) {
            k.extend_from_slice(&id.to_le_bytes());
        }
        k
    }

    /// Scores of `items` known here or in the shared store.
    pub(crate) fn lookup(&self, items: &[ScoreItem]) -> Vec<Option<Vec<f32>>> {
        let mut out: Vec<Option<Vec<f32>>> = {
            let mut l = self.local();
            items.iter().map(|i| l.get(i)).collect()
        };
        let local_hits = out.iter().filter(|o| o.is_some()).count();
        self.stats
            .local_hits
            .fetch_add(local_hits as u64, Ordering::Relaxed);
        if let Some(shared) = &self.shared {
            let missing: Vec<usize> = (0..items.len()).filter(|&i| out[i].is_none()).collect();
            if !missing.is_empty() {
                let keys: Vec<Vec<u8>> = missing.iter().map(|&i| self.shared_key(&items[i])).collect();
                let found = shared.get_many(&keys);
                let mut l = self.local();
                let mut hits = 0;
                for (&i, v) in missing.iter().zip(found) {
                    if let Some(scores) = v.as_deref().and_then(decode_scores) {
                        if scores.len() == items[i].target.len() {
                            l.put(items[i].clone(), scores.clone());
                            out[i] = Some(scores);
                            hits += 1;
                        }
                    }
                }
                self.stats.shared_hits.fetch_add(hits, Ordering::Relaxed);
            }
        }
        let misses = out.iter().filter(|o| o.is_none()).count();
        self.stats.misses.fetch_add(misses as u64, Ordering::Relaxed);
        out
    }

    /// Remembers freshly scored items here and in the shared store.
    pub(crate) fn insert(&self, items: &[ScoreItem], scores: &[Vec<f32>]) {
        {
            let mut l = self.local();
            for (i, s) in items.iter().zip(scores) {
                l.put(i.clone(), s.clone());
            }
        }
        if let Some(shared) = &self.shared {
            let entries = items
                .iter()
                .zip(scores)
                .map(|(i, s)| (self.shared_key(i), encode_scores(s)))
                .collect();
            shared.put_many(entries);
        }
    }
}

/// f32s as little-endian bytes: exact, unlike a decimal round trip.
pub(crate) fn encode_scores(scores: &[f32]) -> Vec<u8> {
    scores.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn decode_scores(bytes: &[u8]) -> Option<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

/// Identifies a model by what it computes: its shape and the exact log-probs it gives a fixed
/// probe sequence. The same weights on the same kind of CPU give the same digest (so replicas
/// share entries); other weights, or arithmetic that would give other bits, give another.
pub(crate) fn model_digest(model: &Model) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(&model.info().arch).unwrap_or_default());
    let vocab = model.info().arch.vocab_size.max(1) as u32;
    let probe = ScoreItem {
        prompt: (1..=8).map(|i| (i * 97) % vocab).collect(),
        target: (9..=12).map(|i| (i * 97) % vocab).collect(),
    };
    match model.score(&[probe]) {
        Ok(scores) => scores.iter().for_each(|s| h.update(encode_scores(s))),
        Err(e) => tracing::warn!("cannot probe the model for its digest ({e}); using its shape only"),
    }
    h.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Identifies a model an inference server serves by the server's URL, the model's name and
/// the revision the server reports (never by local weights).
pub(crate) fn remote_digest(model: &crate::scorer::remote::RemoteModel) -> String {
    let h = Sha256::digest(model.identity().as_bytes());
    h[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// A scorer that answers from the cache and sends only the rest to `inner`.
pub(crate) struct CachedScorer {
    inner: Box<dyn Scorer>,
    cache: Arc<ScoreCache>,
}

impl CachedScorer {
    pub(crate) fn new(inner: Box<dyn Scorer>, cache: Arc<ScoreCache>) -> Self {
        CachedScorer { inner, cache }
    }
}

impl Scorer for CachedScorer {
    crate::scorer_facts_from!(inner);

    fn score(
        &self,
        items: Vec<ScoreItem>,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Vec<Vec<f32>>> {
        let total = items.len();
        let mut found = self.cache.lookup(&items);
        let missing: Vec<usize> = (0..total).filter(|&i| found[i].is_none()).collect();
        let hits = total - missing.len();
        if hits > 0 {
            progress(hits, total);
        }
        if !missing.is_empty() {
            let todo: Vec<ScoreItem> = missing.iter().map(|&i| items[i].clone()).collect();
            let scored = self
                .inner
                .score(todo.clone(), &|done, _| progress(hits + done, total))?;
            self.cache.insert(&todo, &scored);
            for (&i, s) in missing.iter().zip(scored) {
                found[i] = Some(s);
            }
        }
        Ok(found.into_iter().map(Option::unwrap_or_default).collect())
    }

    fn generate(&self, prompt: &[u32], max_new_tokens: usize) -> Result<Vec<u32>> {
        self.inner.generate(prompt, max_new_tokens)
    }

    fn is_cancelled(&self) -> bool {
        self.inner.is_cancelled()
    }

    fn gradients(&self, job: GradientJob, progress: &(dyn Fn(usize, usize) + Sync)) -> Result<Vec<Vec<f64>>> {
        self.inner.gradients(job, progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(p: u32) -> ScoreItem {
        ScoreItem {
            prompt: vec![p, p + 1],
            target: vec![7],
        }
    }

    #[test]
    fn lru_evicts_the_least_recently_used_within_its_bytes() {
        let one = entry_bytes(&item(0), &[0.0]);
        let c = ScoreCache::new("d".into(), 2 * one, None);
        c.insert(&[item(1), item(2)], &[vec![-1.0], vec![-2.0]]);
        assert_eq!(c.lookup(&[item(1)])[0], Some(vec![-1.0])); // 1 is now the most recent
        c.insert(&[item(3)], &[vec![-3.0]]);
        let got = c.lookup(&[item(1), item(2), item(3)]);
        assert_eq!(got, vec![Some(vec![-1.0]), None, Some(vec![-3.0])]);
        assert_eq!(c.size(), (2, 2 * one));
        assert_eq!(c.stats.misses.load(Ordering::Relaxed), 1);
        assert_eq!(c.stats.local_hits.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn scores_round_trip_bit_for_bit() {
        let s = vec![f32::MIN_POSITIVE, -0.1, -123.456_79, f32::NEG_INFINITY];
        let back = decode_scores(&encode_scores(&s)).unwrap();
        assert!(s.iter().zip(&back).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert!(decode_scores(&[1, 2, 3]).is_none());
    }

    struct Shared(Mutex<HashMap<Vec<u8>, Vec<u8>>>);

    impl SharedScores for Shared {
        fn get_many(&self, keys: &[Vec<u8>]) -> Vec<Option<Vec<u8>>> {
            let m = self.0.lock().unwrap();
            keys.iter().map(|k| m.get(k).cloned()).collect()
        }
        fn put_many(&self, entries: Vec<(Vec<u8>, Vec<u8>)>) {
            self.0.lock().unwrap().extend(entries);
        }
    }

    #[test]
    fn a_second_cache_finds_what_the_first_shared() {
        let shared = Arc::new(Shared(Mutex::new(HashMap::new())));
        let a = ScoreCache::new("m".into(), 1 << 20, Some(shared.clone()));
        let b = ScoreCache::new("m".into(), 1 << 20, Some(shared.clone()));
        let other_model = ScoreCache::new("n".into(), 1 << 20, Some(shared));
        a.insert(&[item(1)], &[vec![-0.5]]);
        assert_eq!(b.lookup(&[item(1)])[0], Some(vec![-0.5]));
        assert_eq!(b.stats.shared_hits.load(Ordering::Relaxed), 1);
        assert_eq!(other_model.lookup(&[item(1)])[0], None);
    }
}
