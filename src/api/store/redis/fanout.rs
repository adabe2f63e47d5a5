//! The fan-out: [`FanOut`] cuts a job's large scoring call into chunks on the `chunks`
//! stream, every replica's [`chunk_worker`]s score them ([`score_chunk`]), and the job's owner
//! merges the results by index. Also the chunk result encoding.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::streams::StreamId;
use redis::RedisError;

use super::{key, persist, Inner, GROUP, IDLE_POLL, TICK};
use crate::api::chain::{self, Chain};
use crate::api::store::{ClaimedJob, JobState};
use crate::api::Ready;
use crate::engine::CancelToken;
use crate::error::Error;
use crate::model::{GradientJob, ScoreItem};
use crate::scorer::{Scorer, TokenWork};

/// A chunk's scores, and the tokens its replica computed and reused for them (`None` from a
/// replica that does not count them, or one from before they were sent).
type ChunkResult = Result<(Vec<Vec<f32>>, Option<TokenWork>), Error>;

/// Encodes a chunk's result: 2, the tokens computed and reused (u64 each), then per item its
/// length and f32s; or 1 then an error message. (0 is the same without the tokens.)
fn encode_chunk(r: &ChunkResult) -> Vec<u8> {
    match r {
        Ok((scores, work)) => {
            let mut out = match work {
                Some(w) => [&[2u8][..], &w.computed.to_le_bytes(), &w.reused.to_le_bytes()].concat(),
                None => vec![0u8],
            };
            for s in scores {
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend(crate::score_cache::encode_scores(s));
            }
            out
        }
        Err(e) => [&[1u8][..], e.to_string().as_bytes()].concat(),
    }
}

fn decode_chunk(b: &[u8]) -> ChunkResult {
    let bad = || Error::Internal("a fan-out chunk result is malformed".into());
    let u64_at = |b: &[u8], at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
    };
    let (work, mut rest) = match b.split_first() {
        Some((0, rest)) => (None, rest),
        Some((2, rest)) => {
            let work = TokenWork {
                computed: u64_at(rest, 0).ok_or_else(bad)?,
                reused: u64_at(rest, 8).ok_or_else(bad)?,
            };
            (Some(work), &rest[16..])
        }
        Some((1, msg)) => {
            return Err(Error::Internal(format!(
                "a replica failed to score a chunk: {}",
                String::from_utf8_lossy(msg)
            )))
        }
        _ => return Err(bad()),
    };
    let mut out = Vec::new();
    while !rest.is_empty() {
        let n = u32::from_le_bytes(rest.get(..4).ok_or_else(bad)?.try_into().map_err(|_| bad())?) as usize;
        let body = rest.get(4..4 + 4 * n).ok_or_else(bad)?;
        out.push(crate::score_cache::decode_scores(body).ok_or_else(bad)?);
        rest = &rest[4 + 4 * n..];
    }
    Ok((out, work))
}

/// A job's scorer that splits big calls into chunks on the `chunks` stream, so every
/// replica's chunk workers (this one's too) score them; the scores come back by index, so
/// the merged result is the one a single replica computes.
pub(super) struct FanOut {
    inner: Box<dyn Scorer>,
    store: Arc<Inner>,
    job: String,
    cancel: CancelToken,
    /// Tokens the chunks' replicas computed and reused for this job (added to `inner`'s).
    computed: AtomicU64,
    reused: AtomicU64,
}

impl Scorer for FanOut {
    crate::scorer_facts_from!(inner, own tokens);

    /// The tokens scored here and those the chunks' replicas report.
    fn tokens(&self) -> Option<TokenWork> {
        let own = self.inner.tokens()?;
        Some(TokenWork {
            computed: own.computed + self.computed.load(Ordering::Relaxed),
            reused: own.reused + self.reused.load(Ordering::Relaxed),
        })
    }

    fn score(
        &self,
        items: Vec<ScoreItem>,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> crate::Result<Vec<Vec<f32>>> {
        let size = self.store.settings.chunk_size;
        if size == 0 || items.len() < 2 * size {
            return self.inner.score(items, progress);
        }
        self.store
            .rt
            .clone()
            .block_on(self.fan_out(&items, size, progress))
    }

    fn generate(&self, prompt: &[u32], max_new_tokens: usize) -> crate::Result<Vec<u32>> {
        self.inner.generate(prompt, max_new_tokens)
    }

    fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled() || self.inner.is_cancelled()
    }

