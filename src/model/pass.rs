//! A batch's scoring passes. Without prefix reuse, one pass over the batch, right-padded. With
//! it, the items are grouped by the prefixes they share ([`prefix::groups`]), each group's
//! prefix comes from the prefix cache or is computed, and then every group's suffixes run in
//! **one** pass ([`Architecture::forward_parts`]): the projections and MLPs see all the rows of
//! the batch at once, and each group's attention reads its own prefix. Two passes a batch,
//! whatever the number of groups: one extends the groups' prefixes, one scores.
//!
//! A group whose best prefix would be the keys and values that another group of the same batch
//! leaves in the cache waits for a later round, so the batch reuses what it would reuse one
//! group at a time.
//!
//! [`Architecture::forward_parts`]: crate::model::Architecture::forward_parts

use candle_core::{DType, Tensor};

use crate::model::arch::{kv_cache::KvCache, Part};
use crate::model::prefix::{self, BatchScores, Group};
use crate::model::{kernels, Model, ScoreItem};

/// One part of a scoring pass: items of the batch (indices, in batch order) after the first
/// `skip` input tokens that they share, whose keys and values `cache` holds (none: no reuse).
struct Work {
    members: Vec<usize>,
    skip: usize,
    cache: Option<KvCache>,
}

impl Model {
    /// The forward passes of one batch (see the module doc).
    pub(super) fn forward_batch(&self, batch: &[ScoreItem]) -> candle_core::Result<BatchScores> {
        if batch.is_empty() {
            return Ok(BatchScores::default());
        }
        let mut out = BatchScores::plain(vec![Vec::new(); batch.len()]);
        if !self.prefix.is_on() {
            let all = Work {
                members: (0..batch.len()).collect(),
                skip: 0,
                cache: None,
            };
            self.score_parts(batch, &[], vec![all], &mut out)?;
            return Ok(out);
        }
        let inputs: Vec<Vec<u32>> = batch.iter().map(prefix::input).collect();
        let caps: Vec<usize> = batch.iter().map(|it| it.prompt.len() - 1).collect();
        let cached: Option<Vec<usize>> = (self.prefix.capacity() > 0).then(|| {
            let cache = self.prefix.lock();
            inputs.iter().map(|t| cache.shared(t)).collect()
        });
        let mut pending = prefix::groups(&inputs, &caps, cached.as_deref());
        while !pending.is_empty() {
            let (works, later) = self.round(pending, &inputs, &mut out)?;
            self.score_parts(batch, &inputs, works, &mut out)?;
            pending = later;
        }
        Ok(out)
    }

    /// The groups of `pending` that can run now, as parts of one pass with their prefixes
    /// computed, and those that wait for the keys and values this pass leaves in the cache.
    /// Groups not worth a prefix of their own share one part without reuse.
    fn round(
        &self,
        pending: Vec<Group>,
        inputs: &[Vec<u32>],
        out: &mut BatchScores,
    ) -> candle_core::Result<(Vec<Work>, Vec<Group>)> {
        let (mut works, mut later, mut alone) = (Vec::new(), Vec::new(), Vec::new());
        let mut left: Vec<&[u32]> = Vec::new();
        let mut extend = Vec::new();
        for g in pending {
            let first = &inputs[g.members[0]][..g.len];
            if self.waits(first, &left) {
                later.push(g);
                continue;
            }
            let Some((cache, from, len)) = self.prefix_of(&g, first, out)? else {
                alone.extend(g.members);
                continue;
            };
            for (k, &i) in g.members.iter().enumerate() {
                out.reused[i] = if k == 0 { from } else { len };
            }
            if let Some(r) = longest(inputs, &g.members) {
                left.push(&inputs[r]);
            }
            extend.push(first[from..len].to_vec());
            works.push(Work {
                members: g.members,
                skip: len,
                cache: Some(cache),
            });
        }
        self.extend_prefixes(&mut works, &extend)?;
        if !alone.is_empty() {
            alone.sort_unstable();
            works.push(Work {
                members: alone,
                skip: 0,
                cache: Some(self.arch.new_cache()),
            });
        }
        Ok((works, later))
    }

