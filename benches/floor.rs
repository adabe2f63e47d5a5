//! The PyTorch floor, side by side in one run: exact Shapley values on t1 (`examples/t1.json`,
//! 125 prompts over the baselines' product) through llm-attr's engine, against one batched
//! PyTorch forward over the same prompts (`scripts/torch_pass.py`), on the same CPU and weights.
//!
//!     FLOOR_PY=/work/torchenv/bin/python cargo bench --bench floor
//!     FLOOR_PY=... FLOOR_MODELS=models/SmolLM2-135M-Instruct.Q4_1.gguf,/dev/shm/llama-1b \
//!         FLOOR_THREADS=1,2 cargo bench --bench floor
//!
//! `FLOOR_MODELS`: comma-separated llm-attr model specs (default SmolLM2's GGUF); a `.gguf` is
//! compared with its f32 dequantization (`scripts/inference-server.sh model-dir`), a directory
//! with itself. `FLOOR_THREADS`: thread counts to run llm-attr at (each in a child process,
//! `RAYON_NUM_THREADS`; default: this machine's cores). `FLOOR_DTYPES`: `f32` (default) and/or
//! `bf16` (needs MKL, scripts/fetch-mkl.sh, and a CPU with AMX-bf16 or AVX512-BF16, or
//! `LLM_ATTR_CPU_BF16=emulate`). `FLOOR_MATMUL=1` first prints the GFLOP/s of candle's f32
//! matmul and of the bf16 one at SmolLM2's shapes. `FLOOR_REUSE=off` turns shared-prefix reuse
//! off on llm-attr's side. Prints llm-attr's `stats.seconds` and tokens computed of its first
//! run (cold: an empty prefix cache) and the median of the `FLOOR_REPEATS` (3) runs after it
//! (warm: the prefix cache holds the template heads the run before left, as for a repeated
//! request), PyTorch's median pass, the ratios, and the load average before and after.

mod common;

use common::{cpu_seconds, load_average};
use std::process::Command;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use llm_attr::cli::read_request;
use llm_attr::engine::{CancelToken, Engine, EngineConfig};
use llm_attr::model::{cpu_bf16_matmul, resolve, DeviceChoice, DtypeChoice, Model};
use llm_attr::request::{AttributeRequest, Method};
use llm_attr::run::{run, Limits};

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn t1() -> AttributeRequest {
    AttributeRequest {
        method: Method::ShapleyValues,
        ..read_request("examples/t1.json").expect("examples/t1.json")
    }
}

/// llm-attr's side: the first run's seconds and tokens computed, with an empty prefix cache
/// (cold), and the median of the runs after it (warm: the prefix cache holds what the run
/// before left, as it would for a request repeated); the load seconds; the tokens scored.
struct Ours {
    cold: f64,
    cold_computed: usize,
    warm: f64,
    warm_computed: usize,
    load: f64,
    tokens: usize,
}

/// llm-attr's side, in this process: load, one cold run, then `repeats` warm ones.
fn llm_attr_seconds(spec: &str, dtype: &str, repeats: usize) -> Ours {
    let dtype = match dtype {
        "bf16" => DType::BF16,
        _ => DType::F32,
    };
    // Through `--dtype`'s check: bf16 needs AMX or AVX512-BF16 (or LLM_ATTR_CPU_BF16=emulate).
    let options = resolve(DeviceChoice::Cpu, DtypeChoice::Fixed(dtype)).expect("the dtype on this CPU");
    let started = Instant::now();
    let model = Model::load(spec, &options).expect("load the model");
    let load = started.elapsed().as_secs_f64();
    model.set_prefix_reuse(std::env::var("FLOOR_REUSE").map_or(true, |v| v != "off"));
    let engine = Engine::new(model.clone(), EngineConfig::for_device(model.device())).expect("engine");
    let handle = engine.handle(CancelToken::new());
    let request = t1();
    let runs: Vec<_> = (0..=repeats)
        .map(|_| {
            run(&request, &handle, &Limits::default(), &|_| {})
                .expect("exact t1")
                .stats
        })
        .collect();
    engine.shutdown();
    Ours {
        cold: runs[0].seconds,
        cold_computed: runs[0].tokens_computed,
        warm: median(runs[1..].iter().map(|r| r.seconds).collect()),
        warm_computed: runs.last().map_or(0, |r| r.tokens_computed),
        load,
        tokens: runs[0].tokens_scored,
    }
}

/// PyTorch's side: `scripts/torch_pass.py` on `dir`, its median seconds.
fn torch_seconds(py: &str, dir: &str, dtype: &str, threads: usize, repeats: usize) -> Option<f64> {
    let torch_dtype = if dtype == "bf16" { "bfloat16" } else { "float32" };
    let out = Command::new(py)
        .args([
            "scripts/torch_pass.py",
            "--model",
            dir,
            "--request",
            "examples/t1.json",
        ])
        .args(["--dtype", torch_dtype, "--repeats", &repeats.to_string()])
        .env("OMP_NUM_THREADS", threads.to_string())
        .env("CUDA_VISIBLE_DEVICES", "")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        eprintln!("torch_pass.py failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    text.rsplit("median ")
        .next()?
        .trim()
        .trim_end_matches('s')
        .parse()
        .ok()
}

/// The directory PyTorch loads for `spec`: a GGUF's f32 dequantization, or the directory.
fn torch_dir(spec: &str) -> Option<String> {
    let path = spec;
    if !path.ends_with(".gguf") {
        return Some(path.to_string());
    }
    let out = Command::new("scripts/inference-server.sh")
        .args(["model-dir", path])
        .output()
        .ok()?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !dir.is_empty()).then_some(dir)
}

