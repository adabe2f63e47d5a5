//! The bounded queue of pending work and how one batch is picked from it.
//!
//! Work is kept per owner (one request's call), in arrival order, and owners take turns:
//! each batch is led by the next owner in the rotation, whose oldest item it always contains
//! (nobody starves), and is then filled round-robin, one item per owner per turn, with each
//! owner's items whose lengths are closest to the leader's, taken from a window at the front
//! of its queue (those sharing the longest token prefix with the leader's first, then the
//! nearest in length), as long as the padded size (count x longest) stays within the token
//! budget.
//! So a request of a few sequences shares the next batch with a job of thousands instead of
//! waiting behind all of them.

use std::collections::{HashSet, VecDeque};

/// What the queue needs to know about a piece of work.
pub(crate) trait Queued {
    /// Padded length of a scoring item; `None` for work that runs alone (generation).
    fn padded_len(&self) -> Option<usize>;
    /// Work of a cancelled request is dropped instead of run.
    fn is_cancelled(&self) -> bool;
    /// Equal keys mark (probably) identical sequences; they cost the budget once.
    fn key(&self) -> Option<u64> {
        None
    }
    /// Who the work is for; owners share batches fairly.
    fn owner(&self) -> u64 {
        0
    }
    /// The tokens a scoring item starts with: items that share a longer prefix with the
    /// batch's first are preferred, so that the prefix is computed once for them.
    fn tokens(&self) -> &[u32] {
        &[]
    }
}

/// One owner's pending work, oldest first.
struct Flow<W> {
    owner: u64,
    items: VecDeque<W>,
}

pub(crate) struct Queue<W> {
    /// In turn order: the front leads the next batch.
    flows: VecDeque<Flow<W>>,
    len: usize,
    capacity: usize,
}

