//! Several `llm-attr serve` processes sharing one real redis-server on loopback: jobs readable
//! everywhere, taken over when a replica is killed, handed over on SIGTERM, cancelled from any
//! replica, a shared score cache, and a Redis outage survived. Skipped (with a message) when
//! redis-server is not installed; `.ci/run` installs it.

use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-gpt2");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn redis_server() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("redis-server"))
            .find(|p| p.is_file())
    })
}

/// Polls `f` every 50 ms until it answers Some, for at most `max`.
fn wait_for<T>(what: &str, max: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + max;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < until, "gave up waiting for {what} after {max:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    fn start_on(port: u16) -> Redis {
        let child = Command::new(redis_server().expect("redis-server"))
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let r = Redis { port, child };
        wait_for("redis-server", Duration::from_secs(20), || {
            let mut c = redis::Client::open(r.url()).ok()?.get_connection().ok()?;
            redis::cmd("PING").query::<String>(&mut c).ok()
        });
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Replica {
    name: &'static str,
    port: u16,
    args: Vec<String>,
    child: Child,
    log: PathBuf,
}

fn spawn(name: &'static str, port: u16, args: &[String], log: &PathBuf) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_llm-attr"))
        .arg("serve")
        .args(["--model", TINY, "--port", &port.to_string()])
        .args(args)
        .env("RUST_LOG", "info")
        .env("HOSTNAME", name)
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .expect("llm-attr starts")
}

impl Replica {
    /// A replica on Redis with short leases, one run slot and one forward-pass thread, so jobs
    /// take long enough to be caught mid-way.
    fn start(name: &'static str, redis: &Redis, dir: &tempfile::TempDir) -> Replica {
        let args: Vec<String> = [
            "--redis-url",
            &redis.url(),
            "--lease-seconds",
            "2",
            "--max-concurrent-jobs",
            "1",
            "--threads",
            "1",
            "--batch-tokens",
            "256",
            "--fanout-chunk",
            "128",
            "--shutdown-grace",
            "5",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let port = free_port();
        let log = dir.path().join(format!("{name}.log"));
        let child = spawn(name, port, &args, &log);
        let r = Replica {
            name,
            port,
            args,
            child,
            log,
        };
        r.wait_ready();
        r
    }

    fn restart(&mut self) {
        self.child = spawn(self.name, self.port, &self.args, &self.log);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        wait_for(
            &format!("{} to be ready", self.name),
            Duration::from_secs(60),
            || (self.status("/ready") == 200).then_some(()),
        );
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn status(&self, path: &str) -> u16 {
        http()
            .get(self.url(path))
            .send()
            .map_or(0, |r| r.status().as_u16())
    }

    /// POSTs a job to `base` (`/v1/jobs` or `/v1/audits`); its id.
    fn post_to(&self, base: &str, request: &Value) -> String {
        let res = http().post(self.url(base)).json(request).send().unwrap();
        assert_eq!(res.status(), 202, "{}: {}", self.name, res.text().unwrap());
        res.json::<Value>().unwrap()["id"].as_str().unwrap().to_string()
    }

    fn post_job(&self, request: &Value) -> String {
        self.post_to("/v1/jobs", request)
    }

    fn get_from(&self, base: &str, id: &str) -> Value {
        let res = http().get(self.url(&format!("{base}/{id}"))).send().unwrap();
        assert_eq!(res.status(), 200, "{} GET {base}/{id}", self.name);
        res.json().unwrap()
    }

    fn job(&self, id: &str) -> Value {
        self.get_from("/v1/jobs", id)
    }

    fn metrics(&self) -> String {
        http().get(self.url("/metrics")).send().unwrap().text().unwrap()
    }

    fn metric(&self, name: &str) -> f64 {
        metric(&self.metrics(), name)
    }

    /// Jobs running on this replica now.
    fn running(&self) -> f64 {
        self.metric("llm_attr_jobs{state=\"running\"}")
    }

    fn signal(&mut self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {}", self.name);
    }

    fn log_tail(&self) -> String {
        let mut s = String::new();
        let _ = std::fs::File::open(&self.log).and_then(|mut f| f.read_to_string(&mut s));
        s.lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.name, self.log_tail());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

/// Exact Shapley over every token of a 10-token text: 1,024 sequences, fanned out in chunks.
fn request(n: usize) -> Value {
    let words = ["one", "two", "three", "four", "five", "six", "seven"];
    json!({
        "text": format!("Job {} : Georg from Germany applied for the job", words[n]),
        "target": " and was hired",
        "method": "shapley_values",
        "baseline_token": " the",
    })
}

/// What one replica alone answers (the fields a run must reproduce bit for bit).
fn essence(result: &Value) -> Value {
    json!({
        "seq_attr": result["seq_attr"],
        "token_attr": result["token_attr"],
        "target_log_probs": result["target_log_probs"],
        "features": result["features"],
    })
}

fn wait_done(r: &Replica, id: &str) -> Value {
    wait_done_at(r, "/v1/jobs", id)
}

fn wait_done_at(r: &Replica, base: &str, id: &str) -> Value {
    wait_for(
        &format!("{base}/{id} to end (on {})", r.name),
        Duration::from_secs(90),
        || {
            let j = r.get_from(base, id);
            (j["state"] != "queued" && j["state"] != "running").then_some(j)
        },
    )
}

/// A 3 x 2 grid, two targets: 12 sequences.
fn audit_request() -> Value {
    json!({
        "template": "{name} from {country} applied for the job and was",
        "sweep": {"name": ["Georg", "Ahmed", "Emily"], "country": ["Germany", "Togo"]},
        "targets": [" hired", " rejected"],
    })
}

/// The results one replica on its own computes, for comparison.
fn references(redis: &Redis, dir: &tempfile::TempDir, n: usize) -> Vec<Value> {
    let solo = Replica::start("solo", redis, dir);
    let ids: Vec<String> = (0..n).map(|i| solo.post_job(&request(i))).collect();
    let out = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let j = wait_done(&solo, id);
            assert_eq!(j["state"], "done", "{j}");
            if i == 0 {
                // Its chunks were scored by the chunk workers and nothing was cached yet (later
                // jobs find half their sequences in the score cache): every token counts.
                let s = &j["result"]["stats"];
                let counted = s["tokens_computed"].as_u64().unwrap() + s["tokens_reused"].as_u64().unwrap();
                assert_eq!(counted, s["tokens_scored"].as_u64().unwrap(), "{s}");
            }
            essence(&j["result"])
        })
        .collect();
    drop(solo);
    out
}

fn skip() -> bool {
    if redis_server().is_none() {
        eprintln!("SKIPPED: redis-server is not installed (apt-get install -y redis-server)");
        return true;
    }
    false
}

#[test]
fn replicas_share_jobs_survive_kill_and_stop_and_cancel_anywhere() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // References come from a replica alone, on a Redis of its own: nothing cached to share.
    let want = {
        let solo_redis = Redis::start_on(free_port());
        references(&solo_redis, &dir, 5)
    };
    let redis = Redis::start_on(free_port());
    let mut a = Replica::start("a", &redis, &dir);
    let b = Replica::start("b", &redis, &dir);

    // Jobs posted to A are readable on B while queued, running and done. One run slot per
    // replica: of three jobs, one waits.
    let ids: Vec<String> = (0..3).map(|i| a.post_job(&request(i))).collect();
    let mut seen = std::collections::BTreeSet::new();
    for id in &ids {
        seen.insert(b.job(id)["state"].as_str().unwrap().to_string());
    }
    assert!(seen.contains("queued"), "B sees a queued job: {seen:?}");

    // SIGKILL A while it runs a job: B takes it over once the lease runs out.
    wait_for("A to run a job", Duration::from_secs(60), || {
        (a.running() >= 1.0).then_some(())
    });
    seen.insert("running".into());
    a.signal("KILL");
    let _ = a.child.wait();
    for (i, id) in ids.iter().enumerate() {
        let j = wait_done(&b, id);
        assert_eq!(j["state"], "done", "{j}");
        assert_eq!(
            essence(&j["result"]),
            want[i],
            "job {i} equals a run on one replica"
        );
    }

    // A restarted answers for the jobs finished meanwhile.
    a.restart();
    for id in &ids {
        assert_eq!(a.job(id)["state"], "done");
    }

    // SIGTERM A mid-job: A hands the job over and exits; B finishes it, not cancelled.
    let id3 = a.post_job(&request(3));
    let id4 = a.post_job(&request(4));
    wait_for("A to run a job", Duration::from_secs(60), || {
        (a.running() >= 1.0).then_some(())
    });
    let stopping = Instant::now();
    a.signal("TERM");
    let status = wait_for("A to exit", Duration::from_secs(30), || {
        a.child.try_wait().unwrap()
    });
    eprintln!("A exited ({status}) {:?} after SIGTERM", stopping.elapsed());
    for (id, w) in [(&id3, &want[3]), (&id4, &want[4])] {
        let j = wait_done(&b, id);
        assert_eq!(j["state"], "done", "{j}");
        assert_eq!(&essence(&j["result"]), w);
    }

    // The score cache: the same request again scores no new sequence on any replica.
    a.restart();
    let scored = |r: &Replica| r.metric("llm_attr_sequences_scored_total");
    let before = scored(&a) + scored(&b);
    let again = b.post_job(&request(0));
    let j = wait_done(&b, &again);
    assert_eq!(essence(&j["result"]), want[0]);
    assert_eq!(
        scored(&a) + scored(&b),
        before,
        "a repeated request scores nothing new"
    );
    let hits = |r: &Replica| {
        let m = r.metrics();
        metric(&m, "llm_attr_score_cache_hits_total{layer=\"local\"}")
            + metric(&m, "llm_attr_score_cache_hits_total{layer=\"shared\"}")
    };
    assert!(hits(&a) + hits(&b) > 0.0);
    assert!(
        b.metric("llm_attr_score_cache_hit_ratio") > 0.0 || a.metric("llm_attr_score_cache_hit_ratio") > 0.0
    );

    // Audits are jobs too: one posted to B is read on A, and the same audit again, on A,
    // scores nothing new.
    let first = b.post_to("/v1/audits", &audit_request());
    let first = wait_done_at(&a, "/v1/audits", &first);
    assert_eq!(first["state"], "done", "{first}");
    assert_eq!(first["kind"], "audit");
    assert_eq!(first["result"]["cells"].as_array().unwrap().len(), 6);
    let before = scored(&a) + scored(&b);
    let again = a.post_to("/v1/audits", &audit_request());
    let again = wait_done_at(&b, "/v1/audits", &again);
    assert_eq!(again["result"]["cells"], first["result"]["cells"]);
    assert_eq!(
        scored(&a) + scored(&b),
        before,
        "a repeated audit scores nothing new"
    );

    // DELETE on the replica that does not run a job stops it where it runs.
    let id = a.post_job(&request(5));
    let (runner, other) = wait_for("a replica to run the job", Duration::from_secs(60), || {
        if a.running() >= 1.0 {
            Some((&a, &b))
        } else if b.running() >= 1.0 {
            Some((&b, &a))
        } else {
            None
        }
    });
    let res = http()
        .delete(other.url(&format!("/v1/jobs/{id}")))
        .send()
        .unwrap();
    let cancelled = Instant::now();
    assert_eq!(res.json::<Value>().unwrap()["state"], "cancelled");
    wait_for("the run to stop where it ran", Duration::from_secs(10), || {
        (runner.running() == 0.0 && runner.metric("llm_attr_runs_active") == 0.0).then_some(())
    });
    eprintln!(
        "the run on {} stopped {:?} after DELETE on {}",
        runner.name,
        cancelled.elapsed(),
        other.name
    );
    assert_eq!(runner.job(&id)["state"], "cancelled");
}

#[test]
fn a_redis_outage_gives_503_then_recovers() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut redis = Redis::start_on(free_port());
    let mut a = Replica::start("a", &redis, &dir);
    let id = a.post_job(&request(6));
    wait_done(&a, &id);

    redis.stop();
    wait_for("/ready to say not ready", Duration::from_secs(20), || {
        (a.status("/ready") == 503).then_some(())
    });
    let res = http().post(a.url("/v1/jobs")).json(&request(6)).send().unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = res.json().unwrap();
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("cannot be reached"));
    assert_eq!(a.status(&format!("/v1/jobs/{id}")), 503);
    assert_eq!(a.status("/health"), 200, "the process itself is fine");

    // Redis back (empty: no persistence): the replica recovers by itself.
    let port = redis.port;
    drop(redis);
    let _redis = Redis::start_on(port);
    a.wait_ready();
    let id = a.post_job(&request(6));
    assert_eq!(wait_done(&a, &id)["state"], "done");
    assert!(a.child.try_wait().unwrap().is_none(), "no panic, still running");
}
