//! Tokens/s of `Model::score` on SmolLM2-135M-Instruct for batch sizes 1, 8, 32, 64 at ~26 tokens
//! per sequence, median of several repeats; resident memory after loading; and, side by side,
//! one layer's projections as f32 matmuls (what the model runs) vs candle's Q4_1 matmul.
//!
//! `cargo bench --bench score` (LLM_ATTR_BENCH_QUICK=1 for fewer repeats).

use std::path::Path;
use std::time::Instant;

use candle_core::quantized::{gguf_file, QMatMul};
use candle_core::{Device, Module, Tensor};
use llm_attr::model::load::gguf;
use llm_attr::model::{LoadOptions, ScoreItem};

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let quick = std::env::var_os("LLM_ATTR_BENCH_QUICK").is_some();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let rss0 = rss_mb();
    let t = Instant::now();
    let model = gguf::load(&path, "smollm2", &LoadOptions::default())
        .expect("load models/SmolLM2-135M-Instruct.Q4_1.gguf");
    println!(
        "load: {:.2} s, VmRSS {:.0} MB after loading ({:.0} MB before), {} cores",
        t.elapsed().as_secs_f64(),
        rss_mb(),
        rss0,
        rayon_threads()
    );

    let tok = model.tokenizer();
    let prompt = tok
        .encode("Georg from Germany applied for a job as a janitor. The hiring manager decided to")
        .unwrap();
    let target = tok
        .encode(" reject the application without further consideration.")
        .unwrap();
    let item = ScoreItem { prompt, target };
    let per_seq = item.prompt.len() + item.target.len();
    println!(
        "sequence: {} prompt + {} target tokens",
        item.prompt.len(),
        item.target.len()
    );
    model.score(std::slice::from_ref(&item)).unwrap(); // warm-up

    for &batch in &[1usize, 8, 32, 64] {
        let items = vec![item.clone(); batch];
        let repeats = if quick { 2 } else { (96 / batch).clamp(3, 12) };
        let mut rates = Vec::new();
        for _ in 0..repeats {
            let t = Instant::now();
            let out = model.score(&items).unwrap();
            std::hint::black_box(out);
            rates.push((batch * per_seq) as f64 / t.elapsed().as_secs_f64());
        }
        let mut sorted = rates.clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "score batch {batch:>2}: {:>6.0} tokens/s median of {repeats} (min {:.0}, max {:.0})",
            median(rates),
            sorted[0],
            sorted[sorted.len() - 1]
        );
    }
    // Side by side: the same batches without shared-prefix reuse (the pass scoring ran before
    // reuse; with it, these identical sequences compute their shared prompt once).
    model.set_prefix_reuse(false);
    for &batch in &[1usize, 8, 32] {
        let items = vec![item.clone(); batch];
        let repeats = if quick { 2 } else { (96 / batch).clamp(3, 12) };
        let rates: Vec<f64> = (0..repeats)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(model.score(&items).unwrap());
                (batch * per_seq) as f64 / t.elapsed().as_secs_f64()
            })
            .collect();
        println!(
            "score batch {batch:>2} without reuse: {:>6.0} tokens/s median of {repeats}",
            median(rates)
        );
    }
    model.set_prefix_reuse(true);
    println!("VmRSS after scoring: {:.0} MB", rss_mb());

    // Greedy generation with the KV cache.
    let reps = if quick { 2 } else { 5 };
    let gen: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            let out = model.generate(&item.prompt, 12).unwrap();
            std::hint::black_box(out);
            t.elapsed().as_secs_f64()
        })
        .collect();
    println!(
        "generate 12 tokens after {} prompt tokens: {:.0} ms median",
        item.prompt.len(),
        median(gen) * 1e3
    );

    // Side by side at batch 64: the PyTorch-style computation (LM head at every position, then a
    // full log-softmax) on the same candle model, vs `Model::score` (head at target rows only,
    // fused log-prob of the target).
    let arch = model.arch();
    let items = vec![item.clone(); 64];
    let n = item.prompt.len() + item.target.len() - 1;
    let ids: Vec<u32> = items
        .iter()
        .flat_map(|it| it.prompt.iter().chain(&it.target[..it.target.len() - 1]).copied())
        .collect();
    let ids = Tensor::from_vec(ids, (64, n), &Device::Cpu).unwrap();
    let full = || {
        let h = arch.hidden(&ids).unwrap();
        let h = h.reshape((64 * n, h.dim(2).unwrap())).unwrap();
        let lp = candle_nn::ops::log_softmax(&arch.logits(&h).unwrap(), 1).unwrap();
        std::hint::black_box(lp);
    };
    let (mut ours, mut naive) = (Vec::new(), Vec::new());
    for _ in 0..if quick { 1 } else { 3 } {
        let t = Instant::now();
        std::hint::black_box(model.score(&items).unwrap());
        ours.push((64 * per_seq) as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        full();
        naive.push((64 * per_seq) as f64 / t.elapsed().as_secs_f64());
    }
    let (ours, naive) = (median(ours), median(naive));
    println!(
        "batch 64 side by side: Model::score {ours:.0} tokens/s, head at every position + log_softmax {naive:.0} tokens/s ({:.2}x)",
        ours / naive
    );

    // Side by side: one layer's weights as dequantized f32 (used) vs kept as Q4_1.
    let mut f = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let names = [
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
    ];
    let rows = 64 * per_seq;
    let mut f32_total = 0.0;
    let mut q_total = 0.0;
    for name in names {
        let q = content
            .tensor(&mut f, &format!("blk.0.{name}.weight"), &Device::Cpu)
            .unwrap();
        let w = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .t()
            .unwrap()
            .contiguous()
            .unwrap();
        let (k, _) = w.dims2().unwrap();
        let x = Tensor::randn(0f32, 1.0, (rows, k), &Device::Cpu).unwrap();
        let qm = QMatMul::from_qtensor(q).unwrap();
        let reps = if quick { 2 } else { 5 };
        let time = |f: &dyn Fn() -> Tensor| {
            median(
                (0..reps)
                    .map(|_| {
                        let t = Instant::now();
                        std::hint::black_box(f());
                        t.elapsed().as_secs_f64()
                    })
                    .collect(),
            )
        };
        f32_total += time(&|| x.matmul(&w).unwrap());
        q_total += time(&|| qm.forward(&x).unwrap());
    }
    println!(
        "one layer's projections on {rows} rows: f32 {:.1} ms, Q4_1 {:.1} ms ({:.1}x slower)",
        f32_total * 1e3,
        q_total * 1e3,
        q_total / f32_total
    );
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
