//! The engine: one shared model, a bounded queue holding the sequences of every in-flight
//! request, a batcher that packs them into forward passes by padded-token budget, and
//! dedicated worker threads (never the async runtime) that run those passes.
//!
//! Each request talks to the engine through a [`Handle`] (a [`Scorer`]): its sequences are
//! queued all at once or not at all (`Error::Busy`), results and progress come back as batches
//! finish, and cancelling the request's [`CancelToken`] drops its queued work.

pub(crate) mod pace;
pub(crate) mod queue;
pub(crate) mod served;
pub(crate) mod stats;

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::model::{BatchScores, GradientJob, Model, ModelInfo, ScoreItem, Tokenizer};
use crate::scorer::{no_gradients, Scorer, TokenWork};
use pace::Pace;
use queue::{Queue, Queued};
pub use stats::{Histogram, Stats};

/// How often a waiting request looks at its cancel flag.
const POLL: Duration = Duration::from_millis(20);

/// What the engine runs: a batch scorer and a generator. `Model` is one; tests use fakes.
pub trait Backend: Send + Sync + 'static {
    /// Log-probs of every target token of every item of one batch (one forward pass).
    fn score_batch(&self, batch: &[ScoreItem]) -> Result<Vec<Vec<f32>>>;
    /// [`Backend::score_batch`] with what its passes reused from shared or cached prefixes.
    fn score_reusing(&self, batch: &[ScoreItem]) -> Result<BatchScores> {
        Ok(BatchScores::plain(self.score_batch(batch)?))
    }
    /// Greedy continuation.
    fn generate(&self, prompt: &[u32], max_new_tokens: usize) -> Result<Vec<u32>>;
    /// Rejects an item before it is queued, so bad input never fails a batch shared with
    /// other requests.
    fn check(&self, _item: &ScoreItem, _field: &str) -> Result<()> {
        Ok(())
    }
    /// The gradient methods' numbers ([`Scorer::gradients`]); `progress` fails to stop.
    fn gradients(
        &self,
        _job: &GradientJob,
        _progress: &dyn Fn(usize, usize) -> Result<()>,
    ) -> Result<Vec<Vec<f64>>> {
        Err(no_gradients())
    }
}

impl Backend for Model {
    fn score_batch(&self, batch: &[ScoreItem]) -> Result<Vec<Vec<f32>>> {
        // Every item passed `check` before it was queued.
        self.score_checked(batch)
    }
    fn score_reusing(&self, batch: &[ScoreItem]) -> Result<BatchScores> {
        Model::score_reusing(self, batch)
    }
    fn generate(&self, prompt: &[u32], max_new_tokens: usize) -> Result<Vec<u32>> {
        Model::generate(self, prompt, max_new_tokens)
    }
    fn check(&self, item: &ScoreItem, field: &str) -> Result<()> {
        Model::check(self, item, field)
    }
    fn gradients(
        &self,
        job: &GradientJob,
        progress: &dyn Fn(usize, usize) -> Result<()>,
    ) -> Result<Vec<Vec<f64>>> {
        Model::gradients(self, job, progress)
    }
}

/// How the engine runs: its workers, queue size and batch sizes.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Worker threads, each running one forward pass at a time.
    pub workers: usize,
    /// Sequences (and generations) the queue holds at most.
    pub queue_capacity: usize,
    /// Padded tokens (sequences x longest) of one forward pass.
    pub token_budget: usize,
    /// How many queued items the batcher looks at to fill a batch.
    pub window: usize,
    /// Seconds one forward pass should take at most (see [`pace`]): bounds how long work
    /// that arrives meanwhile waits. `None`: batches fill `token_budget`.
    pub batch_seconds: Option<f64>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workers: 1,
            queue_capacity: 65_536,
            token_budget: crate::model::device::DEFAULT_TOKEN_BUDGET,
            window: 4096,
            batch_seconds: None,
        }
    }
}

impl EngineConfig {
    /// The defaults with the workers and batch size suited to `device` (see
    /// [`crate::model::device::tuning`]).
    pub fn for_device(device: &candle_core::Device) -> Self {
        let tuned = crate::model::device::tuning(device);
        EngineConfig {
            workers: tuned.workers,
            token_budget: tuned.token_budget,
            ..EngineConfig::default()
        }
    }
}