    fn gradients(
        &self,
        job: GradientJob,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> crate::Result<Vec<Vec<f64>>> {
        self.inner.gradients(job, progress)
    }
}

impl FanOut {
    /// The fan-out of `job`'s scoring calls around `inner` (which scores the small ones).
    pub(super) fn new(inner: Box<dyn Scorer>, store: Arc<Inner>, job: &dyn ClaimedJob) -> Self {
        FanOut {
            inner,
            store,
            job: job.id().to_string(),
            cancel: job.cancel_token().clone(),
            computed: AtomicU64::new(0),
            reused: AtomicU64::new(0),
        }
    }

    /// Counts a chunk's tokens: as its replica reports them, or all its input tokens as
    /// computed when it does not.
    fn count(&self, chunk: &[ScoreItem], work: Option<TokenWork>) {
        let work = work.unwrap_or_else(|| TokenWork {
            computed: chunk.iter().map(|i| i.input_len() as u64).sum(),
            reused: 0,
        });
        self.computed.fetch_add(work.computed, Ordering::Relaxed);
        self.reused.fetch_add(work.reused, Ordering::Relaxed);
    }

    async fn publish(&self, run: &str, k: usize, items: &[ScoreItem]) -> Result<String, RedisError> {
        let pairs: Vec<(&[u32], &[u32])> = items.iter().map(|i| (&i.prompt[..], &i.target[..])).collect();
        redis::cmd("XADD")
            .arg(key("chunks"))
            .arg("*")
            .arg("job")
            .arg(&self.job)
            .arg("run")
            .arg(run)
            .arg("k")
            .arg(k)
            .arg("items")
            .arg(serde_json::to_string(&pairs).unwrap_or_default())
            .query_async(&mut self.store.con())
            .await
    }