    /// Whether a prefix of `first` is better taken from the keys and values that this round's
    /// passes leave in the cache (the inputs `left`) than from what the cache holds now.
    fn waits(&self, first: &[u32], left: &[&[u32]]) -> bool {
        let pending = left.iter().map(|t| prefix::common(t, first)).max().unwrap_or(0);
        pending >= prefix::MIN_PREFIX
            && self.prefix.capacity() > 0
            && pending > self.prefix.lock().shared(first)
    }

    /// Where the prefix of group `g` (whose first member starts with `first`) comes from: the
    /// cached keys and values of its first `from` tokens (none: 0), to be extended to the
    /// `len` tokens its pass runs after; `None` when the group is not worth a pass of its own.
    /// Counts the cache lookup in `out`.
    fn prefix_of(
        &self,
        g: &Group,
        first: &[u32],
        out: &mut BatchScores,
    ) -> candle_core::Result<Option<(KvCache, usize, usize)>> {
        let hit = match self.prefix.capacity() > 0 {
            true => {
                out.lookups += 1;
                self.prefix.lock().lookup(first)?
            }
            false => None,
        };
        let (cache, from) = hit.unwrap_or_else(|| (self.arch.new_cache(), 0));
        let len = match g.members.len() > 1 && g.len >= prefix::MIN_PREFIX {
            true => g.len,
            false if from > 0 => from,
            false => return Ok(None),
        };
        out.hits += usize::from(from > 0);
        Ok(Some((cache, from, len)))
    }

    /// Extends each work's cache by its tokens of `extend`, all in one pass.
    fn extend_prefixes(&self, works: &mut [Work], extend: &[Vec<u32>]) -> candle_core::Result<()> {
        let mut ids = Vec::new();
        let mut parts = Vec::new();
        for (w, tokens) in works.iter_mut().zip(extend) {
            if tokens.is_empty() {
                continue;
            }
            ids.extend_from_slice(tokens);
            parts.push(Part {
                b: 1,
                t: tokens.len(),
                cache: w.cache.as_mut(),
                rows: vec![tokens.len() as u32 - 1],
            });
        }
        if !parts.is_empty() {
            let embeds = self.embed_flat(ids)?;
            self.arch.forward_parts(&embeds, &mut parts)?;
        }
        Ok(())
    }

    /// The embeddings `[n, hidden]` of `ids`.
    fn embed_flat(&self, ids: Vec<u32>) -> candle_core::Result<Tensor> {
        let n = ids.len();
        let e = self.arch.embed(&Tensor::from_vec(ids, (1, n), &self.device)?)?;
        let d = e.dim(2)?;
        e.reshape((n, d))
    }

    /// One pass over the parts `works` of `batch`, each right-padded after its shared prefix;
    /// the scores go to `out`. The LM head runs only at the positions that predict a target
    /// token, which all lie after the prefix. With a prefix cache, each part's longest member's
    /// keys and values are kept in it (`inputs`: the items' input tokens; empty without reuse).
    fn score_parts(
        &self,
        batch: &[ScoreItem],
        inputs: &[Vec<u32>],
        works: Vec<Work>,
        out: &mut BatchScores,
    ) -> candle_core::Result<()> {
        let keeping = self.prefix.capacity() > 0 && !inputs.is_empty();
        let (mut ids, mut targets, mut shapes) = (Vec::new(), Vec::new(), Vec::new());
        let mut views = Vec::with_capacity(works.len());
        for w in &works {
            let items: Vec<&ScoreItem> = w.members.iter().map(|&i| &batch[i]).collect();
            let len = items.iter().map(|it| it.input_len()).max().unwrap_or(0) - w.skip;
            let rows = lay_out(&items, w.skip, len, &mut ids, &mut targets);
            shapes.push((items.len(), len, rows));
            let longest = longest(inputs, &w.members).filter(|_| keeping);
            let keep = longest.and_then(|i| {
                let r = w.members.iter().position(|&m| m == i)?;
                Some((r, inputs[i].len() - w.skip))
            });
            views.push(w.cache.as_ref().map(|c| (c.shared(keep), longest)));
        }
        let mut parts: Vec<Part> = shapes
            .into_iter()
            .zip(views.iter_mut())
            .map(|((b, t, rows), view)| Part {
                b,
                t,
                cache: view.as_mut().map(|(v, _)| v),
                rows,
            })
            .collect();
        let picked = self.arch.forward_parts(&self.embed_flat(ids)?, &mut parts)?;
        drop(parts);
        let logits = self.arch.logits(&picked)?.to_dtype(DType::F32)?;
        let flat = kernels::ops::target_logprobs(&logits, &targets)?;
        let mut at = 0;
        for &i in works.iter().flat_map(|w| &w.members) {
            let n = batch[i].target.len();
            out.scores[i] = flat[at..at + n].to_vec();
            at += n;
        }
        for (view, longest) in views.into_iter().flatten() {
            if let (Some(kv), Some(i)) = (view.into_kept()?, longest) {
                self.prefix.lock().insert(inputs[i].clone(), kv);
            }
        }
        Ok(())
    }
}