impl<W: Queued> Queue<W> {
    pub(crate) fn new(capacity: usize) -> Self {
        Queue {
            flows: VecDeque::new(),
            len: 0,
            capacity,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Adds all of `work` or none of it: `Err(work)` when it does not fit. A new owner takes
    /// its turn after those already waiting.
    pub(crate) fn push_all(&mut self, work: Vec<W>) -> Result<(), Vec<W>> {
        if self.len + work.len() > self.capacity {
            return Err(work);
        }
        self.len += work.len();
        for w in work {
            let owner = w.owner();
            match self.flows.iter_mut().find(|f| f.owner == owner) {
                Some(f) => f.items.push_back(w),
                None => self.flows.push_back(Flow {
                    owner,
                    items: VecDeque::from([w]),
                }),
            }
        }
        Ok(())
    }

    /// Removes every item `drop` selects; returns how many.
    pub(crate) fn remove_where(&mut self, drop: impl Fn(&W) -> bool) -> usize {
        for f in &mut self.flows {
            f.items.retain(|w| !drop(w));
        }
        self.flows.retain(|f| !f.items.is_empty());
        let before = self.len;
        self.len = self.flows.iter().map(|f| f.items.len()).sum();
        before - self.len
    }

    /// Empties the queue.
    pub(crate) fn drain(&mut self) -> Vec<W> {
        self.len = 0;
        self.flows.drain(..).flat_map(|f| f.items).collect()
    }

    /// Takes the next batch (empty when the queue is). Cancelled work is discarded first and
    /// counted in the second value. Scoring items come back sorted by length.
    pub(crate) fn take_batch(&mut self, budget: usize, window: usize) -> (Vec<W>, usize) {
        let skipped = self.remove_where(|w| w.is_cancelled());
        let Some(lead) = self.flows.front_mut() else {
            return (Vec::new(), skipped);
        };
        let Some(head_len) = lead.items.front().and_then(Queued::padded_len) else {
            let batch: Vec<W> = lead.items.pop_front().into_iter().collect();
            self.end_turn(batch.len());
            return (batch, skipped);
        };
        let chosen = self.choose(head_len, budget, window);
        let mut batch = Vec::with_capacity(chosen.iter().map(Vec::len).sum());
        for (flow, picked) in self.flows.iter_mut().zip(chosen) {
            let mut next = picked.iter().peekable();
            let mut rest = VecDeque::with_capacity(flow.items.len() - picked.len());
            for (i, w) in flow.items.drain(..).enumerate() {
                if next.peek() == Some(&&i) {
                    next.next();
                    batch.push(w);
                } else {
                    rest.push_back(w);
                }
            }
            flow.items = rest;
        }
        self.end_turn(batch.len());
        batch.sort_by_key(|w| w.padded_len().unwrap_or(0));
        (batch, skipped)
    }

    /// [`Queue::take_batch`] led by the first owner in turn whose oldest item `may_lead`
    /// accepts (empty when none does); that owner's turn is then over, the others keep theirs.
    pub(crate) fn take_batch_where(
        &mut self,
        budget: usize,
        window: usize,
        may_lead: impl Fn(&W) -> bool,
    ) -> (Vec<W>, usize) {
        let skipped = self.remove_where(|w| w.is_cancelled());
        let lead = self
            .flows
            .iter()
            .position(|f| f.items.front().is_some_and(&may_lead));
        let Some(flow) = lead.and_then(|k| self.flows.remove(k)) else {
            return (Vec::new(), skipped);
        };
        self.flows.push_front(flow);
        let (batch, more) = self.take_batch(budget, window);
        (batch, skipped + more)
    }

    /// Indices (sorted) of the items of each flow that make the next batch, led by the front
    /// flow's oldest item of padded length `head_len`.
    fn choose(&self, head_len: usize, budget: usize, window: usize) -> Vec<Vec<usize>> {
        // Per flow: its scoring items in its share of the window, those sharing the longest
        // prefix with the head first, then the nearest in length.
        let window = (window / self.flows.len()).max(64).min(window).max(1);
        let head = self.flows[0].items[0].tokens();
        let mut candidates: Vec<VecDeque<(usize, usize)>> = self
            .flows
            .iter()
            .enumerate()
            .map(|(k, f)| {
                let mut c: Vec<(usize, usize)> = f
                    .items
                    .iter()
                    .take(window)
                    .enumerate()
                    .skip(usize::from(k == 0))
                    .filter_map(|(i, w)| w.padded_len().map(|l| (i, l)))
                    .collect();
                c.sort_by_cached_key(|&(i, l)| {
                    let shared = common_prefix(head, f.items[i].tokens());
                    (std::cmp::Reverse(shared), l.abs_diff(head_len), i)
                });
                c.into()
            })
            .collect();
        let mut chosen: Vec<Vec<usize>> = vec![Vec::new(); self.flows.len()];
        chosen[0].push(0);
        let mut keys: HashSet<u64> = self.flows[0].items[0].key().into_iter().collect();
        let mut distinct = 1;
        let mut longest = head_len;
        // Turns: each flow adds at most one new sequence per round (the leader's head was its
        // first); copies of a sequence already in the batch ride along free.
        let mut open = true;
        let mut first_round = true;
        while open {
            open = false;
            for (k, cands) in candidates.iter_mut().enumerate() {
                if first_round && k == 0 {
                    open = true;
                    continue;
                }
                while let Some((i, l)) = cands.pop_front() {
                    let key = self.flows[k].items[i].key();
                    if key.is_some_and(|key| keys.contains(&key)) {
                        chosen[k].push(i);
                        continue;
                    }
                    let longer = longest.max(l);
                    if longer * (distinct + 1) <= budget {
                        chosen[k].push(i);
                        keys.extend(key);
                        distinct += 1;
                        longest = longer;
                        open = true;
                        break;
                    }
                }
            }
            first_round = false;
        }
        for c in &mut chosen {
            c.sort_unstable();
        }
        chosen
    }

    /// After a batch of `taken` items: drops emptied flows and passes the lead to the next.
    fn end_turn(&mut self, taken: usize) {
        self.len -= taken;
        if let Some(lead) = self.flows.pop_front() {
            if !lead.items.is_empty() {
                self.flows.push_back(lead);
            }
        }
        self.flows.retain(|f| !f.items.is_empty());
    }
}

/// Length of the longest common prefix of `a` and `b`.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct W {
        id: usize,
        len: Option<usize>,
        cancelled: bool,
        key: Option<u64>,
        owner: u64,
    }

    impl Queued for W {
        fn padded_len(&self) -> Option<usize> {
            self.len
        }
        fn is_cancelled(&self) -> bool {
            self.cancelled
        }
        fn key(&self) -> Option<u64> {
            self.key
        }
        fn owner(&self) -> u64 {
            self.owner
        }
    }

    fn w(id: usize, len: usize) -> W {
        W {
            id,
            len: Some(len),
            cancelled: false,
            key: None,
            owner: 0,
        }
    }

    fn owned(owner: u64, ids: std::ops::Range<usize>, len: usize) -> Vec<W> {
        ids.map(|id| W { owner, ..w(id, len) }).collect()
    }

    fn ids(ws: &[W]) -> Vec<usize> {
        ws.iter().map(|w| w.id).collect()
    }

    #[test]
    fn push_is_all_or_nothing() {
        let mut q = Queue::new(3);
        assert!(q.push_all(vec![w(0, 1), w(1, 1)]).is_ok());
        let back = q.push_all(vec![w(2, 1), w(3, 1)]).unwrap_err();
        assert_eq!(ids(&back), vec![2, 3]);
        assert_eq!(q.len(), 2);
        assert!(q.push_all(vec![w(2, 1)]).is_ok());
        assert_eq!(q.len(), 3);
    }

