//! Shared-prefix reuse: the items of a batch that share a token prefix are grouped, the prefix
//! is computed once (or taken from a small LRU of prefix keys and values, kept across batches
//! and requests), and the group's suffixes run in one batched pass that attends to it.
//!
//! A group's prefix always ends before the first position whose hidden state is needed (the
//! last prompt token), so every row the LM head reads is in the suffix pass, and the scores are
//! those of a pass over the whole sequences.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::model::arch::kv_cache::KvCache;
use crate::model::ScoreItem;

/// Shortest prefix worth a pass of its own (or a cache lookup's copy).
pub(crate) const MIN_PREFIX: usize = 8;

/// Default bound of the prefix cache (`--prefix-cache-mb`).
pub const DEFAULT_PREFIX_CACHE_MB: usize = 256;

/// The scores of one batch and what its passes reused.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchScores {
    /// Log-probs of every target token of every item, in order.
    pub scores: Vec<Vec<f32>>,
    /// Per item: its input tokens whose keys and values came from a prefix computed for
    /// another item of the batch or kept in the prefix cache (the rest were computed for it).
    pub reused: Vec<usize>,
    /// Prefix-cache lookups, and those that found a prefix the batch used.
    pub lookups: usize,
    /// Of the lookups, those that found a cached prefix.
    pub hits: usize,
}

impl BatchScores {
    /// Scores computed without reuse.
    pub fn plain(scores: Vec<Vec<f32>>) -> Self {
        BatchScores {
            reused: vec![0; scores.len()],
            scores,
            lookups: 0,
            hits: 0,
        }
    }

    /// Appends the results of the batch's next items.
    pub(crate) fn join(mut self, other: BatchScores) -> Self {
        self.scores.extend(other.scores);
        self.reused.extend(other.reused);
        self.lookups += other.lookups;
        self.hits += other.hits;
        self
    }
}

/// The items of one pass (indices into the batch), in batch order, after a prefix of `len`
/// tokens that they all share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Group {
    pub members: Vec<usize>,
    pub len: usize,
}

/// Tokens fed to the model for `item`: the prompt and the target but its last token.
pub(crate) fn input(item: &ScoreItem) -> Vec<u32> {
    let n = item.target.len().saturating_sub(1);
    item.prompt.iter().chain(&item.target[..n]).copied().collect()
}

