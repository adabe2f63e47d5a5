//! Asynchronous jobs: state, progress and result of attribute requests run in the background,
//! kept after they finish for a configurable time and count.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use utoipa::ToSchema;

use crate::audit::AuditResult;
use crate::engine::CancelToken;
use crate::error::ErrorDetail;
use crate::request::AttributeResponse;
use crate::run::Progress;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for a free run slot.
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_finished(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed | JobState::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// What a job runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// An attribute request (`/v1/jobs`).
    #[default]
    Attribution,
    /// An audit (`/v1/audits`).
    Audit,
}

/// A finished job's result: an `AttributeResponse` or an `AuditResult`, by the job's kind.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum JobResult {
    Attribution(Box<AttributeResponse>),
    Audit(Box<AuditResult>),
}

impl JobResult {
    /// Sequences the work scored.
    fn sequences(&self) -> usize {
        match self {
            JobResult::Attribution(r) => r.stats.unique_sequences,
            JobResult::Audit(r) => r.stats.distinct_sequences,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: String,
    #[serde(default)]
    pub kind: JobKind,
    pub state: JobState,
    /// Sequences scored so far out of the total the request needs (0/0 until known).
    pub progress: Progress,
    /// RFC 3339, UTC.
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<JobResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

/// One job: its published snapshot (watched by SSE streams) and its cancel token.
pub struct JobEntry {
    pub cancel: CancelToken,
    tx: watch::Sender<Job>,
    finished: Mutex<Option<Instant>>,
}

impl JobEntry {
    pub fn snapshot(&self) -> Job {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Job> {
        self.tx.subscribe()
    }

    /// Moves a queued job to running (unless it was cancelled meanwhile).
    pub fn start(&self) -> bool {
        self.tx.send_if_modified(|j| {
            if j.state == JobState::Queued {
                j.state = JobState::Running;
                true
            } else {
                false
            }
        });
        self.state() == JobState::Running
    }

    pub fn progress(&self, p: Progress) {
        self.tx.send_if_modified(|j| {
            if j.state.is_finished() || j.progress == p {
                return false;
            }
            j.progress = p;
            true
        });
    }

    /// Sets a final state once; later calls (e.g. a run ending after a DELETE) change nothing.
    pub fn finish(&self, state: JobState, result: Option<JobResult>, error: Option<ErrorDetail>) -> bool {
        let changed = self.tx.send_if_modified(|j| {
            if j.state.is_finished() {
                return false;
            }
            j.state = state;
            j.finished_at = Some(rfc3339(SystemTime::now()));
            if let Some(r) = &result {
                let total = r.sequences().max(j.progress.total);
                j.progress = Progress { done: total, total };
            }
            j.result = result;
            j.error = error;
            true
        });
        if changed {
            *self.finished.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        }
        changed
    }

    pub fn state(&self) -> JobState {
        self.tx.borrow().state
    }

    fn finished_at(&self) -> Option<Instant> {
        *self.finished.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// All jobs by id. Finished jobs are dropped after `ttl`, and beyond `max_finished` the
/// oldest finished ones go first. Unfinished jobs are never dropped.
pub struct JobStore {
    jobs: Mutex<HashMap<String, Arc<JobEntry>>>,
    ttl: Duration,
    max_finished: usize,
}

impl JobStore {
    pub fn new(ttl: Duration, max_finished: usize) -> Self {
        JobStore {
            jobs: Mutex::new(HashMap::new()),
            ttl,
            max_finished,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<JobEntry>>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates a queued job, unless `max_unfinished` jobs are already queued or running.
    pub fn create(&self, kind: JobKind, max_unfinished: usize) -> Option<Arc<JobEntry>> {
        self.sweep();
        let mut jobs = self.lock();
        if jobs.values().filter(|j| !j.state().is_finished()).count() >= max_unfinished {
            return None;
        }
        let id = uuid::Uuid::new_v4().to_string();
        let job = Job {
            id: id.clone(),
            kind,
            state: JobState::Queued,
            progress: Progress { done: 0, total: 0 },
            created_at: rfc3339(SystemTime::now()),
            finished_at: None,
            result: None,
            error: None,
        };
        let entry = Arc::new(JobEntry {
            cancel: CancelToken::new(),
            tx: watch::Sender::new(job),
            finished: Mutex::new(None),
        });
        jobs.insert(id, entry.clone());
        Some(entry)
    }

    pub fn get(&self, id: &str) -> Option<Arc<JobEntry>> {
        self.lock().get(id).cloned()
    }

    /// Counts by state.
    pub fn counts(&self) -> [(JobState, usize); 5] {
        let mut c = [
            (JobState::Queued, 0),
            (JobState::Running, 0),
            (JobState::Done, 0),
            (JobState::Failed, 0),
            (JobState::Cancelled, 0),
        ];
        for j in self.lock().values() {
            let s = j.state();
            if let Some(slot) = c.iter_mut().find(|(k, _)| *k == s) {
                slot.1 += 1;
            }
        }
        c
    }

    /// Cancels every unfinished job (shutdown).
    pub fn cancel_all(&self) {
        for j in self.lock().values() {
            j.cancel.cancel();
            j.finish(
                JobState::Cancelled,
                None,
                Some(crate::error::Error::Cancelled.body().error),
            );
        }
    }

    /// Applies the retention rules.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut jobs = self.lock();
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
}

/// `2026-11-26T17:54:02.123Z`
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        let at = |s: u64| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(s));
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(1_795_715_642_123), "2026-11-26T17:54:02.123Z");
    }

    #[test]
    fn finish_happens_once() {
        let store = JobStore::new(Duration::from_secs(60), 10);
        let j = store.create(JobKind::Attribution, 10).unwrap();
        assert!(j.start());
        assert!(j.finish(JobState::Cancelled, None, None));
        assert!(!j.finish(JobState::Done, None, None));
        assert_eq!(j.state(), JobState::Cancelled);
        assert!(j.snapshot().finished_at.is_some());
        assert!(!j.start(), "a cancelled job never runs");
    }

    #[test]
    fn retention_by_count_and_time() {
        let store = JobStore::new(Duration::from_secs(3600), 2);
        let ids: Vec<String> = (0..4)
            .map(|_| {
                let j = store.create(JobKind::Attribution, 100).unwrap();
                j.finish(JobState::Done, None, None);
                std::thread::sleep(Duration::from_millis(2));
                j.snapshot().id
            })
            .collect();
        let open = store.create(JobKind::Attribution, 100).unwrap();
        store.sweep();
        assert!(store.get(&ids[0]).is_none() && store.get(&ids[1]).is_none());
        assert!(store.get(&ids[2]).is_some() && store.get(&ids[3]).is_some());
        assert!(store.get(&open.snapshot().id).is_some());

        let short = JobStore::new(Duration::from_millis(1), 100);
        let j = short.create(JobKind::Attribution, 100).unwrap();
        let open = short.create(JobKind::Attribution, 100).unwrap();
        j.finish(JobState::Failed, None, None);
        std::thread::sleep(Duration::from_millis(5));
        short.sweep();
        assert!(short.get(&j.snapshot().id).is_none());
        assert!(short.get(&open.snapshot().id).is_some(), "unfinished jobs stay");
    }

    #[test]
    fn unfinished_jobs_are_capped() {
        let store = JobStore::new(Duration::from_secs(60), 10);
        let a = store.create(JobKind::Attribution, 2).unwrap();
        let _b = store.create(JobKind::Attribution, 2).unwrap();
        assert!(store.create(JobKind::Attribution, 2).is_none());
        a.finish(JobState::Done, None, None);
        assert!(store.create(JobKind::Attribution, 2).is_some());
    }
}
