//! The default job store: jobs in this process's memory, gone when it exits.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use tokio::sync::{watch, Notify};

use super::job::{rfc3339, Job, JobRequest, JobState};
use super::{new_job, now_ms, ClaimedJob, JobStore, Outcome, StoreError, StoreResult};
use crate::api::fair::Client;
use crate::engine::CancelToken;
use crate::error::ErrorDetail;
use crate::run::Progress;

/// One job: its request, its published snapshot (watched by SSE streams) and its cancel token.
pub(crate) struct JobEntry {
    request: JobRequest,
    client: Option<Client>,
    cancel: CancelToken,
    tx: watch::Sender<Job>,
    started_ms: Mutex<Option<u64>>,
    finished: Mutex<Option<Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl JobEntry {
    pub(crate) fn snapshot(&self) -> Job {
        self.tx.borrow().clone()
    }

    /// Moves a queued job to running (unless it was cancelled meanwhile).
    pub(crate) fn start(&self) -> bool {
        self.tx.send_if_modified(|j| {
            if j.state == JobState::Queued {
                j.state = JobState::Running;
                true
            } else {
                false
            }
        });
        lock(&self.started_ms).get_or_insert_with(now_ms);
        self.state() == JobState::Running
    }

    pub(crate) fn progress(&self, p: Progress) {
        self.tx.send_if_modified(|j| {
            if j.state.is_finished() || j.progress == p {
                return false;
            }
            j.progress = p;
            true
        });
    }

    /// Sets a final state once; later calls (e.g. a run ending after a DELETE) change nothing.
    pub(crate) fn finish(&self, outcome: Outcome) -> bool {
        let changed = self.tx.send_if_modified(|j| {
            if j.state.is_finished() {
                return false;
            }
            j.state = outcome.state();
            j.finished_at = Some(rfc3339(SystemTime::now()));
            match outcome.clone() {
                Outcome::Done(r) => {
                    let total = r.sequences().max(j.progress.total);
                    j.progress = Progress { done: total, total };
                    j.result = Some(*r);
                }
                Outcome::Failed(e) | Outcome::Cancelled(e) => j.error = Some(e),
            }
            true
        });
        if changed {
            *lock(&self.finished) = Some(Instant::now());
        }
        changed
    }

    pub(crate) fn state(&self) -> JobState {
        self.tx.borrow().state
    }

    fn finished_at(&self) -> Option<Instant> {
        *lock(&self.finished)
    }
}

/// All jobs by id, and the ids waiting for a worker. Finished jobs are dropped after `ttl`,
/// and beyond `max_finished` the oldest finished ones go first. Unfinished jobs are never
/// dropped.
pub(crate) struct MemoryStore {
    jobs: Mutex<HashMap<String, Arc<JobEntry>>>,
    waiting: Mutex<VecDeque<Arc<JobEntry>>>,
    arrived: Notify,
    ttl: Duration,
    max_finished: usize,
    max_pending: usize,
}

impl MemoryStore {
    pub(crate) fn new(ttl: Duration, max_finished: usize, max_pending: usize) -> Self {
        MemoryStore {
            jobs: Mutex::new(HashMap::new()),
            waiting: Mutex::new(VecDeque::new()),
            arrived: Notify::new(),
            ttl,
            max_finished,
            max_pending,
        }
    }

    /// The job's entry (tests look inside).
    pub(crate) fn entry(&self, id: &str) -> Option<Arc<JobEntry>> {
        lock(&self.jobs).get(id).cloned()
    }

    fn insert(&self, request: &JobRequest, client: Option<Client>) -> StoreResult<Arc<JobEntry>> {
        self.sweep();
        let mut jobs = lock(&self.jobs);
        if jobs.values().filter(|j| !j.state().is_finished()).count() >= self.max_pending {
            return Err(StoreError::Full(self.max_pending));
        }
        let id = uuid::Uuid::new_v4().to_string();
        let entry = Arc::new(JobEntry {
            request: request.clone(),
            client,
            cancel: CancelToken::new(),
            tx: watch::Sender::new(new_job(id.clone(), request.kind())),
            started_ms: Mutex::new(None),
            finished: Mutex::new(None),
        });
        jobs.insert(id, entry.clone());
        Ok(entry)
    }
}

impl JobStore for MemoryStore {
    fn create<'a>(&'a self, request: &'a JobRequest) -> BoxFuture<'a, StoreResult<Job>> {
        self.create_for(request, None)
    }

