//! Load test of the HTTP service on loopback: 32 concurrent clients sending t1 requests, and
//! small requests beside long jobs and beside another client's many jobs.
//!
//! Starts the real server in-process with SmolLM2 (or `LOAD_MODEL`), runs `LOAD_CLIENTS` x
//! `LOAD_ROUNDS` distinct t1 requests alone, one at a time (the reference results and the
//! 1-client throughput), then the same requests from `LOAD_CLIENTS` clients at once. Checks every request is answered and matches
//! its solo result; reports throughput (32 vs 1), p50/p99 latency, batch sizes and the
//! process's resident memory (server and clients share this process; the clients are small).
//!
//!     cargo bench --bench load
//!     LOAD_CLIENTS=32 LOAD_ROUNDS=2 LOAD_MAX_SECONDS=300 LOAD_SWEEP=4,8,16,32,64 \
//!         LOAD_BATCH_TOKENS=2048 LOAD_WORKERS=1 LOAD_OWN_BASELINES=1 cargo bench --bench load
//!
//! Bounded: `LOAD_CLIENTS` x `LOAD_ROUNDS` requests, and it stops waiting after
//! `LOAD_MAX_SECONDS` (counting what did not finish as unanswered).
//!
//! Fairness rows (first): `LOAD_FAIR_SMALL` small requests (t1, shapley_values, 8 sequences)
//! one at a time alone, then others while a kernel_shap job of `LOAD_FAIR_SEQUENCES` (4096)
//! distinct sequences runs, then others while a gradient_x_input run over a long target
//! (`LOAD_FAIR_GRADIENT_REPEATS` (20) times a 9-token sentence) runs; p50/p99 side by side, and
//! how long each cancelled run took to stop. Shares row: one client submits `LOAD_HOG_JOBS`
//! (64) kernel_shap jobs of `LOAD_HOG_SAMPLES` (512) samples, so its whole share of the run
//! slots runs and the rest wait, while another client's `LOAD_FAIR_SMALL` small synchronous
//! requests must all be answered (their p50/p99). Each client sends from its own loopback
//! address. `LOAD_FAIR_ONLY=1` stops after these rows. `LOAD_BATCH_SECONDS` sets
//! `--batch-seconds` (0: off), to compare.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use llm_attr::api::{Config, ModelSource, Server};
use llm_attr::model::LoadOptions;
use llm_attr::model::{Model, ScoreItem};
use serde_json::{json, Value};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident and peak resident memory of this process, MiB.
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// `n` distinct t1 requests (the notebook's t1 with one baseline per placeholder; values vary).
/// With `own_baselines`, every request also has its own baseline name, so requests share
/// almost no sequences and only batching (not deduplication) can help.
fn requests(n: usize, own_baselines: bool) -> Vec<Value> {
    let first = ["John", "Paul", "Anna", "Lena", "Omar", "Yuki", "Ravi", "Nina"];
    let last = [
        "Smith", "Novak", "Khan", "Ito", "Silva", "Berg", "Adams", "Moreau",
    ];
    let names = [
        "Georg",
        "Maria",
        "Ahmed",
        "Zhang Wei",
        "Jane",
        "Dave",
        "Elisabeth",
        "Kofi",
    ];
    let countries = ["Germany", "Togo", "Tuvalu", "Japan"];
    let jobs = ["janitor", "teacher", "surgeon", "pilot"];
    (0..n)
        .map(|i| {
            let (name, country, job) = (names[i % 8], countries[(i / 8) % 4], jobs[(i / 32) % 4]);
            let baseline = if own_baselines {
                format!("{} {}", first[i % 8], last[(i / 8) % 8])
            } else {
                "John".to_string()
            };
            json!({
                "template": "{name} from {country} applied for a job as a {job}. The hiring manager decided to",
                "values": {"name": name, "country": country, "job": job},
                "baselines": {"name": baseline, "country": "Togo", "job": "nurse"},
                "target": "reject the application without further consideration.",
                "method": "shapley_values",
            })
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn max_diff(a: &Value, b: &Value) -> f64 {
    match (a, b) {
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).map(|(x, y)| max_diff(x, y)).fold(0.0, f64::max)
        }
        (Value::Number(x), Value::Number(y)) => (x.as_f64().unwrap() - y.as_f64().unwrap()).abs(),
        _ => f64::INFINITY,
    }
}

struct Engine {
    batches: u64,
    sequences: u64,
    padded: u64,
    tokens: u64,
    shared: u64,
}

fn engine_counts(s: &Server) -> Engine {
    let r = s.state().ready.get().expect("ready");
    let st = r.engine.stats();
    Engine {
        batches: st.batches.load(Ordering::Relaxed),
        sequences: st.sequences.load(Ordering::Relaxed),
        padded: st.padded_tokens.load(Ordering::Relaxed),
        tokens: st.tokens.load(Ordering::Relaxed),
        shared: st.shared.load(Ordering::Relaxed),
    }
}

/// Latencies of `small` requests sent one at a time.
async fn timed(http: &reqwest::Client, url: &str, small: &[Value]) -> anyhow::Result<Vec<f64>> {
    let mut lat = Vec::new();
    for r in small {
        let t = Instant::now();
        let res = http.post(url).json(r).send().await?;
        anyhow::ensure!(res.status() == 200, "small request failed: {}", res.text().await?);
        lat.push(t.elapsed().as_secs_f64());
    }
    lat.sort_by(f64::total_cmp);
    Ok(lat)
}

/// A client of its own: requests from loopback address 127.0.0.`n` (the server shares its
/// run slots per client address).
fn client_at(n: u8, max_secs: f64) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, n]))
        .timeout(Duration::from_secs_f64(max_secs))
        .build()?)
}

