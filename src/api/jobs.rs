//! The job runner: it claims queued jobs (attribute requests and audits run in the background)
//! whenever a run slot is free, runs each within its time limit on the run's scorer chain, and
//! records how it ended. What a job is lives with the store ([`super::store::job`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OwnedSemaphorePermit;

use super::chain::Chain;
use super::fair::Slot;
use super::handlers::{attribute_work, method_label, run_in_slot};
use super::store::{now_ms, ClaimedJob, JobRequest, JobResult, Outcome};
use super::AppState;
use crate::audit;
use crate::engine::CancelToken;
use crate::error::{Error, ErrorDetail};
use crate::model::{GradientJob, ScoreItem};
use crate::run::{Limits, Progress};
use crate::scorer::Scorer;

/// How a job runs: its metrics label and its work.
impl JobRequest {
    /// The metrics label of the run.
    fn label(&self) -> String {
        match self {
            JobRequest::Attribution(r) => method_label(r),
            JobRequest::Audit(_) => "audit".into(),
        }
    }

    /// The run: the request computed against the run's scorer, reporting `progress`.
    fn work(
        self,
        progress: impl Fn(Progress) + Send + Sync + 'static,
    ) -> impl FnOnce(&dyn Scorer, &Limits) -> crate::Result<JobResult> + Send + 'static {
        move |scorer, limits| match self {
            JobRequest::Attribution(r) => {
                attribute_work(r, progress)(scorer, limits).map(|r| JobResult::Attribution(Box::new(r)))
            }
            JobRequest::Audit(r) => {
                audit::run(&r, scorer, limits, &progress).map(|r| JobResult::Audit(Box::new(r)))
            }
        }
    }
}

