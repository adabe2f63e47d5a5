//! The jobs' vocabulary, as the store keeps it and the API shows it: a job's request, state,
//! result and how it ended, and the clock they are stamped with.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::audit::{self, AuditRequest, AuditResult};
use crate::error::ErrorDetail;
use crate::request::{AttributeRequest, AttributeResponse};
use crate::run::{Limits, Plan, Progress};
use crate::scorer::Scorer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum JobState {
    /// Waiting for a free run slot.
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    pub(crate) fn is_finished(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed | JobState::Cancelled)
    }

    pub(crate) const ALL: [JobState; 5] = [
        JobState::Queued,
        JobState::Running,
        JobState::Done,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub(crate) fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|j| j.as_str() == s)
    }

    pub(crate) fn as_str(self) -> &'static str {
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
pub(crate) enum JobKind {
    /// An attribute request (`/v1/jobs`).
    #[default]
    Attribution,
    /// An audit (`/v1/audits`).
    Audit,
}

/// What a job was asked to do, as the store keeps it (and as a replica that takes the job
/// over reads it back).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", content = "request", rename_all = "snake_case")]
pub(crate) enum JobRequest {
    Attribution(AttributeRequest),
    Audit(AuditRequest),
}

impl JobRequest {
    pub(crate) fn kind(&self) -> JobKind {
        match self {
            JobRequest::Attribution(_) => JobKind::Attribution,
            JobRequest::Audit(_) => JobKind::Audit,
        }
    }

    /// What the run would score, counted without scoring (the run's own checks first).
    pub(crate) fn plan(&self, scorer: &dyn Scorer, limits: &Limits) -> crate::Result<Plan> {
        match self {
            JobRequest::Attribution(r) => crate::run::plan(r, scorer, limits),
            JobRequest::Audit(r) => audit::plan(r, scorer, limits),
        }
    }
}

/// A finished job's result: an `AttributeResponse` or an `AuditResult`, by the job's kind.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum JobResult {
    Attribution(Box<AttributeResponse>),
    Audit(Box<AuditResult>),
}

impl JobResult {
    /// Sequences the work scored.
    pub(crate) fn sequences(&self) -> usize {
        match self {
            JobResult::Attribution(r) => r.stats.unique_sequences,
            JobResult::Audit(r) => r.stats.distinct_sequences,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct Job {
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

/// How a job ended.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Done(Box<JobResult>),
    Failed(ErrorDetail),
    Cancelled(ErrorDetail),
}

impl Outcome {
    pub(crate) fn state(&self) -> JobState {
        match self {
            Outcome::Done(_) => JobState::Done,
            Outcome::Failed(_) => JobState::Failed,
            Outcome::Cancelled(_) => JobState::Cancelled,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A fresh job snapshot.
pub(crate) fn new_job(id: String, kind: JobKind) -> Job {
    Job {
        id,
        kind,
        state: JobState::Queued,
        progress: Progress { done: 0, total: 0 },
        created_at: rfc3339(std::time::SystemTime::now()),
        finished_at: None,
        result: None,
        error: None,
    }
}

/// `2026-11-26T17:54:02.123Z`
pub(crate) fn rfc3339(t: SystemTime) -> String {
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
    use std::time::Duration;

    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        let at = |s: u64| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(s));
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(1_795_715_642_123), "2026-11-26T17:54:02.123Z");
    }
}