/// The member of `members` with the longest input (the first of equals), whose keys and values
/// a pass keeps; `None` without inputs.
fn longest(inputs: &[Vec<u32>], members: &[usize]) -> Option<usize> {
    let len = |i: usize| inputs.get(i).map_or(0, Vec::len);
    members
        .iter()
        .copied()
        .filter(|&i| i < inputs.len())
        .max_by_key(|&i| (len(i), usize::MAX - i))
}

/// Appends `items`' input tokens after the first `skip`, each right-padded to `len`, to `ids`
/// and their target tokens to `targets`; returns the rows (within this part) that predict them.
fn lay_out(
    items: &[&ScoreItem],
    skip: usize,
    len: usize,
    ids: &mut Vec<u32>,
    targets: &mut Vec<u32>,
) -> Vec<u32> {
    let mut rows = Vec::new();
    for (b, item) in items.iter().enumerate() {
        let input = item.prompt.iter().chain(&item.target[..item.target.len() - 1]);
        let start = ids.len();
        ids.extend(input.skip(skip));
        ids.resize(start + len, 0);
        for (k, &t) in item.target.iter().enumerate() {
            rows.push((b * len + item.prompt.len() - 1 - skip + k) as u32);
            targets.push(t);
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use crate::model::{LoadOptions, Model, ScoreItem};

    fn item(prompt: Vec<u32>) -> ScoreItem {
        ScoreItem {
            prompt,
            target: vec![5, 6],
        }
    }

    /// Groups {b, c} and {a} (too short a prefix with them to join): `a` sorts after them,
    /// finds nothing in the cache, and waits a round for the keys and values that the first
    /// pass leaves there, as it would have found them with the groups scored one at a time.
    /// The scores are those without reuse.
    #[test]
    fn a_group_waits_for_the_prefix_another_group_leaves() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/llama");
        let m = Model::load(dir, &LoadOptions::default()).unwrap();
        let shared: Vec<u32> = (10..30).collect();
        let with = |tail: std::ops::Range<u32>| [shared.clone(), tail.collect()].concat();
        let batch = [item(with(40..72)), item(with(40..70)), item(with(90..130))];
        let reused = m.score_reusing(&batch).unwrap();
        assert_eq!(
            reused.reused,
            vec![0, 49, 20],
            "b computes the prefix; c and a reuse it"
        );
        m.set_prefix_reuse(false);
        let plain = m.score_reusing(&batch).unwrap();
        for (x, y) in reused.scores.iter().flatten().zip(plain.scores.iter().flatten()) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
    }

    /// Without a prefix cache no group can wait for another's prefix, so the batch shares what
    /// one group can: `c` joins `a` and `b` at the 20 tokens they all share, though `a` and `b`
    /// share 30 (a group of its own would leave `c` with nothing).
    #[test]
    fn without_a_cache_one_group_shares_what_all_share() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/llama");
        let m = Model::load(dir, &LoadOptions::default()).unwrap();
        m.set_prefix_cache_bytes(0);
        let shared: Vec<u32> = (10..30).collect();
        let with = |tail: std::ops::Range<u32>| [shared.clone(), tail.collect()].concat();
        let b = [with(40..50), (70..80).collect()].concat();
        let batch = [item(with(40..60)), item(b), item(with(90..110))];
        let reused = m.score_reusing(&batch).unwrap();
        assert_eq!(reused.reused, vec![0, 20, 20]);
        m.set_prefix_reuse(false);
        let plain = m.score_reusing(&batch).unwrap();
        for (x, y) in reused.scores.iter().flatten().zip(plain.scores.iter().flatten()) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
    }
}