/// Length of the longest common prefix of `a` and `b`.
pub(crate) fn common(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The fewest tokens of `inputs` that a model computes when every prefix they share is computed
/// once: the number of their distinct prefixes (the nodes of their trie). Sorted, each input
/// adds the tokens past the longest prefix it shares with the one before it, which is the
/// longest it shares with any before it.
pub(crate) fn distinct_prefix_tokens(mut inputs: Vec<Vec<u32>>) -> usize {
    inputs.sort_unstable();
    let shared = |k: usize| k.checked_sub(1).map_or(0, |p| common(&inputs[p], &inputs[k]));
    (0..inputs.len()).map(|k| inputs[k].len() - shared(k)).sum()
}

/// Groups the items whose `inputs` share a prefix. Sorted by tokens, an item joins its
/// neighbour's group when they share at least [`MIN_PREFIX`] tokens and:
/// - with a prefix cache (`cached[i]`: what item `i` finds there alone), when it shares the
///   group's whole prefix (a group of one takes the length they share), and that prefix is no
///   shorter than what the item or any member finds in the cache. A group never shortens for a
///   newcomer: an item that shares less starts a group of its own, which waits for the keys
///   and values that its neighbour's pass leaves in the cache (the rounds of a batch's passes,
///   `pass.rs`), so each distinct prefix is computed once;
/// - without one (`None`), while what the group's members lose from its shortening is no more
///   than the newcomer gains, since a group is then the only way to share.
///
/// `caps[i]` bounds item `i`'s prefix (its first scored position); a group of one has the
/// length of its cap.
pub(crate) fn groups(inputs: &[Vec<u32>], caps: &[usize], cached: Option<&[usize]>) -> Vec<Group> {
    let mut order: Vec<usize> = (0..inputs.len()).collect();
    order.sort_by(|&a, &b| inputs[a].cmp(&inputs[b]));
    let at = |v: &[usize], i: usize| v.get(i).copied().unwrap_or(0);
    let mut out: Vec<Group> = Vec::new();
    // The longest prefix a member of the last group finds in the cache alone.
    let mut best = 0;
    let mut prev: Option<usize> = None;
    for &i in &order {
        let cap = at(caps, i);
        let own = cached.map_or(0, |c| at(c, i).min(cap));
        let joined = match (prev, out.last_mut()) {
            (Some(p), Some(g)) => {
                let shared = common(&inputs[p], &inputs[i]).min(cap).min(g.len);
                let whole = g.members.len() == 1 || shared == g.len;
                let join = match cached {
                    Some(_) => whole && shared >= MIN_PREFIX.max(own).max(best),
                    None => shared >= MIN_PREFIX && (g.len - shared) * g.members.len() <= shared,
                };
                if join {
                    g.members.push(i);
                    g.len = shared;
                }
                join
            }
            _ => false,
        };
        if joined {
            best = best.max(own);
        } else {
            best = own;
            out.push(Group {
                members: vec![i],
                len: cap,
            });
        }
        prev = Some(i);
    }
    for g in &mut out {
        g.members.sort_unstable();
    }
    out
}

/// An order of `items` for batches cut from it in turn: the first item (the unperturbed prompt
/// as the evaluator sends it), then the others by how long a prefix they share with it, longest
/// first, and by their tokens. The first batch then holds the first item's nearest variants and
/// leaves its keys and values in the prefix cache; later batches share their prefixes with it.
pub(crate) fn order_for_reuse(items: &[ScoreItem]) -> Vec<usize> {
    let input = |i: usize| {
        let it = &items[i];
        let n = it.target.len().saturating_sub(1);
        it.prompt.iter().chain(&it.target[..n])
    };
    if items.is_empty() {
        return Vec::new();
    }
    let shared: Vec<usize> = (0..items.len())
        .map(|i| input(0).zip(input(i)).take_while(|(a, b)| a == b).count())
        .collect();
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| {
        (a != 0)
            .cmp(&(b != 0))
            .then(shared[b].cmp(&shared[a]))
            .then_with(|| input(a).cmp(input(b)))
    });
    order
}

/// Prefix keys and values kept across batches and requests, least recently used first out,
/// bounded in bytes.
pub(crate) struct PrefixCache {
    /// Least recently used first.
    entries: Vec<(Vec<u32>, KvCache)>,
    bytes: usize,
    capacity: usize,
}

impl PrefixCache {
    pub(crate) fn new(capacity: usize) -> Self {
        PrefixCache {
            entries: Vec::new(),
            bytes: 0,
            capacity,
        }
    }

    /// The entry sharing the longest prefix of `tokens` (the most recently used of equals) and
    /// that length, when it is at least [`MIN_PREFIX`].
    fn best(&self, tokens: &[u32]) -> Option<(usize, usize)> {
        self.entries
            .iter()
            .enumerate()
            .map(|(k, (t, _))| (k, common(t, tokens)))
            .max_by_key(|&(k, n)| (n, k))
            .filter(|&(_, n)| n >= MIN_PREFIX)
    }

    /// How long a prefix of `tokens` the best entry shares (what [`PrefixCache::lookup`] would
    /// find; 0 under [`MIN_PREFIX`]), without touching the order of use.
    pub(crate) fn shared(&self, tokens: &[u32]) -> usize {
        self.best(tokens).map_or(0, |(_, n)| n)
    }

