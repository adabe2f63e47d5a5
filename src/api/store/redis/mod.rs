//! Jobs shared by replicas through Redis (`--redis-url`).
//!
//! Keys (prefix `llm-attr:`):
//! - `job:{id}`: hash with the request, state, progress, result and error; expires `--job-ttl`
//!   after the job ends.
//! - `jobs`: stream of job ids waiting for a worker, consumer group `workers`. A replica
//!   claims an entry (XREADGROUP) when it has a free run slot; the entry stays pending under
//!   its name while it runs, and heartbeats (XCLAIM to itself) keep its idle time under
//!   `--lease-seconds`. When a replica dies its entries go idle and another takes them over
//!   (XAUTOCLAIM) and runs the job again from the start: the score cache makes the part
//!   already scored cheap, and the result is the same.
//! - `chunks`: stream of a big job's sequences in chunks (fan-out), same group and leases;
//!   every replica's chunk workers score them, and the job's owner merges them by index.
//!   `chunk:{run}:{k}` holds a chunk's scores, `chunks-done:{run}` lists the chunks ready.
//! - `unfinished`: count of jobs queued or running (`--max-pending-jobs`).
//! - `score:{digest}:{ids}`: the shared score cache.
//! - channel `events:{id}`: a job changed (progress, state), for SSE streams on every replica.
//!
//! This file is the store itself (settings, connection, job hashes, create/get/cancel/watch and
//! the claim line); `claims.rs` holds the leases on claimed jobs, `scores.rs` the shared score
//! cache and `fanout.rs` the fan-out scorer and the chunk workers.

mod claims;
mod fanout;
mod scores;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::{RedisError, Script};
use tokio::sync::broadcast;

use super::job::{rfc3339, Job, JobRequest, JobState};
use super::{new_job, ClaimedJob, JobStore, Outcome, Replicas, StoreError, StoreResult};
use crate::api::Ready;
use crate::error::{Error, ErrorDetail};
use crate::run::Progress;
use crate::score_cache::SharedScores;
use crate::scorer::Scorer;
use claims::RedisClaim;
use fanout::{chunk_worker, FanOut};

const PREFIX: &str = "llm-attr:";
const GROUP: &str = "workers";
/// How often a running job's progress and state are synchronised.
const TICK: Duration = Duration::from_millis(250);
/// How often an idle worker looks for work.
const IDLE_POLL: Duration = Duration::from_millis(50);

fn key(k: &str) -> String {
    format!("{PREFIX}{k}")
}
fn job_key(id: &str) -> String {
    key(&format!("job:{id}"))
}
fn channel(id: &str) -> String {
    key(&format!("events:{id}"))
}

/// Settings of a Redis store.
#[derive(Debug, Clone)]
pub(crate) struct RedisSettings {
    pub url: String,
    /// A claimed job or chunk whose worker sent no heartbeat for this long is taken over.
    pub lease: Duration,
    /// Finished jobs, chunk results and cached scores expire after this long.
    pub ttl: Duration,
    pub max_pending: usize,
    /// Sequences per fan-out chunk; a scoring call of at least two chunks is fanned out
    /// (0: never).
    pub chunk_size: usize,
    /// Chunks this replica scores at once.
    pub chunk_workers: usize,
    /// How long a chunk waits for room in a full scoring queue.
    pub queue_wait: Duration,
}

pub(crate) struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    con: ConnectionManager,
    settings: RedisSettings,
    consumer: String,
    up: AtomicBool,
    stopping: AtomicBool,
    /// Ids of jobs with news (from the pub/sub listener).
    news: broadcast::Sender<String>,
    running_here: AtomicUsize,
    rt: tokio::runtime::Handle,
}

fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(format!("Redis: {}", e.kind_str()))
}

trait KindStr {
    fn kind_str(&self) -> String;
}

impl KindStr for RedisError {
    fn kind_str(&self) -> String {
        if self.is_io_error() || self.is_connection_dropped() || self.is_timeout() {
            "not reachable".into()
        } else {
            self.to_string()
        }
    }
}

static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = tonumber(redis.call('GET', KEYS[2]) or '0')
if n >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'state', 'queued', 'done', 0, 'total', 0, 'created_at', ARGV[2], 'request', ARGV[3], 'kind', ARGV[5])
redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[3], '*', 'job', ARGV[4])
return 1",
    )
});

/// Sets the end state once: only an unfinished job changes.
static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local s = redis.call('HGET', KEYS[1], 'state')
if s ~= 'queued' and s ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'finished_at', ARGV[2], 'result', ARGV[3], 'error', ARGV[4])
if ARGV[1] == 'done' then
  local t = math.max(tonumber(redis.call('HGET', KEYS[1], 'total') or '0'), tonumber(ARGV[7]))
  redis.call('HSET', KEYS[1], 'done', t, 'total', t)
