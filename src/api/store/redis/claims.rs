//! Leases on claimed jobs: [`RedisClaim`], the job a replica runs. Its keeper writes progress,
//! notices a cancel from anywhere and renews the lease by heartbeats; shutdown hands the job
//! over (the entry goes back in line) so another replica continues it at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use futures::future::BoxFuture;
use futures::FutureExt;
use redis::Script;
use tokio::task::JoinHandle;

use super::{channel, job_key, persist, unavailable, Inner, TICK};
use crate::api::store::{now_ms, ClaimedJob, JobRequest, Outcome, StoreResult};
use crate::engine::CancelToken;
use crate::run::Progress;

static START: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local s = redis.call('HGET', KEYS[1], 'state')
if s ~= 'queued' and s ~= 'running' then return false end
redis.call('HSET', KEYS[1], 'state', 'running')
redis.call('HSETNX', KEYS[1], 'started_ms', ARGV[1])
if s == 'queued' then redis.call('PUBLISH', ARGV[2], 'running') end
return redis.call('HGET', KEYS[1], 'started_ms')",
    )
});

/// Records progress when it changed; answers the job's state ('gone' once expired).
static PROGRESS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local s = redis.call('HGET', KEYS[1], 'state')
if s ~= 'queued' and s ~= 'running' then return s or 'gone' end
if ARGV[1] ~= '' then
  local d = redis.call('HMGET', KEYS[1], 'done', 'total')
  if d[1] ~= ARGV[1] or d[2] ~= ARGV[2] then
    redis.call('HSET', KEYS[1], 'done', ARGV[1], 'total', ARGV[2])
    redis.call('PUBLISH', ARGV[3], 'progress')
  end
end
return s",
    )
});

/// A job this replica runs, leased from the `jobs` stream.
pub(super) struct RedisClaim {
    inner: Arc<Inner>,
    id: String,
    entry: String,
    request: JobRequest,
    cancel: CancelToken,
    started_ms: Mutex<Option<u64>>,
    /// Latest progress, written to Redis by the keeper.
    progress: Arc<Mutex<Option<Progress>>>,
    handed_over: Arc<AtomicBool>,
    lost: Arc<AtomicBool>,
    keeper: Mutex<Option<JoinHandle<()>>>,
}

impl RedisClaim {
    /// The job `id` claimed from the `jobs` stream entry `entry`; not started yet.
    pub(super) fn new(inner: Arc<Inner>, id: String, entry: String, request: JobRequest) -> Self {
        RedisClaim {
            inner,
            id,
            entry,
            request,
            cancel: CancelToken::new(),
            started_ms: Mutex::new(None),
            progress: Arc::new(Mutex::new(None)),
            handed_over: Arc::new(AtomicBool::new(false)),
            lost: Arc::new(AtomicBool::new(false)),
            keeper: Mutex::new(None),
        }
    }

    fn stop_keeper(&self) {
        if let Some(k) = self.keeper.lock().unwrap_or_else(|e| e.into_inner()).take() {
            k.abort();
            self.inner.running_here.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Every tick: writes progress, notices a cancel (or expiry) from anywhere; every third of
    /// a lease: renews the lease, and stops the local run if another replica holds it now.
    fn spawn_keeper(&self) -> JoinHandle<()> {
        let (inner, id, entry) = (self.inner.clone(), self.id.clone(), self.entry.clone());
        let (cancel, progress, lost) = (self.cancel.clone(), self.progress.clone(), self.lost.clone());
        tokio::spawn(async move {
            let beat = (inner.settings.lease / 3).max(TICK);
            let mut last_beat = Instant::now();
            loop {
                tokio::time::sleep(TICK).await;
                let p = *progress.lock().unwrap_or_else(|e| e.into_inner());
                let (done, total) = p.map_or((String::new(), String::new()), |p| {
                    (p.done.to_string(), p.total.to_string())
                });
                let state: Result<String, _> = PROGRESS
                    .key(job_key(&id))
                    .arg(done)
                    .arg(total)
                    .arg(channel(&id))
                    .invoke_async(&mut inner.con())
                    .await;
                if let Ok(s) = state {
                    if s != "queued" && s != "running" {
                        tracing::info!(job = %id, state = %s, "the job ended elsewhere; stopping its run here");
                        cancel.cancel();
                    }
                }
                if last_beat.elapsed() >= beat {
                    match inner.heartbeat("jobs", &entry).await {
                        Ok(true) => last_beat = Instant::now(),
                        Ok(false) => {
                            tracing::warn!(job = %id, "another replica took this job over; stopping here");
                            lost.store(true, Ordering::SeqCst);
                            cancel.cancel();
                        }
                        Err(_) => {}
                    }
                }
            }
        })
    }
}

impl ClaimedJob for RedisClaim {
    fn id(&self) -> &str {
        &self.id
    }
    fn request(&self) -> &JobRequest {
        &self.request
    }
    fn cancel_token(&self) -> &CancelToken {
        &self.cancel
    }
    fn started_at_ms(&self) -> Option<u64> {
        *self.started_ms.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn start(&self) -> BoxFuture<'_, StoreResult<bool>> {
        async move {
            let started: Option<u64> = START
                .key(job_key(&self.id))
                .arg(now_ms())
                .arg(channel(&self.id))
                .invoke_async(&mut self.inner.con())
                .await
                .map_err(unavailable)?;
            let Some(ms) = started else { return Ok(false) };
            *self.started_ms.lock().unwrap_or_else(|e| e.into_inner()) = Some(ms);
            self.inner.running_here.fetch_add(1, Ordering::Relaxed);
            *self.keeper.lock().unwrap_or_else(|e| e.into_inner()) = Some(self.spawn_keeper());
            Ok(true)
        }
        .boxed()
    }

    fn progress(&self, p: Progress) {
        *self.progress.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
    }

    fn finish(&self, outcome: Outcome) -> BoxFuture<'_, ()> {
        async move {
            self.stop_keeper();
            let i = &self.inner;
            let lease = i.settings.lease;
            if persist("recording the job's end", || i.finish(&self.id, &outcome), lease)
                .await
                .is_some()
            {
                persist("acknowledging the job", || i.ack("jobs", &self.entry), lease).await;
            }
        }
        .boxed()
    }

    fn hand_over(&self) {
        self.handed_over.store(true, Ordering::SeqCst);
        self.cancel.cancel();
    }

    fn let_go(&self) -> bool {
        self.handed_over.load(Ordering::SeqCst) || self.lost.load(Ordering::SeqCst)
    }

    fn release(&self) -> BoxFuture<'_, ()> {
        async move {
            self.stop_keeper();
            if self.handed_over.load(Ordering::SeqCst) {
                let i = &self.inner;
                let lease = i.settings.lease;
                persist("handing the job over", || i.release("jobs", &self.entry), lease).await;
                tracing::info!(job = %self.id, "handed the job over to another replica");
            }
        }
        .boxed()
    }
}
