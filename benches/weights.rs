//! Loading a model's weights: seconds and resident memory (bytes per parameter) for a
//! safetensors model at the random Llama-3.2-1B shape, from a bf16 file and from an f32 file,
//! loaded in f32 (the CPU's dtype), each in a fresh process so that one load's memory does not
//! count in the next.
//!
//!     cargo bench --bench weights
//!     WEIGHTS_DIR=/work/models-1b WEIGHTS_FILES=bf16,f32 WEIGHTS_REPEATS=3 cargo bench --bench weights
//!
//! `WEIGHTS_DTYPE=bf16` loads in bf16 instead (see [`dtype`]).
//! `WEIGHTS_DIR` holds `llama-1b-bf16/` and `llama-1b-f32/` (default `target/models-1b`); a
//! missing one is made with `scripts/random_model.py --shape llama-1b` by `WEIGHTS_PYTHON`
//! (default `python3`, which needs torch and safetensors). Each load is warm: the file is read
//! once first, so it is in the page cache. Prints, per file, the median load seconds (and the
//! CPU seconds of that load: on a shared machine, the wall time depends on the others), the
//! resident memory after the load (anonymous and file-backed: pages of the memory map still
//! mapped) and the peak, per parameter, and one log-prob (the same file must give the same value
//! before and after a change to loading).

mod common;

use common::cpu_seconds;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use candle_core::DType;
use llm_attr::model::{resolve, DeviceChoice, DtypeChoice, LoadOptions, Model, ScoreItem};

/// The variable that tells a child process which model directory to load.
const CHILD: &str = "WEIGHTS_CHILD";

/// A field of /proc/self/status in bytes (0 where there is none: not Linux).
fn status_bytes(name: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kb| kb * 1024.0)
}

/// `WEIGHTS_DTYPE`: the dtype to load in, `f32` (the default) or `bf16` (through `--dtype`'s
/// check: a CPU with AMX-bf16 or AVX512-BF16, or `LLM_ATTR_CPU_BF16=emulate`, and MKL).
fn dtype() -> String {
    std::env::var("WEIGHTS_DTYPE").unwrap_or_else(|_| "f32".into())
}

fn options() -> anyhow::Result<LoadOptions> {
    Ok(match dtype().as_str() {
        "bf16" => resolve(DeviceChoice::Cpu, DtypeChoice::Fixed(DType::BF16))?,
        _ => LoadOptions::default(),
    })
}

/// In a child: loads `dir` once and prints one line of numbers for the parent.
fn child(dir: &str) -> anyhow::Result<()> {
    let options = options()?;
    let before = status_bytes("VmRSS:");
    let cpu = cpu_seconds();
    let t = Instant::now();
    let model = Model::load(dir, &options).map_err(|e| anyhow::anyhow!("{dir}: {e}"))?;
    let seconds = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    let (rss, anon, file, peak) = (
        status_bytes("VmRSS:"),
        status_bytes("RssAnon:"),
        status_bytes("RssFile:"),
        status_bytes("VmHWM:"),
    );
    let params = model.info().arch.parameters as f64;
    let item = ScoreItem {
        prompt: vec![1, 2, 3, 4, 5, 6, 7, 8],
        target: vec![9, 10],
    };
    let lp = model.score(&[item]).map_err(|e| anyhow::anyhow!("{e}"))?;
    let sum: f64 = lp.iter().flatten().map(|&x| f64::from(x)).sum();
    println!(
        "{seconds} {} {} {} {} {params} {sum} {cpu}",
        (rss - before) / params,
        anon / params,
        file / params,
        peak / params
    );
    Ok(())
}

/// Makes `dir` with scripts/random_model.py when it is missing.
fn ensure(dir: &Path, dtype: &str) -> anyhow::Result<()> {
    if dir.join("model.safetensors").is_file() {
        return Ok(());
    }
    let python = std::env::var("WEIGHTS_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/random_model.py");
    let torch_dtype = if dtype == "bf16" { "bfloat16" } else { "float32" };
    eprintln!("making {} with {python} {script}", dir.display());
    let status = Command::new(&python)
        .args([script, "--shape", "llama-1b", "--dtype", torch_dtype, "--out"])
        .arg(dir)
        .status()?;
    anyhow::ensure!(status.success(), "{script} failed for {}", dir.display());
    Ok(())
}

/// Reads the weights once, so that the loads that follow find them in the page cache.
fn warm(dir: &Path) -> anyhow::Result<()> {
    let mut f = std::fs::File::open(dir.join("model.safetensors"))?;
    let mut buf = vec![0u8; 1 << 20];
    while f.read(&mut buf)? > 0 {}
    Ok(())
}

/// One load in a fresh process: its numbers.
fn measure(dir: &Path) -> anyhow::Result<Vec<f64>> {
    let out = Command::new(std::env::current_exe()?).env(CHILD, dir).output()?;
    anyhow::ensure!(
        out.status.success(),
        "loading {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    Ok(line.split_whitespace().filter_map(|v| v.parse().ok()).collect())
}

fn main() -> anyhow::Result<()> {
    if let Ok(dir) = std::env::var(CHILD) {
        return child(&dir);
    }
    let root = std::env::var("WEIGHTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/models-1b"));
    let files = std::env::var("WEIGHTS_FILES").unwrap_or_else(|_| "bf16,f32".into());
    let repeats: usize = std::env::var("WEIGHTS_REPEATS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    println!(
        "loading the llama-1b shape in {} on the CPU ({} threads), warm, median of {repeats}",
        dtype(),
        rayon::current_num_threads()
    );
    for dtype in files.split(',').map(str::trim) {
        let dir = root.join(format!("llama-1b-{dtype}"));
        ensure(&dir, dtype)?;
        warm(&dir)?;
        let mut runs = Vec::new();
        for _ in 0..repeats.max(1) {
            runs.push(measure(&dir)?);
        }
        runs.sort_by(|a, b| a[0].total_cmp(&b[0]));
        let m = &runs[runs.len() / 2];
        anyhow::ensure!(m.len() == 8, "unexpected child output {m:?}");
        let times: Vec<String> = runs.iter().map(|r| format!("{:.2}", r[0])).collect();
        println!(
            "{dtype} file -> {}: {:.2} s (runs {}; {:.1} CPU s), {:.2}B parameters; RSS after load {:.2} bytes/param \
             (anonymous {:.2}, file-backed {:.2}), peak {:.2}; log-prob sum {:.6}",
            self::dtype(),
            m[0],
            times.join(" "),
            m[7],
            m[5] / 1e9,
            m[1],
            m[2],
            m[3],
            m[4],
            m[6]
        );
    }
    Ok(())
}