/// Shared flag a request, its job, a dropped connection or shutdown sets to stop its work.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token not cancelled yet.
    pub fn new() -> Self {
        Self::default()
    }
    /// Asks every holder to stop; it cannot be undone.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether [`CancelToken::cancel`] has been called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Scores of some items of one ticket, by index, with the input tokens each reused.
type Scored = Vec<(usize, Vec<f32>, usize)>;

/// Results flowing back to a waiting request.
enum Reply {
    Scores(Scored),
    Failed(Error),
}

/// One `score` call of one request.
struct Ticket {
    id: u64,
    cancel: CancelToken,
    tx: Mutex<mpsc::Sender<Reply>>,
}

impl Ticket {
    fn send(&self, r: Reply) {
        if let Ok(tx) = self.tx.lock() {
            let _ = tx.send(r);
        }
    }
}

enum Work {
    Score {
        ticket: Arc<Ticket>,
        index: usize,
        item: ScoreItem,
        key: u64,
    },
    Generate {
        /// A turn of its own in the queue's rotation.
        owner: u64,
        cancel: CancelToken,
        prompt: Vec<u32>,
        max_new_tokens: usize,
        reply: mpsc::Sender<Result<Vec<u32>>>,
    },
    /// One gradient attribution: a whole turn of a worker, like a generation.
    Gradient {
        owner: u64,
        cancel: CancelToken,
        job: GradientJob,
        reply: mpsc::Sender<GradientReply>,
    },
}

/// What a gradient job sends back: progress as chunks finish, then its result.
enum GradientReply {
    Progress(usize, usize),
    Done(Result<Vec<Vec<f64>>>),
}

impl Queued for Work {
    fn padded_len(&self) -> Option<usize> {
        match self {
            Work::Score { item, .. } => Some(item.input_len()),
            Work::Generate { .. } | Work::Gradient { .. } => None,
        }
    }
    fn is_cancelled(&self) -> bool {
        match self {
            Work::Score { ticket, .. } => ticket.cancel.is_cancelled(),
            Work::Generate { cancel, .. } | Work::Gradient { cancel, .. } => cancel.is_cancelled(),
        }
    }
    fn key(&self) -> Option<u64> {
        match self {
            Work::Score { key, .. } => Some(*key),
            Work::Generate { .. } | Work::Gradient { .. } => None,
        }
    }
    fn owner(&self) -> u64 {
        match self {
            Work::Score { ticket, .. } => ticket.id,
            Work::Generate { owner, .. } | Work::Gradient { owner, .. } => *owner,
        }
    }
    fn tokens(&self) -> &[u32] {
        match self {
            Work::Score { item, .. } => &item.prompt,
            Work::Generate { .. } | Work::Gradient { .. } => &[],
        }
    }
}

fn item_key(item: &ScoreItem) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    item.hash(&mut h);
    h.finish()
}

struct State {
    queue: Queue<Work>,
    closed: bool,
    /// Forward passes running right now.
    running: usize,
    pace: Pace,
}

struct Shared<B> {
    backend: Arc<B>,
    config: EngineConfig,
    state: Mutex<State>,
    wake: Condvar,
    stats: Stats,
    next_ticket: AtomicU64,
}