/// Runs queued jobs: whenever a run slot is free, claims the next job from the store and runs
/// it. Stops claiming when the server stops.
pub(crate) fn spawn_runner(state: &Arc<AppState>) {
    let weak = Arc::downgrade(state);
    tokio::spawn(async move {
        loop {
            let Some(state) = weak.upgrade() else { break };
            // A replica still loading its model leaves the line to the others.
            if state.ready.get().is_none() {
                if state.load_error.get().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let Ok(slot) = state.run_slots.clone().acquire_owned().await else {
                break;
            };
            // Jobs shared with other replicas are left to them; in-process ones still run
            // during the shutdown grace.
            if state.stopping() && state.jobs.shares_work() {
                break;
            }
            match state.jobs.claim().await {
                Ok(Some(job)) => dispatch(&state, Arc::from(job), slot),
                Ok(None) => {
                    drop(slot);
                    state.jobs.work_waiting(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    drop(slot);
                    tracing::debug!("cannot claim a job: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    });
}

/// Jobs this process runs now, by id (shutdown hands them over).
#[derive(Default)]
pub struct Running(Mutex<HashMap<String, Arc<dyn ClaimedJob>>>);

impl Running {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<dyn ClaimedJob>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Gives every running job back to the store so another replica continues it.
    pub(crate) fn hand_over_all(&self) {
        for job in self.lock().values() {
            job.hand_over();
        }
    }
}

/// Runs a claimed job in run slot `run` when its client has some of its share free; otherwise
/// leaves the slot to other clients and runs the job (still queued) once one of its client's
/// runs ends and a slot is free.
fn dispatch(state: &Arc<AppState>, job: Arc<dyn ClaimedJob>, run: OwnedSemaphorePermit) {
    let Some(client) = job.client().cloned() else {
        tokio::spawn(run_job(state.clone(), job, Slot::new(run, None)));
        return;
    };
    if let Some(share) = state.shares.try_take(&client) {
        tokio::spawn(run_job(state.clone(), job, Slot::new(run, Some(share))));
        return;
    }
    drop(run);
    let state = state.clone();
    tokio::spawn(async move {
        let Some(share) = state.shares.take(&client).await else {
            return;
        };
        // Closed: the server stopped, and its shutdown ends the job.
        let Ok(run) = state.run_slots.clone().acquire_owned().await else {
            return;
        };
        run_job(state.clone(), job, Slot::new(run, Some(share))).await
    });
}

async fn run_job(state: Arc<AppState>, job: Arc<dyn ClaimedJob>, slot: Slot) {
    let id = job.id().to_string();
    state.running_jobs.lock().insert(id.clone(), job.clone());
    match job.start().await {
        Ok(true) => {
            let outcome = run_claimed(&state, &job, slot).await;
            if job.let_go() {
                job.release().await;
            } else {
                job.finish(outcome).await;
            }
        }
        // Cancelled while it waited: its end is recorded; this ends the claim.
        Ok(false) => {
            job.finish(Outcome::Cancelled(Error::Cancelled.body().error))
                .await
        }
        // The store is unreachable: the lease runs out and a replica takes the job again.
        Err(e) => tracing::warn!(job = %id, "cannot start the job: {e}"),
    }
    state.running_jobs.lock().remove(&id);
}

/// Runs a claimed job within its time limit; its sequences wait (bounded) for room in a full
/// scoring queue instead of failing at once.
async fn run_claimed(state: &Arc<AppState>, job: &Arc<dyn ClaimedJob>, slot: Slot) -> Outcome {
    let cancel = job.cancel_token().clone();
    let chain = Chain::Job {
        job: job.clone(),
        replicas: state.replicas.clone(),
        patience: state.config.job_queue_wait,
    };
    let p = job.clone();
    let request = job.request().clone();
    let label = request.label();
    let work = request.work(move |progress| p.progress(progress));
    let run = run_in_slot(state, slot, label, cancel.clone(), work, chain);
    let limit = state.config.job_time_limit;
    let left = limit.map(|l| {
        let ran = job.started_at_ms().map_or(0, |t| now_ms().saturating_sub(t));
        l.saturating_sub(Duration::from_millis(ran))
    });
    let out = match left {
        Some(left) => match tokio::time::timeout(left, run).await {
            Ok(out) => out,
            Err(_) => {
                cancel.cancel();
                return Outcome::Failed(time_limit_error(limit.unwrap_or_default()));
            }
        },
        None => run.await,
    };
    match out {
        Ok(r) => Outcome::Done(Box::new(r)),
        Err(e) if e.code == "cancelled" || cancel.is_cancelled() => Outcome::Cancelled(e.body().error),
        Err(e) => Outcome::Failed(e.body().error),
    }
}

fn time_limit_error(limit: Duration) -> ErrorDetail {
    ErrorDetail {
        code: "time_limit_exceeded".into(),
        message: format!(
            "the job ran longer than its time limit of {} s (--job-time-limit) and was stopped",
            limit.as_secs_f64()
        ),
        field: Some("job_time_limit".into()),
    }
}

/// A job's scorer that, when the scoring queue is full, waits for room (up to `patience`)
/// instead of failing the job at once; its items go in all together or not at all, so trying
/// again is safe.
pub(crate) struct WaitForRoom {
    inner: Box<dyn Scorer>,
    cancel: CancelToken,
    patience: Duration,
}

impl WaitForRoom {
    pub(crate) fn new(inner: Box<dyn Scorer>, cancel: CancelToken, patience: Duration) -> Self {
        WaitForRoom {
            inner,
            cancel,
            patience,
        }
    }

    fn retry<T>(&self, mut f: impl FnMut() -> crate::Result<T>) -> crate::Result<T> {
        let until = Instant::now() + self.patience;
        let mut pause = Duration::from_millis(20);
        loop {
            match f() {
                Err(Error::Busy) if Instant::now() + pause < until && !self.cancel.is_cancelled() => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                out => return out,
            }
        }
    }
}

impl Scorer for WaitForRoom {
    crate::scorer_facts_from!(inner);

    fn score(
        &self,
        items: Vec<ScoreItem>,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> crate::Result<Vec<Vec<f32>>> {
        self.retry(|| self.inner.score(items.clone(), progress))
    }

    fn generate(&self, prompt: &[u32], max_new_tokens: usize) -> crate::Result<Vec<u32>> {
        self.retry(|| self.inner.generate(prompt, max_new_tokens))
    }

    fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled() || self.inner.is_cancelled()
    }

    fn gradients(
        &self,
        job: GradientJob,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> crate::Result<Vec<Vec<f64>>> {
        self.retry(|| self.inner.gradients(job.clone(), progress))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::model::{ArchInfo, ModelInfo, Tokenizer};

    /// Answers `Busy` (a full scoring queue) to its first `busy` calls, then scores.
    struct BusyFor {
        busy: usize,
        calls: AtomicUsize,
        tokenizer: Tokenizer,
        info: ModelInfo,
    }

    impl BusyFor {
        fn new(busy: usize) -> BusyFor {
            let inner = tokenizers::Tokenizer::from_file("tests/fixtures/tiny-gpt2/tokenizer.json").unwrap();
            BusyFor {
                busy,
                calls: AtomicUsize::new(0),
                tokenizer: Tokenizer::new(inner, vec![50256]),
                info: ModelInfo {
                    spec: "busy".into(),
                    chat_template: false,
                    gradients: false,
                    arch: ArchInfo {
                        architecture: "busy".into(),
                        parameters: 0,
                        vocab_size: 50257,
                        context_length: 1024,
                        hidden_size: 1,
                        layers: 0,
                        heads: 1,
                        dtype: "f32".into(),
                    },
                },
            }
        }
    }

    impl Scorer for BusyFor {
        fn tokenizer(&self) -> &Tokenizer {
            &self.tokenizer
        }
        fn info(&self) -> &ModelInfo {
            &self.info
        }
        fn score(
            &self,
            items: Vec<ScoreItem>,
            _: &(dyn Fn(usize, usize) + Sync),
        ) -> crate::Result<Vec<Vec<f32>>> {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.busy {
                return Err(Error::Busy);
            }
            Ok(items.iter().map(|i| vec![-1.0; i.target.len()]).collect())
        }
        fn generate(&self, _: &[u32], _: usize) -> crate::Result<Vec<u32>> {
            Err(Error::Busy)
        }
    }

    fn item() -> Vec<ScoreItem> {
        vec![ScoreItem {
            prompt: vec![1, 2],
            target: vec![3],
        }]
    }

    #[test]
    fn a_job_waits_for_room_in_a_full_queue() {
        let patient = WaitForRoom::new(
            Box::new(BusyFor::new(3)),
            CancelToken::new(),
            Duration::from_secs(60),
        );
        assert_eq!(patient.score(item(), &|_, _| {}).unwrap(), vec![vec![-1.0]]);
    }

    #[test]
    fn a_job_stops_waiting_after_its_bound() {
        let patient = WaitForRoom::new(
            Box::new(BusyFor::new(usize::MAX)),
            CancelToken::new(),
            Duration::from_millis(100),
        );
        assert_eq!(patient.score(item(), &|_, _| {}).unwrap_err(), Error::Busy);
        assert_eq!(patient.generate(&[1], 3).unwrap_err(), Error::Busy);
        // No bound at all: the first answer stands.
        let impatient = WaitForRoom::new(Box::new(BusyFor::new(1)), CancelToken::new(), Duration::ZERO);
        assert_eq!(impatient.score(item(), &|_, _| {}).unwrap_err(), Error::Busy);
    }

    #[test]
    fn a_cancelled_job_stops_waiting() {
        let cancel = CancelToken::new();
        cancel.cancel();
        let patient = WaitForRoom::new(
            Box::new(BusyFor::new(usize::MAX)),
            cancel,
            Duration::from_secs(3600),
        );
        assert_eq!(patient.score(item(), &|_, _| {}).unwrap_err(), Error::Busy);
        assert!(patient.is_cancelled());
    }
}