/// Runs llm-attr's side in a child process with `threads` threads; parses its one line.
fn child(spec: &str, dtype: &str, threads: usize, repeats: usize) -> Option<Ours> {
    let out = Command::new(std::env::current_exe().ok()?)
        .env("FLOOR_CHILD", format!("{spec}|{dtype}|{repeats}"))
        .env("RAYON_NUM_THREADS", threads.to_string())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<f64> = text.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    let &[cold, cold_computed, warm, warm_computed, load, tokens] = f.as_slice() else {
        return None;
    };
    Some(Ours {
        cold,
        cold_computed: cold_computed as usize,
        warm,
        warm_computed: warm_computed as usize,
        load,
        tokens: tokens as usize,
    })
}

/// GFLOP/s of candle's f32 matmul (`[rows, k] @ [k, n]`, what the decoder runs) and of the
/// CPU's bf16 matmul (MKL's `cblas_gemm_bf16bf16f32`, f32 rows in and out, when MKL is found)
/// at SmolLM2's projection shapes and LM head for t1's 3,200 rows (`FLOOR_MATMUL=1`), on 1
/// thread and on every core.
fn matmul_gflops() {
    let rows = 3200;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (name, k, n) in [
        ("qkv", 576, 960),
        ("out", 576, 576),
        ("gate_up", 576, 3072),
        ("down", 1536, 576),
        ("head/125", 576, 49152),
    ] {
        // The head runs at the target rows only: t1's 125 prompts' last rows, 25 each.
        let rows = if name.starts_with("head") { 125 } else { rows };
        let x = Tensor::randn(0f32, 1.0, (rows, k), &Device::Cpu).expect("x");
        let w = Tensor::randn(0f32, 1.0, (k, n), &Device::Cpu).expect("w");
        let w16 = w.to_dtype(DType::BF16).expect("bf16");
        for threads in [1, cores] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            let flop = 2.0 * (rows * k * n) as f64 / 1e9;
            // GFLOP/s by the median wall time, and GFLOP per CPU second over the 10 timed runs
            // (what each busy thread achieves, whatever else shares the cores).
            let rate = |f: &(dyn Fn() -> candle_core::Result<Tensor> + Sync)| -> Option<String> {
                pool.install(f).ok()?;
                let cpu = cpu_seconds();
                let times: Option<Vec<f64>> = (0..10)
                    .map(|_| {
                        let t = Instant::now();
                        std::hint::black_box(pool.install(f).ok()?);
                        Some(t.elapsed().as_secs_f64())
                    })
                    .collect();
                let cpu = cpu_seconds() - cpu;
                let wall = flop / median(times?);
                Some(format!("{wall:.1} GFLOP/s ({:.1} per CPU s)", 10.0 * flop / cpu))
            };
            let f32s = rate(&|| x.matmul(&w)).unwrap_or_default();
            let bf16 = rate(&|| cpu_bf16_matmul(&x, &w16)).unwrap_or_else(|| "no MKL".into());
            println!("{name} {rows}x{k}x{n}, {threads} thread(s): candle f32 {f32s}, bf16 (MKL) {bf16}");
        }
    }
}

fn main() {
    let repeats: usize = std::env::var("FLOOR_REPEATS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    if let Ok(spec) = std::env::var("FLOOR_CHILD") {
        let mut parts = spec.split('|');
        let (spec, dtype) = (parts.next().unwrap_or(""), parts.next().unwrap_or("f32"));
        let o = llm_attr_seconds(spec, dtype, repeats);
        let (cold, warm) = (o.cold_computed, o.warm_computed);
        println!("{} {cold} {} {warm} {} {}", o.cold, o.warm, o.load, o.tokens);
        return;
    }
    if std::env::var_os("FLOOR_MATMUL").is_some() {
        matmul_gflops();
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let models = env_list("FLOOR_MODELS", "models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let threads: Vec<usize> = env_list("FLOOR_THREADS", &cores.to_string())
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    let py = std::env::var("FLOOR_PY").ok();
    println!("load average before: {}", load_average());
    for spec in &models {
        let dir = py.as_ref().and_then(|_| torch_dir(spec));
        for dtype in env_list("FLOOR_DTYPES", "f32") {
            for &n in &threads {
                let Some(o) = child(spec, &dtype, n, repeats) else {
                    println!("{spec} {dtype} {n} threads: llm-attr failed");
                    continue;
                };
                let torch = match (&py, &dir) {
                    (Some(py), Some(dir)) => torch_seconds(py, dir, &dtype, n, repeats),
                    _ => None,
                };
                let vs = torch.map_or("no PyTorch side (set FLOOR_PY)".to_string(), |t| {
                    format!(
                        "PyTorch {t:.3} s; llm-attr / PyTorch {:.2} warm, {:.2} cold",
                        o.warm / t,
                        o.cold / t
                    )
                });
                println!(
                    "{spec} {dtype} {n} threads: exact t1 ({} tokens) llm-attr {:.3} s warm ({} computed), {:.3} s cold ({} computed; loaded in {:.2} s); {vs}",
                    o.tokens, o.warm, o.warm_computed, o.cold, o.cold_computed, o.load
                );
            }
        }
    }
    println!("load average after: {}", load_average());
}