    async fn fan_out(
        &self,
        items: &[ScoreItem],
        size: usize,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> crate::Result<Vec<Vec<f32>>> {
        let lost = |e: RedisError| Error::Internal(format!("the job store failed while fanning out: {e}"));
        let run = uuid::Uuid::new_v4().simple().to_string();
        let chunks: Vec<&[ScoreItem]> = items.chunks(size).collect();
        let mut entries = Vec::with_capacity(chunks.len());
        for (k, c) in chunks.iter().enumerate() {
            entries.push(self.publish(&run, k, c).await.map_err(lost)?);
        }
        let result_key = |k: usize| key(&format!("chunk:{run}:{k}"));
        let done_key = key(&format!("chunks-done:{run}"));
        let mut out: Vec<Option<Vec<Vec<f32>>>> = vec![None; chunks.len()];
        let (mut got, mut scored) = (0, 0);
        let mut last_news = Instant::now();
        let mut failing_since: Option<Instant> = None;
        let outcome = loop {
            if self.cancel.is_cancelled() {
                break Err(Error::Cancelled);
            }
            match self.collect(&done_key, &result_key, out.len()).await {
                Ok(news) => {
                    failing_since = None;
                    let mut failed = None;
                    for (k, r) in news {
                        if out[k].is_some() {
                            continue;
                        }
                        match r {
                            Ok((scores, work)) => {
                                self.count(chunks[k], work);
                                out[k] = Some(scores);
                                got += 1;
                                scored += chunks[k].len();
                                last_news = Instant::now();
                            }
                            Err(e) => failed = Some(e),
                        }
                    }
                    if let Some(e) = failed {
                        break Err(e);
                    }
                    if got > 0 {
                        progress(scored, items.len());
                    }
                }
                Err(e) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > self.store.settings.lease {
                        break Err(lost(e));
                    }
                }
            }
            if got == chunks.len() {
                break Ok(());
            }
            if last_news.elapsed() > Duration::from_secs(1) {
                last_news = Instant::now();
                let missing: Vec<usize> = (0..chunks.len()).filter(|&k| out[k].is_none()).collect();
                self.republish_lost(&run, &chunks, &missing, &mut entries).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.forget(&done_key, (0..chunks.len()).map(result_key)).await;
        outcome?;
        Ok(out.into_iter().flatten().flatten().collect())
    }

    /// Publishes again each missing chunk whose entry vanished without a result (Redis
    /// restarted empty).
    async fn republish_lost(
        &self,
        run: &str,
        chunks: &[&[ScoreItem]],
        missing: &[usize],
        entries: &mut [String],
    ) {
        for &k in missing {
            let result_key = key(&format!("chunk:{run}:{k}"));
            if let Ok(true) = self.vanished(&entries[k], &result_key).await {
                tracing::info!(job = %self.job, chunk = k, "a fan-out chunk was lost; publishing it again");
                if let Ok(e) = self.publish(run, k, chunks[k]).await {
                    entries[k] = e;
                }
            }
        }
    }

    /// Deletes a finished run's result keys (best effort: they expire anyway).
    async fn forget(&self, done_key: &str, result_keys: impl Iterator<Item = String>) {
        let mut cleanup = redis::pipe();
        cleanup.cmd("DEL").arg(done_key).ignore();
        for k in result_keys {
            cleanup.cmd("DEL").arg(k).ignore();
        }
        let _ = cleanup.query_async::<()>(&mut self.store.con()).await;
    }

    /// The chunks finished since the last look, by index.
    async fn collect(
        &self,
        done_key: &str,
        result_key: &impl Fn(usize) -> String,
        n: usize,
    ) -> Result<Vec<(usize, ChunkResult)>, RedisError> {
        let ready: Option<Vec<usize>> = redis::cmd("LPOP")
            .arg(done_key)
            .arg(64)
            .query_async(&mut self.store.con())
            .await?;
        let mut news = Vec::new();
        for k in ready.unwrap_or_default().into_iter().filter(|&k| k < n) {
            let bytes: Option<Vec<u8>> = redis::cmd("GET")
                .arg(result_key(k))
                .query_async(&mut self.store.con())
                .await?;
            if let Some(b) = bytes {
                news.push((k, decode_chunk(&b)));
            }
        }
        Ok(news)
    }

    async fn vanished(&self, entry: &str, result_key: &str) -> Result<bool, RedisError> {
        let left: Vec<redis::Value> = redis::cmd("XRANGE")
            .arg(key("chunks"))
            .arg(entry)
            .arg(entry)
            .query_async(&mut self.store.con())
            .await?;
        let has_result: bool = redis::cmd("EXISTS")
            .arg(result_key)
            .query_async(&mut self.store.con())
            .await?;
        Ok(left.is_empty() && !has_result)
    }
}

/// Scores chunks of any replica's fanned-out jobs.
pub(super) async fn chunk_worker(inner: Arc<Inner>, ready: Arc<Ready>) {
    while !inner.stopping.load(Ordering::SeqCst) {
        match inner.take("chunks").await {
            Ok(Some(entry)) => score_chunk(&inner, &ready, entry).await,
            Ok(None) => tokio::time::sleep(IDLE_POLL).await,
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

async fn score_chunk(inner: &Arc<Inner>, ready: &Arc<Ready>, entry: StreamId) {
    let job: String = entry.get("job").unwrap_or_default();
    let run: String = entry.get("run").unwrap_or_default();
    let k: usize = entry.get("k").unwrap_or(usize::MAX);
    let items: Option<Vec<(Vec<u32>, Vec<u32>)>> = entry
        .get::<String>("items")
        .and_then(|s| serde_json::from_str(&s).ok());
    let running = matches!(inner.state(&job).await, Ok(Some(JobState::Running)));
    let (Some(items), true) = (items, running) else {
        // Its job ended (or the entry is malformed): nothing to do.
        let _ = inner.ack("chunks", &entry.id).await;
        return;
    };
    let cancel = CancelToken::new();
    let lost = Arc::new(AtomicBool::new(false));
    let keeper = keep_chunk(inner, entry.id.clone(), job, cancel.clone(), lost.clone());
    let items: Vec<ScoreItem> = items
        .into_iter()
        .map(|(prompt, target)| ScoreItem { prompt, target })
        .collect();
    let (r, c, wait) = (ready.clone(), cancel.clone(), inner.settings.queue_wait);
    let scored = tokio::task::spawn_blocking(move || {
        let scorer = chain::scorer(&r, &c, Chain::Chunk { patience: wait });
        let before = scorer.tokens();
        let scores = scorer.score(items, &|_, _| {})?;
        let work = scorer
            .tokens()
            .zip(before)
            .map(|(after, before)| after.since(before));
        Ok((scores, work))
    })
    .await
    .unwrap_or_else(|e| Err(Error::Internal(format!("the chunk task failed: {e}"))));
    keeper.abort();
    if lost.load(Ordering::SeqCst) {
        return;
    }
    if matches!(scored, Err(Error::Cancelled)) {
        if inner.stopping.load(Ordering::SeqCst) {
            let _ = inner.release("chunks", &entry.id).await;
        } else {
            let _ = inner.ack("chunks", &entry.id).await;
        }
        return;
    }
    deliver(inner, &run, k, &entry.id, &scored).await;
}

/// Renews a chunk's claim while it is scored, and cancels the scoring when the replica stops,
/// the job ends, or another replica took the chunk over (`lost`).
fn keep_chunk(
    inner: &Arc<Inner>,
    entry: String,
    job: String,
    cancel: CancelToken,
    lost: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let inner = inner.clone();
    tokio::spawn(async move {
        let beat = (inner.settings.lease / 3).max(TICK);
        let mut last_beat = Instant::now();
        loop {
            tokio::time::sleep(TICK).await;
            if inner.stopping.load(Ordering::SeqCst) {
                cancel.cancel();
            }
            if let Ok(s) = inner.state(&job).await {
                if s != Some(JobState::Running) {
                    cancel.cancel();
                }
            }
            if last_beat.elapsed() >= beat {
                match inner.heartbeat("chunks", &entry).await {
                    Ok(true) => last_beat = Instant::now(),
                    Ok(false) => {
                        lost.store(true, Ordering::SeqCst);
                        cancel.cancel();
                    }
                    Err(_) => {}
                }
            }
        }
    })
}

/// Stores chunk `k`'s scores for its run, tells the run, and retires the stream entry, in one
/// transaction that is retried until the store answers.
async fn deliver(inner: &Arc<Inner>, run: &str, k: usize, entry_id: &str, scored: &ChunkResult) {
    let done_key = key(&format!("chunks-done:{run}"));
    let ttl = inner.ttl_secs();
    let result = encode_chunk(scored);
    let lease = inner.settings.lease;
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("SET")
        .arg(key(&format!("chunk:{run}:{k}")))
        .arg(&result)
        .arg("EX")
        .arg(ttl)
        .ignore()
        .cmd("RPUSH")
        .arg(&done_key)
        .arg(k)
        .ignore()
        .cmd("EXPIRE")
        .arg(&done_key)
        .arg(ttl)
        .ignore()
        .cmd("XACK")
        .arg(key("chunks"))
        .arg(GROUP)
        .arg(entry_id)
        .ignore()
        .cmd("XDEL")
        .arg(key("chunks"))
        .arg(entry_id)
        .ignore();
    persist(
        "delivering a chunk",
        || {
            let (p, mut con) = (pipe.clone(), inner.con());
            async move { p.query_async::<()>(&mut con).await }
        },
        lease,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_results_round_trip() {
        let scores = vec![vec![-1.5, -0.25], vec![], vec![f32::MIN]];
        let work = TokenWork {
            computed: 70,
            reused: 1 << 40,
        };
        for work in [None, Some(work)] {
            let back = decode_chunk(&encode_chunk(&Ok((scores.clone(), work)))).unwrap();
            assert_eq!(back, (scores.clone(), work));
        }
        let failed = decode_chunk(&encode_chunk(&Err(Error::Model("boom".into()))));
        assert!(failed.unwrap_err().to_string().contains("boom"));
        assert!(decode_chunk(&[0, 9, 0, 0, 0, 1]).is_err());
        assert!(decode_chunk(&[2, 1, 0, 0]).is_err());
    }
}
