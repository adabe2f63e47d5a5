//! The replicas' shared score cache: [`SharedScores`] on the Redis connection, keys
//! `llm-attr:score:{digest}:{ids}` expiring after `--job-ttl`. Failures are misses.

use super::{Inner, PREFIX};
use crate::score_cache::SharedScores;

impl SharedScores for Inner {
    fn get_many(&self, keys: &[Vec<u8>]) -> Vec<Option<Vec<u8>>> {
        let mut cmd = redis::cmd("MGET");
        for k in keys {
            cmd.arg([PREFIX.as_bytes(), k].concat());
        }
        let mut con = self.con();
        self.rt
            .block_on(cmd.query_async::<Vec<Option<Vec<u8>>>>(&mut con))
            .unwrap_or_else(|_| vec![None; keys.len()])
    }

    fn put_many(&self, entries: Vec<(Vec<u8>, Vec<u8>)>) {
        let mut pipe = redis::pipe();
        for (k, v) in entries {
            pipe.cmd("SET")
                .arg([PREFIX.as_bytes(), &k].concat())
                .arg(v)
                .arg("EX")
                .arg(self.ttl_secs())
                .ignore();
        }
        let mut con = self.con();
        let _ = self.rt.block_on(pipe.query_async::<()>(&mut con));
    }
}