end
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('DECR', KEYS[2])
redis.call('PUBLISH', ARGV[6], ARGV[1])
return 1",
    )
});

/// Renews a lease: resets the entry's idle time, only while this consumer still holds it.
static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1",
    )
});

/// Gives an entry back (shutdown): acknowledged and added again, so a waiting replica reads
/// it at once; only while this consumer still holds it.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
local e = redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
if #e > 0 then redis.call('XADD', KEYS[1], '*', unpack(e[1][2])) end
return 1",
    )
});

impl RedisStore {
    /// Connects lazily: the store answers 503 until Redis is reachable, then recovers by
    /// itself after any outage.
    pub(crate) fn connect(settings: RedisSettings) -> anyhow::Result<RedisStore> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| anyhow::anyhow!("--redis-url {}: {e}", redact(&settings.url)))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(3)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let con = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| anyhow::anyhow!("cannot set up the Redis connection: {e}"))?;
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "llm-attr".into());
        let consumer = format!(
            "{host}-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let inner = Arc::new(Inner {
            client,
            con,
            settings,
            consumer,
            up: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            news: broadcast::channel(1024).0,
            running_here: AtomicUsize::new(0),
            rt: tokio::runtime::Handle::current(),
        });
        tokio::spawn(watch_health(Arc::downgrade(&inner)));
        tokio::spawn(listen(Arc::downgrade(&inner)));
        tracing::info!(consumer = %inner.consumer, "jobs are kept in Redis");
        Ok(RedisStore { inner })
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_string(),
    }
}