    fn create_for<'a>(
        &'a self,
        request: &'a JobRequest,
        client: Option<Client>,
    ) -> BoxFuture<'a, StoreResult<Job>> {
        let out = self.insert(request, client).map(|entry| {
            let job = entry.snapshot();
            lock(&self.waiting).push_back(entry);
            self.arrived.notify_one();
            job
        });
        async move { out }.boxed()
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<Job>>> {
        let out = self.entry(id).map(|e| e.snapshot());
        async move { Ok(out) }.boxed()
    }

    fn cancel<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<Job>>> {
        let out = self.entry(id).map(|job| {
            if !job.state().is_finished() {
                job.cancel.cancel();
                job.finish(Outcome::Cancelled(crate::error::Error::Cancelled.body().error));
            }
            job.snapshot()
        });
        async move { Ok(out) }.boxed()
    }

    fn watch<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<BoxStream<'static, Job>>>> {
        let out = self.entry(id).map(|e| {
            let rx = e.tx.subscribe();
            // State: whether the last snapshot sent was a finished one (None: none sent yet).
            // The stream ends only after sending a finished snapshot, so a job that ends
            // between two looks is still seen ending.
            futures::stream::unfold((rx, None), |(mut rx, sent_finished)| async move {
                match sent_finished {
                    Some(true) => return None,
                    Some(false) if rx.changed().await.is_err() => return None,
                    _ => {}
                }
                let job = rx.borrow_and_update().clone();
                let finished = job.state.is_finished();
                Some((job, (rx, Some(finished))))
            })
            .boxed()
        });
        async move { Ok(out) }.boxed()
    }

    fn claim(&self) -> BoxFuture<'_, StoreResult<Option<Box<dyn ClaimedJob>>>> {
        let next = lock(&self.waiting).pop_front();
        let out = next.map(|entry| {
            Box::new(MemoryClaim {
                id: entry.snapshot().id,
                entry,
            }) as Box<dyn ClaimedJob>
        });
        async move { Ok(out) }.boxed()
    }

    fn work_waiting(&self, max: Duration) -> BoxFuture<'_, ()> {
        async move {
            if lock(&self.waiting).is_empty() {
                let _ = tokio::time::timeout(max, self.arrived.notified()).await;
            }
        }
        .boxed()
    }

    fn counts(&self) -> Vec<(JobState, usize)> {
        let mut c: Vec<(JobState, usize)> = JobState::ALL.iter().map(|s| (*s, 0)).collect();
        for j in lock(&self.jobs).values() {
            let s = j.state();
            if let Some(slot) = c.iter_mut().find(|(k, _)| *k == s) {
                slot.1 += 1;
            }
        }
        c
    }

    fn available(&self) -> bool {
        true
    }

    fn shares_work(&self) -> bool {
        false
    }

    fn sweep(&self) {
        let now = Instant::now();
        let mut jobs = lock(&self.jobs);
        jobs.retain(|_, j| j.finished_at().is_none_or(|t| now.duration_since(t) < self.ttl));
        let mut finished: Vec<(Instant, String)> = jobs
            .iter()
            .filter_map(|(id, j)| j.finished_at().map(|t| (t, id.clone())))
            .collect();
        if finished.len() > self.max_finished {
            finished.sort();
            let excess = finished.len() - self.max_finished;
            for (_, id) in finished.into_iter().take(excess) {
                jobs.remove(&id);
            }
        }
    }

    fn cancel_all(&self, error: ErrorDetail) {
        for j in lock(&self.jobs).values() {
            j.cancel.cancel();
            j.finish(Outcome::Cancelled(error.clone()));
        }
    }
}

