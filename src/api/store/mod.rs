//! Where jobs live and how they reach a worker: the [`JobStore`] seam. The handlers and the
//! job runner only talk to this trait; [`memory::MemoryStore`] (the default) keeps jobs in
//! this process, [`redis::RedisStore`] (`--redis-url`) shares them between replicas and
//! also serves the [`Replicas`] hooks (shared scores, chunk workers, the fan-out).

pub(crate) mod job;
pub(crate) mod memory;
pub(crate) mod redis;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;

use super::fair::Client;
use super::Ready;
use crate::engine::CancelToken;
use crate::error::ErrorDetail;
use crate::run::Progress;
use crate::score_cache::SharedScores;
use crate::scorer::Scorer;
pub(crate) use job::{new_job, now_ms, Job, JobKind, JobRequest, JobResult, JobState, Outcome};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StoreError {
    /// The store cannot be reached (Redis down or restarting).
    #[error("the job store cannot be reached ({0}); try again shortly")]
    Unavailable(String),
    /// `max` jobs are already queued or running.
    #[error("{0} jobs are already queued or running (--max-pending-jobs)")]
    Full(usize),
}

pub(crate) type StoreResult<T> = Result<T, StoreError>;

/// Jobs by id, and the line of jobs waiting for a worker.
pub(crate) trait JobStore: Send + Sync {
    /// Records a queued job for `request` and puts it in line; refuses beyond `max_pending`
    /// unfinished jobs.
    fn create<'a>(&'a self, request: &'a JobRequest) -> BoxFuture<'a, StoreResult<Job>>;
    /// As `create`, for `client` (its job then counts against the client's share of the run
    /// slots). A store that shares work between replicas ignores the client: the replica that
    /// runs a job does not know it.
    fn create_for<'a>(
        &'a self,
        request: &'a JobRequest,
        _client: Option<Client>,
    ) -> BoxFuture<'a, StoreResult<Job>> {
        self.create(request)
    }
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<Job>>>;
    /// Cancels an unfinished job wherever it runs (no effect on a finished one); the job after.
    fn cancel<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<Job>>>;
    /// The job's snapshots as it changes, starting with the current one and ending with the
    /// first finished one.
    fn watch<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<BoxStream<'static, Job>>>>;
    /// The next job for this process to run, if one is waiting (never waits for one).
    fn claim(&self) -> BoxFuture<'_, StoreResult<Option<Box<dyn ClaimedJob>>>>;
    /// Resolves when a job may be waiting, or after at most `max` (then `claim` again).
    fn work_waiting(&self, max: Duration) -> BoxFuture<'_, ()>;
    /// Jobs by state, as far as this process sees them (for /metrics).
    fn counts(&self) -> Vec<(JobState, usize)>;
    /// Whether the store answers now (`/ready`).
    fn available(&self) -> bool;
    /// True when another process can continue a job this one gives up ([`ClaimedJob::hand_over`]);
    /// shutdown then hands running jobs over instead of waiting for them.
    fn shares_work(&self) -> bool;
    /// Drops finished jobs past their retention (the in-memory store; Redis expires keys).
    fn sweep(&self) {}
    /// Cancels every unfinished job this store holds (shutdown without anyone to continue).
    fn cancel_all(&self, error: ErrorDetail);
    /// Stops handing out work (shutdown).
    fn stop(&self) {}
}

/// What a store shared between replicas adds beyond holding jobs (Redis only; the in-memory
/// store has no replicas and needs none of it).
pub(crate) trait Replicas: Send + Sync {
    /// The shared layer of the score cache.
    fn shared_scores(&self) -> Arc<dyn SharedScores>;
    /// Starts what runs once the model is loaded (the chunk workers).
    fn start(&self, ready: &Arc<Ready>);
    /// Wraps the scorer of `job`'s run (the fan-out of big calls to every replica).
    fn job_scorer(&self, job: &dyn ClaimedJob, inner: Box<dyn Scorer>) -> Box<dyn Scorer>;
}

/// A job this process runs. Holding it is holding its lease (Redis: kept by heartbeats).
pub(crate) trait ClaimedJob: Send + Sync {
    fn id(&self) -> &str;
    fn request(&self) -> &JobRequest;
    /// Who sent the job, when the store knows ([`JobStore::create_for`]).
    fn client(&self) -> Option<&Client> {
        None
    }
    /// Fires when the job is cancelled anywhere, or this process lost or gave up the job.
    fn cancel_token(&self) -> &CancelToken;
    /// When the job first started running (on any replica), as milliseconds since the epoch.
    fn started_at_ms(&self) -> Option<u64>;
    /// Queued -> running (a job taken over stays running); false when it must not run.
    fn start(&self) -> BoxFuture<'_, StoreResult<bool>>;
    /// Sequences scored so far; cheap, called from the run's thread.
    fn progress(&self, p: Progress);
    /// Records the end state once (a later call, e.g. after a DELETE, changes nothing) and
    /// ends the lease.
    fn finish(&self, outcome: Outcome) -> BoxFuture<'_, ()>;
    /// Stops the local run and puts the job back in line so another process continues it
    /// at once (shutdown). Only when the store [`JobStore::shares_work`].
    fn hand_over(&self);
    /// Whether [`ClaimedJob::hand_over`] was called or the lease was lost: the run's end is
    /// then not this process's to record.
    fn let_go(&self) -> bool;
    /// Puts a handed-over job back in line.
    fn release(&self) -> BoxFuture<'_, ()>;
}

impl From<StoreError> for super::error::ApiError {
    fn from(e: StoreError) -> Self {
        use axum::http::StatusCode;
        match &e {
            StoreError::Unavailable(_) => super::error::ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                e.to_string(),
            ),
            StoreError::Full(_) => {
                super::error::ApiError::new(StatusCode::TOO_MANY_REQUESTS, "limit_exceeded", e.to_string())
                    .with_field("max_pending_jobs")
            }
        }
    }
}