/// Submits `body` as a job; its URL.
async fn submit(server: &Server, http: &reqwest::Client, body: &Value) -> anyhow::Result<String> {
    let res = http
        .post(format!("{}/v1/jobs", server.url()))
        .json(body)
        .send()
        .await?;
    anyhow::ensure!(res.status() == 202, "the job was refused: {}", res.text().await?);
    Ok(format!("{}{}", server.url(), res.headers()["location"].to_str()?))
}

/// Waits (up to `LOAD_MAX_SECONDS`) until no attribute request runs; the seconds it took.
async fn until_idle(server: &Server) -> f64 {
    let t = Instant::now();
    let max = env("LOAD_MAX_SECONDS", 300.0);
    while server.state().active_runs.load(Ordering::SeqCst) > 0 && t.elapsed().as_secs_f64() < max {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.elapsed().as_secs_f64()
}

/// Latencies of `small` (one at a time) while the job `big` runs, and a note on the job: how
/// far it got, and how long its run took to stop after its DELETE.
async fn beside(
    server: &Server,
    http: &reqwest::Client,
    small: &[Value],
    big: &Value,
) -> anyhow::Result<(Vec<f64>, String)> {
    let url = format!("{}/v1/attributions", server.url());
    let job = submit(server, http, big).await?;
    // Wait until its work is queued.
    let total = loop {
        let j: Value = http.get(&job).send().await?.json().await?;
        let total = j["progress"]["total"].as_u64().unwrap_or(0);
        if j["state"] == "running" && total > 0 {
            break total;
        }
        anyhow::ensure!(
            j["state"] == "queued" || j["state"] == "running",
            "the big job ended: {j}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let during = timed(http, &url, small).await?;
    let j: Value = http.delete(&job).send().await?.json().await?;
    let stopped = until_idle(server).await;
    let done = j["progress"]["done"].as_u64().unwrap_or(0);
    let note = if j["state"] == "cancelled" {
        format!("{done}/{total} done, cancelled after; its run stopped {stopped:.2}s after the DELETE")
    } else {
        format!("{done}/{total} done; it FINISHED first: make it longer")
    };
    Ok((during, note))
}

fn p50_p99(lat: &[f64]) -> String {
    format!(
        "p50 {:.3}s p99 {:.3}s",
        percentile(lat, 50.0),
        percentile(lat, 99.0)
    )
}

/// The fairness rows: small requests alone, beside a long scoring job, and beside a long
/// gradient run.
async fn fairness(server: &Server, http: &reqwest::Client) -> anyhow::Result<()> {
    let n: usize = env("LOAD_FAIR_SMALL", 16);
    let sequences: usize = env("LOAD_FAIR_SEQUENCES", 4096);
    let target_repeats: usize = env("LOAD_FAIR_GRADIENT_REPEATS", 20);
    if n == 0 {
        return Ok(());
    }
    let url = format!("{}/v1/attributions", server.url());
    // Distinct small requests, so nothing is shared with each other or with the jobs.
    let small: Vec<Value> = requests(3 * n, true);
    let alone = timed(http, &url, &small[..n]).await?;
    let text = "The committee reviewed every application for the new research position carefully and then decided to";
    // Kernel SHAP on a 24-token text: each sample is a random coalition of 24 tokens, so the
    // samples are (almost all) distinct sequences.
    let scoring = json!({
        "text": text,
        "target": " reject the application without further consideration.",
        // Removed tokens become " the", so no perturbed prompt is empty.
        "baseline_token": " the",
        "method": "kernel_shap",
        "n_samples": sequences,
    });
    // Gradient x input over a long target: one backward pass per target token.
    let gradient = json!({
        "text": text,
        "target": " reject the application without further consideration.".repeat(target_repeats),
        "method": "gradient_x_input",
    });
    let (by_scoring, scoring_note) = beside(server, http, &small[n..2 * n], &scoring).await?;
    let (by_gradient, gradient_note) = beside(server, http, &small[2 * n..], &gradient).await?;
    println!("fairness: {n} small requests (8 sequences each) one at a time:");
    println!("  alone:                          {}", p50_p99(&alone));
    println!(
        "  beside a {sequences}-sample kernel_shap job: {} ({scoring_note})",
        p50_p99(&by_scoring)
    );
    println!(
        "  beside a gradient_x_input run ({target_repeats}x target): {} ({gradient_note})",
        p50_p99(&by_gradient)
    );
    println!(
        "  p99 beside the gradient run / beside the scoring job: {:.2} (issue 18 asks for at most 2)",
        percentile(&by_gradient, 99.0) / percentile(&by_scoring, 99.0)
    );
    Ok(())
}

/// The shares row: one client holds `LOAD_HOG_JOBS` jobs (its whole share of the run slots
/// runs, the rest wait) while another client's small synchronous requests still get slots.
async fn shares(server: &Server, http: &reqwest::Client, max_secs: f64) -> anyhow::Result<()> {
    let jobs: usize = env("LOAD_HOG_JOBS", 64);
    let samples: usize = env("LOAD_HOG_SAMPLES", 512);
    let n: usize = env("LOAD_FAIR_SMALL", 16);
    if jobs == 0 || n == 0 {
        return Ok(());
    }
    let url = format!("{}/v1/attributions", server.url());
    let hog = client_at(2, max_secs)?;
    let mut urls = Vec::new();
    for i in 0..jobs {
        let body = json!({
            "text": format!("Applicant {i} was reviewed by the committee, which then decided to"),
            "target": " reject the application.",
            "baseline_token": " the",
            "method": "kernel_shap",
            "n_samples": samples,
        });
        urls.push(submit(server, &hog, &body).await?);
    }
    let config = &server.state().config;
    let share = server.state().shares.per_client();
    let t = Instant::now();
    while server.state().running_jobs.len() < share.min(jobs) && t.elapsed().as_secs_f64() < max_secs {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let running = server.state().running_jobs.len();
    let own = hog.post(&url).json(&requests(1, true)[0]).send().await?.status();
    let other = client_at(3, max_secs)?;
    let small: Vec<Value> = requests(4 * n, true)[3 * n..].to_vec();
    let lat = timed(&other, &url, &small).await?;
    for u in &urls {
        http.delete(u).send().await?;
    }
    let stopped = until_idle(server).await;
    println!(
        "shares: one client submitted {jobs} jobs ({samples}-sample kernel_shap): {running} ran at once (its share: {share} of {} slots), \
         its own synchronous request got {own}; another client's {n} small requests one at a time: all answered, {} \
         (the jobs' runs stopped {stopped:.2}s after their DELETEs)",
        config.max_concurrent_jobs,
        p50_p99(&lat)
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes --bench; nothing to parse.
    let spec = std::env::var("LOAD_MODEL").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        )
        .to_string()
    });
    let clients: usize = env("LOAD_CLIENTS", 32);
    let rounds: usize = env("LOAD_ROUNDS", 2);
    let max_secs: f64 = env("LOAD_MAX_SECONDS", 300.0);
    let workers: usize = env("LOAD_WORKERS", 1);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let (rss0, _) = rss_mib();
        let t = Instant::now();
        let model = Model::load(&spec, &LoadOptions::default()).map_err(|e| anyhow::anyhow!("{spec}: {e}"))?;
        let load_secs = t.elapsed().as_secs_f64();
        let (rss_loaded, _) = rss_mib();
        // The model alone: how much a bigger forward pass buys on this machine.
        let tok = model.tokenizer();
        let target = tok.encode(" reject the application without further consideration.").map_err(|e| anyhow::anyhow!("{e}"))?;
        let items: Vec<ScoreItem> = requests(64, false)
            .iter()
            .cycle()
            .take(64)
            .enumerate()
            .map(|(k, r)| {
                let v = &r["values"];
                let text = format!("{} from {} applied for a job as a {} number {k}. The hiring manager decided to",
                    v["name"].as_str().unwrap_or(""), v["country"].as_str().unwrap_or(""), v["job"].as_str().unwrap_or(""));
                ScoreItem { prompt: tok.encode(&text).unwrap_or_default(), target: target.clone() }
            })
            .collect();
        let sizes: Vec<usize> = std::env::var("LOAD_SWEEP")
            .unwrap_or_else(|_| "8,64".into())
            .split(',')
            .filter_map(|v| v.trim().parse().ok())
            .filter(|&n| (1..=64).contains(&n))
            .collect();
        for size in sizes {
            let t = Instant::now();
            let mut n = 0;
            while n < 64 {
                model.score(&items[..size]).map_err(|e| anyhow::anyhow!("{e}"))?;
                n += size;
            }
            println!("model alone, batches of {size}: {:.1} sequences/s", n as f64 / t.elapsed().as_secs_f64());
        }
        let mut config = Config::new(ModelSource::Loaded(model));
        config.engine.workers = workers;
        // Room for the fairness row's big job.
        config.limits.max_n_samples = config.limits.max_n_samples.max(1 << 14);
        config.engine.token_budget = env("LOAD_BATCH_TOKENS", config.engine.token_budget);
        let budget = config.engine.token_budget;
        // `LOAD_BATCH_SECONDS=0` turns pacing off (batches always fill the budget).
        let pace = env("LOAD_BATCH_SECONDS", config.engine.batch_seconds.unwrap_or(0.0));
        config.engine.batch_seconds = Some(pace).filter(|s| *s > 0.0);
        let server = Server::start(config).await?;
        server.ready().await?;
        let url = format!("{}/v1/attributions", server.url());
        let http = reqwest::Client::builder().timeout(Duration::from_secs_f64(max_secs)).build()?;
        println!("model {spec} loaded in {load_secs:.2}s; RSS {rss0:.0} MiB before, {rss_loaded:.0} MiB after; {workers} worker(s), batch budget {budget} tokens, batches paced to {pace} s (0: off)");

        fairness(&server, &http).await?;
        shares(&server, &http, max_secs).await?;
        if env("LOAD_FAIR_ONLY", 0) == 1 {
            server.shutdown().await;
            return Ok(());
        }

        // Solo: every request alone, one at a time (the reference results and the 1-client rate).
        let own_baselines = env("LOAD_OWN_BASELINES", 0) == 1;
        let reqs = requests(clients * rounds, own_baselines);
        println!("requests: {} distinct t1 requests, {}", reqs.len(),
            if own_baselines { "each with its own baselines" } else { "sharing their baselines (as users of the same template do)" });
        let before = engine_counts(&server);
        let t = Instant::now();
        let mut solo = Vec::new();
        let mut solo_lat = Vec::new();
        for r in &reqs {
            let t1 = Instant::now();
            let res = http.post(&url).json(r).send().await?;
            anyhow::ensure!(res.status() == 200, "solo request failed: {}", res.text().await?);
            solo.push(res.json::<Value>().await?);
            solo_lat.push(t1.elapsed().as_secs_f64());
        }
        let solo_secs = t.elapsed().as_secs_f64();
        let after = engine_counts(&server);
        let solo_rate = reqs.len() as f64 / solo_secs;
        let solo_batch = (after.sequences - before.sequences) as f64 / (after.batches - before.batches).max(1) as f64;
        solo_lat.sort_by(f64::total_cmp);

        // Concurrent: `clients` clients, `rounds` requests each.
        let peak = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (peak, done) = (peak.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    let (rss, _) = rss_mib();
                    peak.fetch_max(rss as u64, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        let before = engine_counts(&server);
        let t = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                // Each client from its own address (run slots are shared per address).
                let http = client_at(10 + (c % 240) as u8, max_secs);
                let url = url.clone();
                let reqs = reqs.clone();
                tokio::spawn(async move {
                    let http = http?;
                    let mut out = Vec::new();
                    for k in 0..rounds {
                        let i = c + k * clients;
                        let t1 = Instant::now();
                        let res = http.post(&url).json(&reqs[i]).send().await;
                        let lat = t1.elapsed().as_secs_f64();
                        let body = match res {
                            Ok(r) if r.status() == 200 => r.json::<Value>().await.ok(),
                            Ok(r) => {
                                eprintln!("client {c}: status {}: {}", r.status(), r.text().await.unwrap_or_default());
                                None
                            }
                            Err(e) => {
                                eprintln!("client {c}: {e}");
                                None
                            }
                        };
                        out.push((i, lat, body));
                    }
                    anyhow::Ok(out)
                })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.extend(task.await??);
        }
        let load_secs = t.elapsed().as_secs_f64();
        done.store(true, Ordering::Relaxed);
        let _ = sampler.join();
        let after = engine_counts(&server);

        let total = clients * rounds;
        let answered = results.iter().filter(|r| r.2.is_some()).count();
        let mut worst: f64 = 0.0;
        let mut identical = 0;
        for (i, _, body) in &results {
            if let Some(b) = body {
                let d = max_diff(&b["seq_attr"], &solo[*i]["seq_attr"])
                    .max(max_diff(&b["token_attr"], &solo[*i]["token_attr"]))
                    .max(max_diff(&b["target_log_probs"], &solo[*i]["target_log_probs"]));
                worst = worst.max(d);
                if d == 0.0 {
                    identical += 1;
                }
            }
        }
        let mut lat: Vec<f64> = results.iter().filter(|r| r.2.is_some()).map(|r| r.1).collect();
        lat.sort_by(f64::total_cmp);
        let rate = answered as f64 / load_secs;
        let batches = after.batches - before.batches;
        let seqs = after.sequences - before.sequences;
        let (_, hwm) = rss_mib();
        let metrics = reqwest::get(format!("{}/metrics", server.url())).await?.text().await?;
        let hist: Vec<&str> = metrics.lines().filter(|l| l.starts_with("llm_attr_batch_size_bucket")).collect();

        println!("solo:       {} requests one at a time in {solo_secs:.2}s = {solo_rate:.2} req/s; latency p50 {:.3}s p99 {:.3}s; mean batch {solo_batch:.1} sequences",
            reqs.len(), percentile(&solo_lat, 50.0), percentile(&solo_lat, 99.0));
        println!("concurrent: {clients} clients x {rounds} = {total} requests, {answered} answered in {load_secs:.2}s = {rate:.2} req/s; latency p50 {:.3}s p99 {:.3}s",
            percentile(&lat, 50.0), percentile(&lat, 99.0));
        let padding = (after.padded - before.padded) as f64 / (after.tokens - before.tokens).max(1) as f64 - 1.0;
        println!(
            "            {seqs} sequences in {batches} forward passes: mean batch {:.1} sequences, padding {:.1}% of real tokens",
            seqs as f64 / batches.max(1) as f64,
            100.0 * padding
        );
        println!(
            "            {} more sequences were answered by an identical sequence of another request in the same pass",
            after.shared - before.shared
        );
        println!("throughput {clients} clients vs 1: {:.2}x", rate / solo_rate);
        println!("results vs solo: {identical}/{answered} bit-identical, max |diff| {worst:.2e}");
        println!("RSS: peak sampled {} MiB during load, VmHWM {hwm:.0} MiB", peak.load(Ordering::Relaxed));
        println!("batch size histogram (cumulative, whole run):");
        for l in hist {
            println!("  {l}");
        }
        server.shutdown().await;
        anyhow::ensure!(answered == total, "{} of {total} requests unanswered", total - answered);
        anyhow::ensure!(worst <= 1e-4, "results differ from solo runs by {worst}");
        Ok(())
    })
}