    /// The cached keys and values of the longest prefix of `tokens` that some entry shares (at
    /// least [`MIN_PREFIX`] tokens), and its length.
    pub(crate) fn lookup(&mut self, tokens: &[u32]) -> candle_core::Result<Option<(KvCache, usize)>> {
        let Some((k, n)) = self.best(tokens) else {
            return Ok(None);
        };
        let entry = self.entries.remove(k);
        let kv = entry.1.truncated(n)?;
        self.entries.push(entry);
        Ok(Some((kv, n)))
    }

    /// Keeps `kv`, the keys and values of `tokens`, evicting the least recently used entries
    /// to stay within the bound. An entry that is a prefix of `tokens` is dropped for it; one
    /// that `tokens` is a prefix of makes it redundant.
    pub(crate) fn insert(&mut self, tokens: Vec<u32>, kv: KvCache) {
        let size = kv.bytes();
        if size > self.capacity || tokens.len() < MIN_PREFIX {
            return;
        }
        if let Some(k) = self.entries.iter().position(|(t, _)| t.starts_with(&tokens)) {
            let entry = self.entries.remove(k);
            self.entries.push(entry);
            return;
        }
        self.entries.retain(|(t, kv)| {
            let keep = !tokens.starts_with(t);
            if !keep {
                self.bytes -= kv.bytes();
            }
            keep
        });
        while self.bytes + size > self.capacity && !self.entries.is_empty() {
            let (_, old) = self.entries.remove(0);
            self.bytes -= old.bytes();
        }
        self.bytes += size;
        self.entries.push((tokens, kv));
    }

    /// Bytes the entries take.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// A model's prefix reuse: whether it is on, and its cache.
pub(crate) struct PrefixReuse {
    on: AtomicBool,
    cache: Mutex<PrefixCache>,
}

impl PrefixReuse {
    pub(crate) fn new(capacity: usize) -> Self {
        PrefixReuse {
            on: AtomicBool::new(true),
            cache: Mutex::new(PrefixCache::new(capacity)),
        }
    }

    pub(crate) fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    pub(crate) fn set_on(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
    }

    /// Empties the cache and bounds it to `capacity` bytes from now on (0: no cache; batches
    /// still share their prefixes).
    pub(crate) fn set_capacity(&self, capacity: usize) {
        *self.lock() = PrefixCache::new(capacity);
    }

