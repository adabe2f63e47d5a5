//! The bounded queue of pending work and how one batch is picked from it.
//!
//! Work is kept in arrival order. A batch always contains the oldest item (nobody starves) and
//! is filled with the items whose lengths are closest to it, taken from a window at the front of
//! the queue, as long as the padded size (count x longest) stays within the token budget.

use std::collections::VecDeque;

/// What the queue needs to know about a piece of work.
pub trait Queued {
    /// Padded length of a scoring item; `None` for work that runs alone (generation).
    fn padded_len(&self) -> Option<usize>;
    /// Work of a cancelled request is dropped instead of run.
    fn is_cancelled(&self) -> bool;
    /// Equal keys mark (probably) identical sequences; they cost the budget once.
    fn key(&self) -> Option<u64> {
        None
    }
}

pub struct Queue<W> {
    items: VecDeque<W>,
    capacity: usize,
}

impl<W: Queued> Queue<W> {
    pub fn new(capacity: usize) -> Self {
        Queue {
            items: VecDeque::new(),
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Adds all of `work` or none of it: `Err(work)` when it does not fit.
    pub fn push_all(&mut self, work: Vec<W>) -> Result<(), Vec<W>> {
        if self.items.len() + work.len() > self.capacity {
            return Err(work);
        }
        self.items.extend(work);
        Ok(())
    }

    /// Removes every item `drop` selects; returns how many.
    pub fn remove_where(&mut self, drop: impl Fn(&W) -> bool) -> usize {
        let before = self.items.len();
        self.items.retain(|w| !drop(w));
        before - self.items.len()
    }

    /// Empties the queue.
    pub fn drain(&mut self) -> Vec<W> {
        self.items.drain(..).collect()
    }

    /// Takes the next batch (empty when the queue is). Cancelled work is discarded first and
    /// counted in the second value. Scoring items come back sorted by length.
    pub fn take_batch(&mut self, budget: usize, window: usize) -> (Vec<W>, usize) {
        let skipped = self.remove_where(|w| w.is_cancelled());
        let Some(head) = self.items.front() else {
            return (Vec::new(), skipped);
        };
        let Some(head_len) = head.padded_len() else {
            return (self.items.pop_front().into_iter().collect(), skipped);
        };
        // Candidates: scoring items in the window, nearest in length to the head first.
        let mut candidates: Vec<(usize, usize)> = self
            .items
            .iter()
            .take(window.max(1))
            .enumerate()
            .skip(1)
            .filter_map(|(i, w)| w.padded_len().map(|l| (i, l)))
            .collect();
        candidates.sort_by_key(|&(i, l)| (l.abs_diff(head_len), i));
        let mut chosen = vec![0];
        let mut keys: std::collections::HashSet<u64> = head.key().into_iter().collect();
        let mut distinct = 1;
        let mut longest = head_len;
        for (i, l) in candidates {
            let key = self.items[i].key();
            if key.is_some_and(|k| keys.contains(&k)) {
                chosen.push(i);
                continue;
            }
            let longer = longest.max(l);
            if longer * (distinct + 1) <= budget {
                chosen.push(i);
                keys.extend(key);
                distinct += 1;
                longest = longer;
            }
        }
        chosen.sort_unstable();
        let mut batch = Vec::with_capacity(chosen.len());
        let mut rest = VecDeque::with_capacity(self.items.len() - chosen.len());
        let mut next = chosen.iter().peekable();
        for (i, w) in self.items.drain(..).enumerate() {
            if next.peek() == Some(&&i) {
                next.next();
                batch.push(w);
            } else {
                rest.push_back(w);
            }
        }
        self.items = rest;
        batch.sort_by_key(|w| w.padded_len().unwrap_or(0));
        (batch, skipped)
    }
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
    }

    fn w(id: usize, len: usize) -> W {
        W {
            id,
            len: Some(len),
            cancelled: false,
            key: None,
        }
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
        q.push_all(vec![
            W {
                id: 0,
                len: None,
                cancelled: false,
                key: None,
            },
            c,
            w(2, 10),
        ])
        .unwrap();
        let (b, skipped) = q.take_batch(1000, 64);
        assert_eq!((ids(&b), skipped), (vec![0], 1));
        let (b, _) = q.take_batch(1000, 64);
        assert_eq!(ids(&b), vec![2]);
    }
}