    #[test]
    fn batch_keeps_head_and_groups_similar_lengths() {
        let mut q = Queue::new(100);
        // head 10, then a long one, then lengths near 10.
        q.push_all(vec![w(0, 10), w(1, 50), w(2, 11), w(3, 9), w(4, 30), w(5, 10)])
            .unwrap();
        let (b, skipped) = q.take_batch(44, 64);
        assert_eq!(skipped, 0);
        // 4 items x longest 11 = 44 fits; the 30 and 50 do not.
        assert_eq!(ids(&b), vec![3, 0, 5, 2]);
        assert_eq!(q.len(), 2);
        let (b, _) = q.take_batch(44, 64);
        assert_eq!(ids(&b), vec![1], "the head is always served, even over budget");
        let (b, _) = q.take_batch(44, 64);
        assert_eq!(ids(&b), vec![4]);
        assert!(q.take_batch(44, 64).0.is_empty());
    }

    #[test]
    fn padded_size_never_exceeds_budget_except_single_items() {
        let mut q = Queue::new(10_000);
        let lens: Vec<usize> = (0..500).map(|i| 5 + (i * 37 % 60)).collect();
        q.push_all(lens.iter().enumerate().map(|(i, &l)| w(i, l)).collect())
            .unwrap();
        let mut seen = Vec::new();
        loop {
            let (b, _) = q.take_batch(256, 128);
            if b.is_empty() {
                break;
            }
            let longest = b.iter().filter_map(|w| w.len).max().unwrap();
            assert!(b.len() == 1 || longest * b.len() <= 256);
            seen.extend(ids(&b));
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..500).collect::<Vec<_>>());
    }

    #[test]
    fn identical_items_ride_along_without_using_the_budget() {
        let mut q = Queue::new(100);
        let keyed = |id, len, key| W {
            key: Some(key),
            ..w(id, len)
        };
        q.push_all(vec![
            keyed(0, 10, 7),
            keyed(1, 10, 8),
            keyed(2, 10, 7),
            keyed(3, 10, 9),
            keyed(4, 10, 7),
        ])
        .unwrap();
        // Budget for two distinct sequences: 0 and 1, plus the copies of 0.
        let (b, _) = q.take_batch(20, 64);
        assert_eq!(ids(&b), vec![0, 1, 2, 4]);
        assert_eq!(ids(&q.take_batch(20, 64).0), vec![3]);
    }

    #[test]
    fn window_limits_how_far_the_batcher_looks() {
        let mut q = Queue::new(100);
        q.push_all(vec![w(0, 10), w(1, 50), w(2, 50), w(3, 10)]).unwrap();
        let (b, _) = q.take_batch(1000, 2);
        assert_eq!(ids(&b), vec![0, 1]);
    }

    #[test]
    fn generation_runs_alone_and_cancelled_work_is_skipped() {
        let mut q = Queue::new(100);
        let mut c = w(1, 10);
        c.cancelled = true;
        q.push_all(vec![W { len: None, ..w(0, 0) }, c, w(2, 10)]).unwrap();
        let (b, skipped) = q.take_batch(1000, 64);
        assert_eq!((ids(&b), skipped), (vec![0], 1));
        let (b, _) = q.take_batch(1000, 64);
        assert_eq!(ids(&b), vec![2]);
    }

    #[test]
    fn a_small_request_shares_the_next_batch_with_a_big_one() {
        let mut q = Queue::new(10_000);
        q.push_all(owned(1, 0..1000, 10)).unwrap();
        q.push_all(owned(2, 1000..1003, 10)).unwrap();
        // Room for 8 sequences: the big request leads, then turns alternate.
        let (b, _) = q.take_batch(80, 4096);
        let mut got = ids(&b);
        got.sort_unstable();
        assert_eq!(got, vec![0, 1, 2, 3, 4, 1000, 1001, 1002]);
        assert_eq!(q.len(), 995);
    }

    #[test]
    fn owners_take_turns_leading_and_share_batches_evenly() {
        let mut q = Queue::new(100);
        q.push_all(owned(1, 0..20, 10)).unwrap();
        q.push_all(owned(2, 20..40, 10)).unwrap();
        q.push_all(owned(3, 40..60, 10)).unwrap();
        let owners = |b: &[W]| {
            let mut o: Vec<u64> = b.iter().map(|w| w.owner).collect();
            o.sort_unstable();
            o
        };
        let (b, _) = q.take_batch(60, 64);
        assert_eq!(owners(&b), vec![1, 1, 2, 2, 3, 3]);
        // Owner 2 leads the next batch: its oldest remaining item is in it.
        let (b, _) = q.take_batch(10, 64);
        assert_eq!(ids(&b), vec![22]);
        let (b, _) = q.take_batch(10, 64);
        assert_eq!(ids(&b), vec![42]);
        let (b, _) = q.take_batch(10, 64);
        assert_eq!(ids(&b), vec![2]);
    }

    #[test]
    fn generation_waits_one_turn_not_the_whole_queue() {
        let mut q = Queue::new(1000);
        q.push_all(owned(1, 0..500, 10)).unwrap();
        q.push_all(vec![W {
            len: None,
            owner: 2,
            ..w(999, 0)
        }])
        .unwrap();
        let (b, _) = q.take_batch(40, 64);
        assert_eq!(b.len(), 4);
        assert_eq!(ids(&q.take_batch(40, 64).0), vec![999]);
        assert_eq!(q.len(), 496);
    }
}