    pub(crate) fn capacity(&self) -> usize {
        self.lock().capacity
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, PrefixCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(prefix: &[u32], rest: &[u32]) -> Vec<u32> {
        prefix.iter().chain(rest).copied().collect()
    }

    /// Items that share a long prefix form one group (its length capped by the shortest
    /// prompt); an item that shares less than the group's whole prefix starts a group of its
    /// own, which the next item joins at the prefix they share; an item that shares nothing
    /// stays alone. An item that finds a longer prefix in the cache than a group would give it
    /// stays alone too, and so does its neighbour when joining would cost it what it has cached.
    /// Without a cache, a group shortens while its members lose no more than a newcomer gains.
    #[test]
    fn groups_follow_the_shared_prefix() {
        let p: Vec<u32> = (1..=20).collect();
        let inputs = vec![
            seq(&p, &[30, 31, 32]),
            seq(&[99, 98], &p),
            seq(&p, &[40, 41]),
            seq(&p[..10], &[50; 30]),
            seq(&p, &[30, 31, 33]),
        ];
        let caps = vec![21, 21, 20, 35, 22];
        let got = |cached: Option<&[usize]>| -> Vec<(Vec<usize>, usize)> {
            let g = groups(&inputs, &caps, cached);
            g.into_iter().map(|g| (g.members, g.len)).collect()
        };
        let expected = [(vec![0, 4], 21), (vec![2, 3], 10), (vec![1], 21)];
        assert_eq!(got(Some(&[])), expected);
        // Item 4 has 22 tokens cached (more than the 21 of the group with item 0); item 2 has 15,
        // more than the 10 it shares with item 3.
        let cached = [0, 0, 15, 0, 22];
        let expected = [
            (vec![0], 21),
            (vec![4], 22),
            (vec![2], 20),
            (vec![3], 35),
            (vec![1], 21),
        ];
        assert_eq!(got(Some(&cached)), expected);
        // Without a cache, item 2 joins items 0 and 4 (the group loses 1 token for each, and
        // it gains 20), and item 3 does not (20 lost against 10 gained).
        let none = [(vec![0, 2, 4], 20), (vec![3], 35), (vec![1], 21)];
        assert_eq!(got(None), none);
    }

    /// Each distinct prefix counts once: leave-one-out's prompts share the part before their
    /// removed token with the whole one, a repeat adds nothing, and a prefix of another input
    /// adds nothing either.
    #[test]
    fn distinct_prefixes_are_counted_once() {
        let full: Vec<u32> = (1..=10).collect();
        let without = |k: u32| full.iter().copied().filter(|&x| x != k).collect::<Vec<_>>();
        let inputs = vec![
            without(3),
            full.clone(),
            without(9),
            without(3),
            full[..4].to_vec(),
        ];
        assert_eq!(distinct_prefix_tokens(inputs), 10 + 7 + 1);
        assert_eq!(distinct_prefix_tokens(vec![vec![5, 6], vec![7]]), 3);
        assert_eq!(distinct_prefix_tokens(Vec::new()), 0);
    }

    /// The first item leads, then those sharing the longest prefix with it.
    #[test]
    fn reuse_order_follows_the_first_item() {
        let it = |prompt: Vec<u32>| ScoreItem {
            prompt,
            target: vec![9, 9],
        };
        let full: Vec<u32> = (1..=10).collect();
        let without = |k: u32| it(full.iter().copied().filter(|&x| x != k).collect());
        let items = vec![it(full.clone()), without(2), without(9), without(5), it(vec![4])];
        assert_eq!(order_for_reuse(&items), vec![0, 2, 3, 1, 4]);
        assert!(order_for_reuse(&[]).is_empty());
    }

    fn kv(tokens: usize) -> KvCache {
        let mut c = KvCache::new(1);
        let t = candle_core::Tensor::zeros(
            (1, 1, tokens, 2),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap();
        c.append(0, t.clone(), t).unwrap();
        c
    }

    /// The longest shared prefix is found and cut to its length; entries that a new one
    /// extends are replaced; the bound evicts the least recently used.
    #[test]
    fn cache_finds_the_longest_prefix_and_stays_bounded() {
        let per_token = 2 * 2 * 4;
        let mut c = PrefixCache::new(60 * per_token);
        let a: Vec<u32> = (0..20).collect();
        c.insert(a.clone(), kv(20));
        c.insert(a[..12].to_vec(), kv(12));
        assert_eq!(c.len(), 1, "a prefix of an entry adds nothing");
        let b: Vec<u32> = (0..30).collect();
        c.insert(b.clone(), kv(30));
        assert_eq!(
            (c.len(), c.bytes()),
            (1, 30 * per_token),
            "the longer entry replaces"
        );
        let (got, n) = c.lookup(&seq(&b[..15], &[7, 7])).unwrap().unwrap();
        assert_eq!((n, got.len()), (15, 15));
        assert!(c.lookup(&[0, 1, 2, 9]).unwrap().is_none(), "too short to use");
        let d: Vec<u32> = (100..125).collect();
        c.insert(d.clone(), kv(25));
        assert_eq!(c.len(), 2);
        c.lookup(&b).unwrap();
        let e: Vec<u32> = (200..220).collect();
        c.insert(e, kv(20));
        assert!(c.lookup(&d).unwrap().is_none(), "the least recently used went");
        assert!(c.lookup(&b).unwrap().is_some());
        assert!(c.bytes() <= 60 * per_token);
    }
}