/// A job this process runs from its own memory.
struct MemoryClaim {
    id: String,
    entry: Arc<JobEntry>,
}

impl ClaimedJob for MemoryClaim {
    fn id(&self) -> &str {
        &self.id
    }
    fn request(&self) -> &JobRequest {
        &self.entry.request
    }
    fn client(&self) -> Option<&Client> {
        self.entry.client.as_ref()
    }
    fn cancel_token(&self) -> &CancelToken {
        &self.entry.cancel
    }
    fn started_at_ms(&self) -> Option<u64> {
        *lock(&self.entry.started_ms)
    }
    fn start(&self) -> BoxFuture<'_, StoreResult<bool>> {
        let started = self.entry.start();
        async move { Ok(started) }.boxed()
    }
    fn progress(&self, p: Progress) {
        self.entry.progress(p);
    }
    fn finish(&self, outcome: Outcome) -> BoxFuture<'_, ()> {
        self.entry.finish(outcome);
        async {}.boxed()
    }
    fn hand_over(&self) {}
    fn let_go(&self) -> bool {
        false
    }
    fn release(&self) -> BoxFuture<'_, ()> {
        async {}.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(ttl: Duration, max_finished: usize, max_pending: usize) -> MemoryStore {
        MemoryStore::new(ttl, max_finished, max_pending)
    }

    fn create(s: &MemoryStore) -> StoreResult<Arc<JobEntry>> {
        s.insert(&JobRequest::Attribution(Default::default()), None)
    }

    fn done() -> Outcome {
        Outcome::Failed(crate::error::Error::Internal("x".into()).body().error)
    }

    #[test]
    fn finish_happens_once() {
        let s = store(Duration::from_secs(60), 10, 10);
        let j = create(&s).unwrap();
        assert!(j.start());
        assert!(j.finish(Outcome::Cancelled(crate::error::Error::Cancelled.body().error)));
        assert!(!j.finish(done()));
        assert_eq!(j.state(), JobState::Cancelled);
        assert!(j.snapshot().finished_at.is_some());
        assert!(!j.start(), "a cancelled job never runs");
    }

    #[test]
    fn retention_by_count_and_time() {
        let s = store(Duration::from_secs(3600), 2, 100);
        let ids: Vec<String> = (0..4)
            .map(|_| {
                let j = create(&s).unwrap();
                j.finish(done());
                std::thread::sleep(Duration::from_millis(2));
                j.snapshot().id
            })
            .collect();
        let open = create(&s).unwrap();
        s.sweep();
        assert!(s.entry(&ids[0]).is_none() && s.entry(&ids[1]).is_none());
        assert!(s.entry(&ids[2]).is_some() && s.entry(&ids[3]).is_some());
        assert!(s.entry(&open.snapshot().id).is_some());

        let short = store(Duration::from_millis(1), 100, 100);
        let j = create(&short).unwrap();
        let open = create(&short).unwrap();
        j.finish(done());
        std::thread::sleep(Duration::from_millis(5));
        short.sweep();
        assert!(short.entry(&j.snapshot().id).is_none());
        assert!(short.entry(&open.snapshot().id).is_some(), "unfinished jobs stay");
    }

    #[test]
    fn unfinished_jobs_are_capped() {
        let s = store(Duration::from_secs(60), 10, 2);
        let a = create(&s).unwrap();
        let _b = create(&s).unwrap();
        assert_eq!(create(&s).err(), Some(StoreError::Full(2)));
        a.finish(done());
        assert!(create(&s).is_ok());
    }

    #[tokio::test]
    async fn claims_in_order_of_arrival() {
        let s = store(Duration::from_secs(60), 10, 10);
        let a = s
            .create(&JobRequest::Attribution(Default::default()))
            .await
            .unwrap();
        let b = s
            .create(&JobRequest::Attribution(Default::default()))
            .await
            .unwrap();
        assert_eq!(s.claim().await.unwrap().unwrap().id(), a.id);
        assert_eq!(s.claim().await.unwrap().unwrap().id(), b.id);
        assert!(s.claim().await.unwrap().is_none());
    }
}