/// Pings Redis twice a second: `available()` follows, and the consumer groups are made again
/// after Redis comes back empty.
async fn watch_health(inner: Weak<Inner>) {
    loop {
        let Some(i) = inner.upgrade() else { break };
        let mut con = i.con.clone();
        let ok = tokio::time::timeout(
            Duration::from_secs(1),
            redis::cmd("PING").query_async::<String>(&mut con),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        let ok = ok && i.ensure_groups().await.is_ok();
        let was = i.up.swap(ok, Ordering::SeqCst);
        if ok != was {
            if ok {
                tracing::info!("Redis is reachable");
            } else {
                tracing::warn!("Redis is not reachable; job requests get 503 until it is back");
            }
        }
        drop(i);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Forwards job change notifications to this replica's SSE streams.
async fn listen(inner: Weak<Inner>) {
    loop {
        let Some(i) = inner.upgrade() else { break };
        let (client, news) = (i.client.clone(), i.news.clone());
        drop(i);
        if let Ok(mut ps) = client.get_async_pubsub().await {
            if ps.psubscribe(key("events:*")).await.is_ok() {
                let mut messages = ps.on_message();
                let prefix = key("events:");
                while let Some(m) = messages.next().await {
                    if let Some(id) = m.get_channel_name().strip_prefix(&prefix) {
                        let _ = news.send(id.to_string());
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

impl Inner {
    fn con(&self) -> ConnectionManager {
        self.con.clone()
    }

    fn lease_ms(&self) -> u64 {
        self.settings.lease.as_millis().max(1) as u64
    }

    fn ttl_secs(&self) -> u64 {
        self.settings.ttl.as_secs().max(1)
    }

    async fn ensure_groups(&self) -> Result<(), RedisError> {
        for stream in ["jobs", "chunks"] {
            let r: Result<(), RedisError> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(key(stream))
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut self.con())
                .await;
            match r {
                Err(e) if e.code() != Some("BUSYGROUP") => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// The next entry of `stream` for this consumer: one whose lease ran out first, else a
    /// new one.
    async fn take(&self, stream: &str) -> Result<Option<StreamId>, RedisError> {
        let stream = key(stream);
        let mut con = self.con();
        let stale: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(self.lease_ms())
            .arg("0-0")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut con)
            .await?;
        if let Some(e) = stale.claimed.into_iter().next() {
            tracing::info!(stream = %stream, entry = %e.id, "taking over work whose lease ran out");
            return Ok(Some(e));
        }
        let fresh: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(1)
            .arg("STREAMS")
            .arg(&stream)
            .arg(">")
            .query_async(&mut con)
            .await?;
        Ok(fresh
            .and_then(|r| r.keys.into_iter().next())
            .and_then(|k| k.ids.into_iter().next()))
    }

    async fn ack(&self, stream: &str, entry: &str) -> Result<(), RedisError> {
        redis::pipe()
            .atomic()
            .cmd("XACK")
            .arg(key(stream))
            .arg(GROUP)
            .arg(entry)
            .ignore()
            .cmd("XDEL")
            .arg(key(stream))
            .arg(entry)
            .ignore()
            .query_async(&mut self.con())
            .await
    }

    /// Keeps the lease of `entry`; false once another consumer holds it.
    async fn heartbeat(&self, stream: &str, entry: &str) -> Result<bool, RedisError> {
        Ok(self.on_entry(&HEARTBEAT, stream, entry).await? == 1)
    }

    async fn release(&self, stream: &str, entry: &str) -> Result<(), RedisError> {
        self.on_entry(&RELEASE, stream, entry).await.map(drop)
    }

    /// Runs a lease script on this consumer's `entry` of `stream`.
    async fn on_entry(&self, script: &Script, stream: &str, entry: &str) -> Result<i64, RedisError> {
        script
            .key(key(stream))
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(entry)
            .invoke_async(&mut self.con())
            .await
    }

    async fn get(&self, id: &str) -> StoreResult<Option<Job>> {
        let h: HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
            .arg(job_key(id))
            .query_async(&mut self.con())
            .await
            .map_err(unavailable)?;
        Ok(parse_job(id, &h))
    }

    async fn state(&self, id: &str) -> Result<Option<JobState>, RedisError> {
        let s: Option<String> = redis::cmd("HGET")
            .arg(job_key(id))
            .arg("state")
            .query_async(&mut self.con())
            .await?;
        Ok(s.as_deref().and_then(JobState::parse))
    }

    async fn finish(&self, id: &str, outcome: &Outcome) -> Result<bool, RedisError> {
        let (result, error, unique) = match outcome {
            Outcome::Done(r) => (
                serde_json::to_string(r).unwrap_or_default(),
                String::new(),
                r.sequences(),
            ),
            Outcome::Failed(e) | Outcome::Cancelled(e) => {
                (String::new(), serde_json::to_string(e).unwrap_or_default(), 0)
            }
        };
        let changed: i64 = FINISH
            .key(job_key(id))
            .key(key("unfinished"))
            .arg(outcome.state().as_str())
            .arg(rfc3339(SystemTime::now()))
            .arg(result)
            .arg(error)
            .arg(self.ttl_secs())
            .arg(channel(id))
            .arg(unique)
            .invoke_async(&mut self.con())
            .await?;
        Ok(changed == 1)
    }
}

/// A job from its hash (None: no such job, or it expired).
fn parse_job(id: &str, h: &HashMap<String, Vec<u8>>) -> Option<Job> {
    let text = |k: &str| {
        h.get(k)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .filter(|s| !s.is_empty())
    };
    let num = |k: &str| text(k).and_then(|s| s.parse().ok()).unwrap_or(0);
    let state = JobState::parse(&text("state")?)?;
    let kind = text("kind")
        .and_then(|k| serde_json::from_str(&k).ok())
        .unwrap_or_default();
    let mut job = new_job(id.to_string(), kind);
    job.state = state;
    job.progress = Progress {
        done: num("done"),
        total: num("total"),
    };
    job.created_at = text("created_at").unwrap_or_default();
    job.finished_at = text("finished_at");
    job.result = text("result").and_then(|r| serde_json::from_str(&r).ok());
    job.error = text("error").and_then(|e| serde_json::from_str(&e).ok());
    Some(job)
}

/// Retries `f` while Redis is away, for at most one lease: a run's end must be recorded.
async fn persist<T, F: std::future::Future<Output = Result<T, RedisError>>>(
    what: &str,
    mut f: impl FnMut() -> F,
    lease: Duration,
) -> Option<T> {
    let until = Instant::now() + lease;
    loop {
        match f().await {
            Ok(v) => return Some(v),
            Err(e) if Instant::now() < until => {
                tracing::debug!("{what}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                tracing::warn!("{what}: {e}; giving up (the lease runs out and a replica takes it)");
                return None;
            }
        }
    }
}

impl JobStore for RedisStore {
    fn create<'a>(&'a self, request: &'a JobRequest) -> BoxFuture<'a, StoreResult<Job>> {
        async move {
            let i = &self.inner;
            let job = new_job(uuid::Uuid::new_v4().to_string(), request.kind());
            let kind = serde_json::to_string(&job.kind).unwrap_or_default();
            let request = serde_json::to_string(request)
                .map_err(|e| StoreError::Unavailable(format!("cannot encode the request: {e}")))?;
            let created: i64 = CREATE
                .key(job_key(&job.id))
                .key(key("unfinished"))
                .key(key("jobs"))
                .arg(i.settings.max_pending)
                .arg(&job.created_at)
                .arg(request)
                .arg(&job.id)
                .arg(kind)
                .invoke_async(&mut i.con())
                .await
                .map_err(unavailable)?;
            if created == 0 {
                return Err(StoreError::Full(i.settings.max_pending));
            }
            Ok(job)
        }
        .boxed()
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<Job>>> {
        self.inner.get(id).boxed()
    }

    fn cancel<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<Job>>> {
        async move {
            let outcome = Outcome::Cancelled(Error::Cancelled.body().error);
            self.inner.finish(id, &outcome).await.map_err(unavailable)?;
            self.inner.get(id).await
        }
        .boxed()
    }

    fn watch<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<BoxStream<'static, Job>>>> {
        async move {
            let news = self.inner.news.subscribe();
            let Some(first) = self.inner.get(id).await? else {
                return Ok(None);
            };
            let inner = self.inner.clone();
            let id = id.to_string();
            let s = futures::stream::unfold(
                (Some(first), None::<(JobState, Progress)>, news),
                move |(first, mut last, mut news)| {
                    let (inner, id) = (inner.clone(), id.clone());
                    async move {
                        if let Some(j) = first {
                            let seen = Some((j.state, j.progress));
                            return Some((j, (None, seen, news)));
                        }
                        loop {
                            if last.is_some_and(|(s, _)| s.is_finished()) {
                                return None;
                            }
                            // Pub/sub may drop a message (e.g. while Redis restarts): look
                            // again at least every second.
                            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                                loop {
                                    match news.recv().await {
                                        Ok(n) if n == id => break,
                                        Ok(_) => {}
                                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                                        Err(broadcast::error::RecvError::Closed) => {
                                            std::future::pending::<()>().await
                                        }
                                    }
                                }
                            })
                            .await;
                            match inner.get(&id).await {
                                Ok(Some(j)) if Some((j.state, j.progress)) != last => {
                                    last = Some((j.state, j.progress));
                                    return Some((j, (None, last, news)));
                                }
                                Ok(None) => return None,
                                _ => {}
                            }
                        }
                    }
                },
            );
            Ok(Some(s.boxed()))
        }
        .boxed()
    }

    fn claim(&self) -> BoxFuture<'_, StoreResult<Option<Box<dyn ClaimedJob>>>> {
        async move {
            let i = &self.inner;
            if i.stopping.load(Ordering::SeqCst) {
                return Ok(None);
            }
            let Some(entry) = i.take("jobs").await.map_err(unavailable)? else {
                return Ok(None);
            };
            let id: String = entry.get("job").unwrap_or_default();
            let request: Option<String> = redis::cmd("HGET")
                .arg(job_key(&id))
                .arg("request")
                .query_async(&mut i.con())
                .await
                .map_err(unavailable)?;
            let Some(request) = request.and_then(|r| serde_json::from_str::<JobRequest>(&r).ok()) else {
                // Expired or unreadable: nothing to run.
                i.ack("jobs", &entry.id).await.map_err(unavailable)?;
                return Ok(None);
            };
            Ok(Some(
                Box::new(RedisClaim::new(i.clone(), id, entry.id, request)) as Box<dyn ClaimedJob>
            ))
        }
        .boxed()
    }

    fn work_waiting(&self, max: Duration) -> BoxFuture<'_, ()> {
        tokio::time::sleep(max.min(IDLE_POLL * 2)).boxed()
    }

    fn counts(&self) -> Vec<(JobState, usize)> {
        vec![(JobState::Running, self.inner.running_here.load(Ordering::Relaxed))]
    }

    fn available(&self) -> bool {
        self.inner.up.load(Ordering::SeqCst)
    }

    fn shares_work(&self) -> bool {
        true
    }

    fn cancel_all(&self, _error: ErrorDetail) {
        // Never: another replica continues what this one leaves.
    }

    fn stop(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
    }
}

impl Replicas for RedisStore {
    fn shared_scores(&self) -> Arc<dyn SharedScores> {
        self.inner.clone()
    }

    fn start(&self, ready: &Arc<Ready>) {
        for _ in 0..self.inner.settings.chunk_workers.max(1) {
            tokio::spawn(chunk_worker(self.inner.clone(), ready.clone()));
        }
    }

    fn job_scorer(&self, job: &dyn ClaimedJob, inner: Box<dyn Scorer>) -> Box<dyn Scorer> {
        Box::new(FanOut::new(inner, self.inner.clone(), job))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(redact("redis://:secret@host:6379/0"), "redis://***@host:6379/0");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }
}
