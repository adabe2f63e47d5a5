//! The scorer a run sees, built in this one place. Each layer is a [`Scorer`] around the next;
//! outermost first:
//!
//! 1. [`CachedScorer`]: the score cache (this process's LRU and, with `--redis-url`, the
//!    replicas' shared scores), so a sequence scored before is never scored again.
//! 2. The replicas' job scorer (jobs only; with `--redis-url` the fan-out, which cuts a job's
//!    large scoring call into chunks that every replica scores; with no replicas, nothing).
//! 3. [`WaitForRoom`] (jobs and fan-out chunks): the sequences wait, up to `--job-queue-wait`,
//!    for room in a full queue instead of failing at once.
//! 4. The engine's handle: the shared queue, the batcher and the workers, with the run's
//!    cancel token. For a model an inference server serves, the batches are its requests
//!    and the sequences reach the queue sorted so that those sharing a prefix go together.

use std::sync::Arc;
use std::time::Duration;

use super::jobs::WaitForRoom;
use super::store::{ClaimedJob, Replicas};
use super::Ready;
use crate::engine::CancelToken;
use crate::score_cache::CachedScorer;
use crate::scorer::remote::PrefixOrdered;
use crate::scorer::Scorer;

/// What the run is, which decides the layers it gets.
pub(crate) enum Chain {
    /// A synchronous request: the cache over the engine.
    Request,
    /// A claimed job: all four layers.
    Job {
        job: Arc<dyn ClaimedJob>,
        /// The replicas sharing the job store (`None`: the job scorer is the patient engine).
        replicas: Option<Arc<dyn Replicas>>,
        patience: Duration,
    },
    /// A fan-out chunk scored for another replica's job: the cache over a patient engine.
    Chunk { patience: Duration },
}

/// The scorer of a run of `chain`'s kind, cancelled by `cancel`.
pub(crate) fn scorer(ready: &Ready, cancel: &CancelToken, chain: Chain) -> CachedScorer {
    let handle = ready.engine.handle(cancel.clone());
    // A remote model's batches are its requests: sequences sharing a prefix go together.
    let engine: Box<dyn Scorer> = match ready.model.remote() {
        Some(_) => Box::new(PrefixOrdered(handle)),
        None => Box::new(handle),
    };
    let inner: Box<dyn Scorer> = match chain {
        Chain::Request => engine,
        Chain::Job {
            job,
            replicas,
            patience,
        } => {
            let patient: Box<dyn Scorer> = Box::new(WaitForRoom::new(engine, cancel.clone(), patience));
            match replicas {
                Some(r) => r.job_scorer(&*job, patient),
                None => patient,
            }
        }
        Chain::Chunk { patience } => Box::new(WaitForRoom::new(engine, cancel.clone(), patience)),
    };
    CachedScorer::new(inner, ready.cache.clone())
}
