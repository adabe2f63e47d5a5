//! Scale-out: one 4,096-prompt job (exact Shapley over 12 token features) on one replica
//! without Redis, on one replica with Redis, and on two replicas with Redis, each replica
//! pinned to one core with `taskset`, side by side in one run. Reports the speed-up of two
//! replicas over one and the overhead of going through Redis on one. Every configuration gets
//! a fresh redis-server and fresh processes, so no score is cached from an earlier one; the
//! three results must be identical.
//!
//!     cargo bench --bench replicas
//!     REPLICAS_MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf cargo bench --bench replicas
//!
//! Needs redis-server and taskset on PATH (skips with a message otherwise).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn on_path(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn wait_ready(port: u16) {
    let until = Instant::now() + Duration::from_secs(300);
    while Instant::now() < until {
        let ok = http()
            .get(format!("http://127.0.0.1:{port}/ready"))
            .send()
            .is_ok_and(|r| r.status() == 200);
        if ok {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("replica on {port} never got ready");
}

/// Starts `cores.len()` replicas (each pinned to its core), with Redis when `redis` is set;
/// answers the processes and their ports.
fn start(model: &str, cores: &[usize], redis: bool) -> (Procs, Vec<u16>) {
    let mut procs = Procs(Vec::new());
    let mut args: Vec<String> = vec!["--threads".into(), "1".into()];
    if redis {
        let port = free_port();
        procs.0.push(
            Command::new("redis-server")
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
                .spawn()
                .expect("redis-server"),
        );
        args.extend(["--redis-url".into(), format!("redis://127.0.0.1:{port}")]);
    }
    let mut ports = Vec::new();
    for &core in cores {
        let port = free_port();
        procs.0.push(
            Command::new("taskset")
                .args(["-c", &core.to_string(), env!("CARGO_BIN_EXE_llm-attr"), "serve"])
                .args(["--model", model, "--port", &port.to_string()])
                .args(&args)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .expect("llm-attr"),
        );
        ports.push(port);
    }
    for &p in &ports {
        wait_ready(p);
    }
    (procs, ports)
}

/// Seconds from POST to done, and the result.
fn run_job(port: u16, request: &Value) -> (f64, Value) {
    let c = http();
    let started = Instant::now();
    let res = c
        .post(format!("http://127.0.0.1:{port}/v1/jobs"))
        .json(request)
        .send()
        .unwrap();
    assert_eq!(res.status(), 202);
    let id = res.json::<Value>().unwrap()["id"].as_str().unwrap().to_string();
    loop {
        let j: Value = c
            .get(format!("http://127.0.0.1:{port}/v1/jobs/{id}"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        match j["state"].as_str() {
            Some("done") => return (started.elapsed().as_secs_f64(), j["result"].clone()),
            Some("queued" | "running") => std::thread::sleep(Duration::from_millis(20)),
            _ => panic!("the job ended {j}"),
        }
    }
}

fn main() {
    if !on_path("redis-server") || !on_path("taskset") {
        eprintln!("SKIPPED: needs redis-server and taskset on PATH");
        return;
    }
    let model = std::env::var("REPLICAS_MODEL")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-gpt2").into());
    // 12 token features: 2^12 = 4,096 distinct prompts.
    let request = json!({
        "text": "Georg from Germany applied for a job as a nurse in the city",
        "target": " hospital.",
        "method": "shapley_values",
        "baseline_token": " the",
    });
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let second = if cores > 1 { 1 } else { 0 };
    println!("model {model}; one job of 4,096 prompts; each replica pinned to one core");
    let mut rows = Vec::new();
    for (name, pinned, redis) in [
        ("1 replica, in memory", vec![0], false),
        ("1 replica, Redis", vec![0], true),
        ("2 replicas, Redis", vec![0, second], true),
    ] {
        let (procs, ports) = start(&model, &pinned, redis);
        let (secs, result) = run_job(ports[0], &request);
        assert_eq!(result["stats"]["unique_sequences"], 4096, "{}", result["stats"]);
        drop(procs);
        println!("{name:<22} {secs:>8.2} s");
        rows.push((name, secs, result));
    }
    for (name, _, r) in &rows[1..] {
        assert_eq!(r["seq_attr"], rows[0].2["seq_attr"], "{name}: same result");
        assert_eq!(r["token_attr"], rows[0].2["token_attr"], "{name}: same result");
    }
    let (memory, one, two) = (rows[0].1, rows[1].1, rows[2].1);
    println!("speed-up, 2 replicas over 1 (Redis): {:.2}x", one / two);
    println!(
        "Redis overhead on 1 replica: {:+.1}%",
        100.0 * (one / memory - 1.0)
    );
    println!("results identical in all three: yes");
}