impl<B> Shared<B> {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A worker that panicked mid-batch must not take the whole engine down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The queue, the batcher and the workers around one shared backend.
pub struct Engine<B: Backend> {
    shared: Arc<Shared<B>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl<B: Backend> Engine<B> {
    /// Starts the worker threads over `backend`; fails when a thread cannot start.
    pub fn new(backend: Arc<B>, config: EngineConfig) -> Result<Self> {
        let shared = Arc::new(Shared {
            stats: Stats::new(config.token_budget),
            backend,
            state: Mutex::new(State {
                queue: Queue::new(config.queue_capacity.max(1)),
                closed: false,
                running: 0,
                pace: Pace::new(config.batch_seconds),
            }),
            wake: Condvar::new(),
            next_ticket: AtomicU64::new(0),
            config,
        });
        let mut workers = Vec::new();
        for i in 0..shared.config.workers.max(1) {
            let s = shared.clone();
            let h = std::thread::Builder::new()
                .name(format!("llm-attr-worker-{i}"))
                .spawn(move || worker(&s))
                .map_err(|e| Error::Internal(format!("cannot start a worker thread: {e}")))?;
            workers.push(h);
        }
        Ok(Engine {
            shared,
            workers: Mutex::new(workers),
        })
    }

    /// What the workers run on (the model, or the server that serves it).
    pub(crate) fn backend(&self) -> &Arc<B> {
        &self.shared.backend
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.shared.config
    }

    /// What it has done since it started.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Items waiting in the queue.
    pub(crate) fn queue_depth(&self) -> usize {
        self.shared.lock().queue.len()
    }

    /// Forward passes (or generations) running now.
    pub fn running(&self) -> usize {
        self.shared.lock().running
    }

    /// Padded tokens the next forward pass may take: the token budget, or less while passes
    /// are paced to `batch_seconds`.
    pub(crate) fn batch_budget(&self) -> usize {
        self.shared.lock().pace.budget(self.shared.config.token_budget)
    }

    /// A scorer for one request; cancelling `cancel` stops its remaining work.
    pub fn handle(&self, cancel: CancelToken) -> Handle<B> {
        Handle {
            shared: self.shared.clone(),
            cancel,
            computed: AtomicU64::new(0),
            reused: AtomicU64::new(0),
        }
    }

    /// Refuses new work, cancels everything queued, lets running batches finish and joins
    /// the workers. Idempotent.
    pub fn shutdown(&self) {
        let drained = {
            let mut st = self.shared.lock();
            st.closed = true;
            st.queue.drain()
        };
        self.shared.wake.notify_all();
        fail_all(drained, &Error::Cancelled);
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        for w in workers {
            let _ = w.join();
        }
    }
}

impl<B: Backend> Drop for Engine<B> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn fail_all(work: Vec<Work>, e: &Error) {
    for w in work {
        match w {
            Work::Score { ticket, .. } => ticket.send(Reply::Failed(e.clone())),
            Work::Generate { reply, .. } => {
                let _ = reply.send(Err(e.clone()));
            }
            Work::Gradient { reply, .. } => {
                let _ = reply.send(GradientReply::Done(Err(e.clone())));
            }
        }
    }
}

/// While a gradient job holds this worker, between its passes: one batch of the scoring or
/// generation work that waits, picked by the queue's usual turns and pacing, so that a long
/// gradient run delays other requests by a pass, not by the whole run. Queued gradient jobs
/// wait for a worker of their own.
fn take_turn<B: Backend>(s: &Shared<B>) {
    let batch = {
        let mut st = s.lock();
        if st.closed {
            return;
        }
        let budget = st.pace.budget(s.config.token_budget);
        let (batch, skipped) = st
            .queue
            .take_batch_where(budget, s.config.window, |w| !matches!(w, Work::Gradient { .. }));
        s.stats.skipped.fetch_add(skipped as u64, Ordering::Relaxed);
        if batch.is_empty() {
            return;
        }
        st.running += 1;
        batch
    };
    run_batch(s, batch);
    s.lock().running -= 1;
}

fn worker<B: Backend>(s: &Shared<B>) {
    loop {
        let batch = {
            let mut st = s.lock();
            loop {
                if st.closed {
                    return;
                }
                let budget = st.pace.budget(s.config.token_budget);
                let (batch, skipped) = st.queue.take_batch(budget, s.config.window);
                s.stats.skipped.fetch_add(skipped as u64, Ordering::Relaxed);
                if !batch.is_empty() {
                    st.running += 1;
                    break batch;
                }
                st = s.wake.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        };
        run_batch(s, batch);
        s.lock().running -= 1;
    }
}

/// Runs one batch and delivers its results. A scoring batch's cost is recorded first, so a
/// caller that has its results sees the pace they set.
fn run_batch<B: Backend>(s: &Shared<B>, batch: Vec<Work>) {
    let mut items = Vec::with_capacity(batch.len());
    let mut owners = Vec::with_capacity(batch.len());
    for w in batch {
        match w {
            Work::Generate {
                prompt,
                max_new_tokens,
                reply,
                ..
            } => {
                s.stats.generations.fetch_add(1, Ordering::Relaxed);
                let out = catch(|| s.backend.generate(&prompt, max_new_tokens));
                let _ = reply.send(out);
            }
            Work::Gradient {
                cancel, job, reply, ..
            } => {
                s.stats.gradients.fetch_add(1, Ordering::Relaxed);
                let sent = Cell::new(None);
                let started = Instant::now();
                let lent = Cell::new(0.0);
                let out = catch(|| {
                    s.backend.gradients(&job, &|done, total| {
                        if cancel.is_cancelled() {
                            return Err(Error::Cancelled);
                        }
                        if sent.replace(Some(done)) != Some(done) {
                            let _ = reply.send(GradientReply::Progress(done, total));
                        }
                        let turn = Instant::now();
                        take_turn(s);
                        lent.set(lent.get() + turn.elapsed().as_secs_f64());
                        Ok(())
                    })
                });
                if out.is_ok() {
                    let work = job.work().0;
                    s.stats.gradient_tokens.fetch_add(work as u64, Ordering::Relaxed);
                    let seconds = started.elapsed().as_secs_f64() - lent.get();
                    s.stats.gradient_seconds.observe(seconds.max(0.0));
                }
                let _ = reply.send(GradientReply::Done(out));
            }
            Work::Score {
                ticket, index, item, ..
            } => {
                items.push(item);
                owners.push((ticket, index));
            }
        }
    }
    if items.is_empty() {
        return;
    }
    // Each distinct sequence is scored once, whoever asked for it.
    let mut distinct: Vec<ScoreItem> = Vec::with_capacity(items.len());
    let mut slot = Vec::with_capacity(items.len());
    let mut seen: HashMap<&ScoreItem, usize> = HashMap::new();
    for item in &items {
        let next = distinct.len();
        let k = *seen.entry(item).or_insert(next);
        if k == next {
            distinct.push(item.clone());
        }
        slot.push(k);
    }
    let started = Instant::now();
    let result = catch(|| s.backend.score_reusing(&distinct)).and_then(|b| {
        if b.scores.len() == distinct.len() && b.reused.len() == distinct.len() {
            Ok(b)
        } else {
            Err(Error::Internal(format!(
                "{} results for {} sequences",
                b.scores.len(),
                distinct.len()
            )))
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    let padded = record(s, &distinct, items.len(), result.as_ref().ok(), seconds);
    if result.is_ok() {
        s.lock().pace.observe(padded, seconds);
    }
    match result {
        Ok(b) => {
            // A copy of a sequence scored for another owner reused all of it.
            let mut first = vec![true; distinct.len()];
            let scored = slot
                .iter()
                .zip(&items)
                .map(|(&k, item)| {
                    let own = std::mem::replace(&mut first[k], false);
                    let reused = if own { b.reused[k] } else { item.input_len() };
                    (b.scores[k].clone(), reused)
                })
                .collect();
            deliver(owners, scored)
        }
        // A batch shared by several requests failed: score each request's part on its own, so
        // only the request whose input is at fault sees the error.
        Err(e) if owners.iter().any(|(t, _)| t.id != owners[0].0.id) => {
            tracing::warn!(
                "a batch of {} sequences failed ({e}); scoring each request's part alone",
                items.len()
            );
            score_each_owner_alone(s, &items, &owners);
        }
        Err(e) => fail_owners(&owners, &e),
    }
}

/// Counts a scoring pass over `distinct` sequences (asked for `asked` times) in the engine's
/// stats; the padded tokens it took.
fn record<B>(
    s: &Shared<B>,
    distinct: &[ScoreItem],
    asked: usize,
    scored: Option<&BatchScores>,
    seconds: f64,
) -> usize {
    let st = &s.stats;
    st.batch_seconds.observe(seconds);
    st.batches.fetch_add(1, Ordering::Relaxed);
    st.batch_size.observe(distinct.len() as f64);
    st.sequences.fetch_add(distinct.len() as u64, Ordering::Relaxed);
    st.shared
        .fetch_add((asked - distinct.len()) as u64, Ordering::Relaxed);
    let real: usize = distinct.iter().map(ScoreItem::input_len).sum();
    let longest = distinct.iter().map(ScoreItem::input_len).max().unwrap_or(0);
    st.tokens.fetch_add(real as u64, Ordering::Relaxed);
    if let Some(b) = scored {
        st.record_reuse(real, b);
    }
    let padded = longest * distinct.len();
    st.padded_tokens.fetch_add(padded as u64, Ordering::Relaxed);
    padded
}

/// Scores each request's part of a failed batch as a batch of its own.
fn score_each_owner_alone<B: Backend>(s: &Shared<B>, items: &[ScoreItem], owners: &[(Arc<Ticket>, usize)]) {
    let mut groups: Vec<(u64, Vec<usize>)> = Vec::new();
    for (k, (t, _)) in owners.iter().enumerate() {
        match groups.iter_mut().find(|(id, _)| *id == t.id) {
            Some((_, ks)) => ks.push(k),
            None => groups.push((t.id, vec![k])),
        }
    }
    for (_, ks) in groups {
        let part: Vec<ScoreItem> = ks.iter().map(|&k| items[k].clone()).collect();
        let who: Vec<(Arc<Ticket>, usize)> = ks.iter().map(|&k| owners[k].clone()).collect();
        match catch(|| s.backend.score_reusing(&part)) {
            Ok(b) if b.scores.len() == part.len() && b.reused.len() == part.len() => {
                deliver(who, b.scores.into_iter().zip(b.reused).collect())
            }
            Ok(_) => fail_owners(&who, &Error::Internal("wrong number of results".into())),
            Err(e) => fail_owners(&who, &e),
        }
    }
}

/// Runs `f`, turning a panic into an internal error so a worker survives bad luck.
fn catch<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(Error::Internal("the model panicked".into())))
}

/// Sends each owner its scores, with the input tokens each reused.
fn deliver(owners: Vec<(Arc<Ticket>, usize)>, scores: Vec<(Vec<f32>, usize)>) {
    let mut per: Vec<(Arc<Ticket>, Scored)> = Vec::new();
    for ((t, i), (sc, reused)) in owners.into_iter().zip(scores) {
        match per.iter_mut().find(|(p, _)| p.id == t.id) {
            Some((_, v)) => v.push((i, sc, reused)),
            None => per.push((t, vec![(i, sc, reused)])),
        }
    }
    for (t, v) in per {
        t.send(Reply::Scores(v));
    }
}

fn fail_owners(owners: &[(Arc<Ticket>, usize)], e: &Error) {
    let mut told = Vec::new();
    for (t, _) in owners {
        if !told.contains(&t.id) {
            told.push(t.id);
            t.send(Reply::Failed(e.clone()));
        }
    }
}

/// One request's view of the engine.
pub struct Handle<B: Backend> {
    shared: Arc<Shared<B>>,
    cancel: CancelToken,
    /// Input tokens of this handle's sequences computed, and reused.
    computed: AtomicU64,
    reused: AtomicU64,
}

impl<B: Backend> Handle<B> {
    /// Queues `items` (all or none), waits for their scores and reports progress as batches
    /// finish. Results come back in the order of `items`.
    pub fn score_items(
        &self,
        items: Vec<ScoreItem>,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Vec<Vec<f32>>> {
        let total = items.len();
        if total == 0 {
            return Ok(Vec::new());
        }
        if self.cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        for (i, item) in items.iter().enumerate() {
            self.shared.backend.check(item, &format!("sequences[{i}]"))?;
        }
        let s = &*self.shared;
        let lens: Vec<usize> = items.iter().map(ScoreItem::input_len).collect();
        let (tx, rx) = mpsc::channel();
        let ticket = Arc::new(Ticket {
            id: s.next_ticket.fetch_add(1, Ordering::Relaxed),
            cancel: self.cancel.clone(),
            tx: Mutex::new(tx),
        });
        // Queued so that the batches' heads follow the prefixes the items share (see
        // `order_for_reuse`); each keeps its index.
        let order = crate::model::prefix::order_for_reuse(&items);
        let mut slots: Vec<Option<ScoreItem>> = items.into_iter().map(Some).collect();
        let work = order
            .into_iter()
            .filter_map(|index| {
                let item = slots.get_mut(index)?.take()?;
                Some(Work::Score {
                    ticket: ticket.clone(),
                    index,
                    key: item_key(&item),
                    item,
                })
            })
            .collect();
        self.enqueue(work)?;
        let mut out: Vec<Option<Vec<f32>>> = vec![None; total];
        let mut done = 0;
        while done < total {
            match rx.recv_timeout(POLL) {
                Ok(Reply::Scores(v)) => {
                    for (i, sc, reused) in v {
                        if out[i].replace(sc).is_none() {
                            done += 1;
                            self.count(lens[i], reused);
                        }
                    }
                    progress(done, total);
                }
                Ok(Reply::Failed(e)) => {
                    self.purge(ticket.id);
                    return Err(e);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if self.cancel.is_cancelled() {
                        self.purge(ticket.id);
                        return Err(Error::Cancelled);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(Error::Internal("the engine stopped".into()))
                }
            }
        }
        Ok(out.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// Greedy continuation, run on a worker thread between batches.
    pub(crate) fn generate_ids(&self, prompt: &[u32], max_new_tokens: usize) -> Result<Vec<u32>> {
        if self.cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let (reply, rx) = mpsc::channel();
        self.enqueue(vec![Work::Generate {
            owner: self.shared.next_ticket.fetch_add(1, Ordering::Relaxed),
            cancel: self.cancel.clone(),
            prompt: prompt.to_vec(),
            max_new_tokens,
            reply,
        }])?;
        loop {
            match rx.recv_timeout(POLL) {
                Ok(r) => return r,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // Queued generation of a cancelled request is dropped by the batcher,
                    // which disconnects the channel; a running one finishes unobserved.
                    if self.cancel.is_cancelled() {
                        return Err(Error::Cancelled);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(Error::Cancelled),
            }
        }
    }

    /// A gradient attribution, run on a worker thread between batches; `progress(done,
    /// total)` as its chunks of steps finish.
    pub(crate) fn gradient_rows(
        &self,
        job: GradientJob,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Vec<Vec<f64>>> {
        if self.cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let (reply, rx) = mpsc::channel();
        self.enqueue(vec![Work::Gradient {
            owner: self.shared.next_ticket.fetch_add(1, Ordering::Relaxed),
            cancel: self.cancel.clone(),
            job,
            reply,
        }])?;
        loop {
            match rx.recv_timeout(POLL) {
                Ok(GradientReply::Progress(done, total)) => progress(done, total),
                Ok(GradientReply::Done(r)) => return r,
                // A running job looks at the flag between chunks; a queued one is dropped by
                // the batcher, which disconnects the channel.
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if self.cancel.is_cancelled() {
                        return Err(Error::Cancelled);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(Error::Cancelled),
            }
        }
    }

    /// Counts one scored sequence of `len` input tokens, `reused` of them not computed for it.
    fn count(&self, len: usize, reused: usize) {
        let reused = reused.min(len);
        self.reused.fetch_add(reused as u64, Ordering::Relaxed);
        self.computed.fetch_add((len - reused) as u64, Ordering::Relaxed);
    }

    fn enqueue(&self, work: Vec<Work>) -> Result<()> {
        let s = &*self.shared;
        {
            let mut st = s.lock();
            if st.closed {
                return Err(Error::Cancelled);
            }
            if st.queue.push_all(work).is_err() {
                s.stats.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(Error::Busy);
            }
        }
        s.wake.notify_all();
        Ok(())
    }

    /// Drops this ticket's queued items (after cancellation or failure).
    fn purge(&self, ticket: u64) {
        let n = self.shared.lock().queue.remove_where(|w| match w {
            Work::Score { ticket: t, .. } => t.id == ticket,
            Work::Generate { .. } | Work::Gradient { .. } => false,
        });
        self.shared.stats.skipped.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// A backend that knows its tokenizer and model (as `Model` does) serves requests through the
/// queue: facts come from the backend, scores and generations from the workers.
impl<B: Backend + Scorer> Scorer for Handle<B> {
    fn tokenizer(&self) -> &Tokenizer {
        self.shared.backend.tokenizer()
    }

    fn info(&self) -> &ModelInfo {
        self.shared.backend.info()
    }

    fn context_length(&self) -> usize {
        self.shared.backend.context_length()
    }

    fn score(
        &self,
        items: Vec<ScoreItem>,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Vec<Vec<f32>>> {
        self.score_items(items, progress)
    }

    fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    fn generate(&self, prompt: &[u32], max_new_tokens: usize) -> Result<Vec<u32>> {
        self.generate_ids(prompt, max_new_tokens)
    }

    fn tokens(&self) -> Option<TokenWork> {
        Some(TokenWork {
            computed: self.computed.load(Ordering::Relaxed),
            reused: self.reused.load(Ordering::Relaxed),
        })
    }

    fn gradients(&self, job: GradientJob, progress: &(dyn Fn(usize, usize) + Sync)) -> Result<Vec<Vec<f64>>> {
        self.gradient_rows(job, progress)
    }
}

#[cfg(test)]
mod tests;
