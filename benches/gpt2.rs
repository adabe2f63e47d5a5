//! GPT-2 scoring throughput at distilgpt2's size (6 layers, 768 wide, 12 heads, 50257 tokens),
//! random weights, ~26 tokens per sequence. Prints tokens/s for batch sizes 1, 8, 32, 64 of
//! `Model::score`, and side by side in the same run the same work done less cleverly: every
//! block at every position, and the LM head at every position too (what a plain
//! `model(ids).logits` + `log_softmax` does). `--ops` times single operations instead.
//!
//!     cargo bench --bench gpt2

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, IndexOp, Tensor};
use llm_attr::model::bias_gelu;
use llm_attr::model::LoadOptions;
use llm_attr::model::{Architecture, Model, ScoreItem};
use rand::{Rng, SeedableRng};

const PROMPT: usize = 18;
const TARGET: usize = 8;

fn write_model(dir: &Path, layers: usize, c: usize, heads: usize, vocab: usize, ctx: usize) {
    let dev = Device::Cpu;
    let mut t: HashMap<String, Tensor> = HashMap::new();
    let mut put = |name: String, shape: &[usize], std: f64| {
        let x = if std == 1.0 {
            Tensor::ones(shape, DType::F32, &dev).unwrap()
        } else if std == 0.0 {
            Tensor::zeros(shape, DType::F32, &dev).unwrap()
        } else {
            Tensor::randn(0f32, std as f32, shape, &dev).unwrap()
        };
        t.insert(name, x);
    };
    put("wte.weight".into(), &[vocab, c], 0.02);
    put("wpe.weight".into(), &[ctx, c], 0.01);
    for i in 0..layers {
        let p = format!("h.{i}");
        for ln in ["ln_1", "ln_2"] {
            put(format!("{p}.{ln}.weight"), &[c], 1.0);
            put(format!("{p}.{ln}.bias"), &[c], 0.0);
        }
        for (name, n_in, n_out) in [
            ("attn.c_attn", c, 3 * c),
            ("attn.c_proj", c, c),
            ("mlp.c_fc", c, 4 * c),
            ("mlp.c_proj", 4 * c, c),
        ] {
            put(format!("{p}.{name}.weight"), &[n_in, n_out], 0.02);
            put(format!("{p}.{name}.bias"), &[n_out], 0.0);
        }
    }
    put("ln_f.weight".into(), &[c], 1.0);
    put("ln_f.bias".into(), &[c], 0.0);
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    let config = serde_json::json!({
        "model_type": "gpt2", "vocab_size": vocab, "n_embd": c, "n_head": heads,
        "n_layer": layers, "n_positions": ctx, "activation_function": "gelu_new",
        "eos_token_id": 50256,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt2");
    std::fs::copy(fixtures.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
}

/// Alternates calls of `a` and `b` (after a warm-up call of each) until `budget` has passed;
/// the fastest call of each, in seconds. Interleaving and taking the minimum keep the ratio
/// fair on a machine shared with other jobs.
fn time2<A: FnMut(), B: FnMut()>(mut a: A, mut b: B, budget: Duration) -> (f64, f64) {
    a();
    b();
    let start = Instant::now();
    let (mut ta, mut tb) = (f64::INFINITY, f64::INFINITY);
    let mut n = 0;
    while n < 3 || start.elapsed() < budget {
        let t = Instant::now();
        a();
        ta = ta.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        b();
        tb = tb.min(t.elapsed().as_secs_f64());
        n += 1;
    }
    (ta, tb)
}

/// Like `time2` for any number of functions.
fn time_all(fs: &mut [&mut dyn FnMut()], budget: Duration) -> Vec<f64> {
    for f in fs.iter_mut() {
        f();
    }
    let start = Instant::now();
    let mut best = vec![f64::INFINITY; fs.len()];
    let mut n = 0;
    while n < 3 || start.elapsed() < budget {
        for (f, b) in fs.iter_mut().zip(&mut best) {
            let t = Instant::now();
            f();
            *b = b.min(t.elapsed().as_secs_f64());
        }
        n += 1;
    }
    best
}

/// Runs `f` until at least `budget` has passed (after one warm-up call); seconds per call.
fn time<F: FnMut()>(mut f: F, budget: Duration) -> f64 {
    f();
    let start = Instant::now();
    let mut n = 0;
    while n < 2 || start.elapsed() < budget {
        f();
        n += 1;
    }
    start.elapsed().as_secs_f64() / n as f64
}

/// Resident set size of this process in MB (Linux), 0 if unknown.
fn rss_mb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

/// Input ids of equal-length items as one `[batch, len]` tensor, and `len`.
fn input_ids(items: &[ScoreItem]) -> (Tensor, usize) {
    let len = items[0].input_len();
    let ids: Vec<u32> = items
        .iter()
        .flat_map(|it| it.prompt.iter().chain(&it.target[..it.target.len() - 1]).copied())
        .collect();
    (
        Tensor::from_vec(ids, (items.len(), len), &Device::Cpu).unwrap(),
        len,
    )
}

/// Log-probs of the targets with every block computed at every position, then the LM head at
/// the target positions only (what `Model::score` did before `hidden_rows`).
fn score_all_rows_head_at_targets(arch: &dyn Architecture, items: &[ScoreItem]) -> Vec<f32> {
    let (ids, len) = input_ids(items);
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (b, it) in items.iter().enumerate() {
        for (k, &t) in it.target.iter().enumerate() {
            rows.push((b * len + it.prompt.len() - 1 + k) as u32);
            targets.push(t);
        }
    }
    let h = arch.hidden(&ids).unwrap();
    let h = h.reshape((items.len() * len, h.dim(2).unwrap())).unwrap();
    let rows = Tensor::from_vec(rows, targets.len(), &Device::Cpu).unwrap();
    let logits = arch.logits(&h.index_select(&rows, 0).unwrap()).unwrap();
    llm_attr::model::target_logprobs(&logits, &targets).unwrap()
}

/// Log-probs of the targets with the LM head over every position of the padded batch.
fn score_full_head(arch: &dyn Architecture, items: &[ScoreItem]) -> Vec<f32> {
    let (ids, len) = input_ids(items);
    let h = arch.hidden(&ids).unwrap();
    let h = h.reshape((items.len() * len, h.dim(2).unwrap())).unwrap();
    let logp = candle_nn::ops::log_softmax(&arch.logits(&h).unwrap(), 1).unwrap();
    let mut out = Vec::new();
    for (b, it) in items.iter().enumerate() {
        for (k, &t) in it.target.iter().enumerate() {
            let row = b * len + it.prompt.len() - 1 + k;
            out.push(logp.i((row, t as usize)).unwrap().to_scalar::<f32>().unwrap());
        }
    }
    out
}

/// Time of the main operations of one layer at batch 32 (800 tokens), to see where time goes.
fn ops(budget: Duration) {
    let dev = Device::Cpu;
    let (n, c) = (800usize, 768usize);
    let x = Tensor::randn(0f32, 1.0, (n, c), &dev).unwrap();
    let w = Tensor::randn(0f32, 0.02, (c, 4 * c), &dev).unwrap();
    let wt = w.t().unwrap().contiguous().unwrap();
    let b = Tensor::randn(0f32, 0.02, 4 * c, &dev).unwrap();
    let h = x.matmul(&w).unwrap();
    let g = Tensor::ones(c, DType::F32, &dev).unwrap();
    let att = Tensor::randn(0f32, 1.0, (32, 12, 25, 25), &dev).unwrap();
    let flops = 2.0 * (n * c * 4 * c) as f64;
    let report = |name: &str, s: f64| println!("  {name:40} {:8.2} ms", s * 1e3);
    let (s, st) = time2(
        || drop(x.matmul(&w).unwrap()),
        || drop(x.matmul(&wt.t().unwrap()).unwrap()),
        budget,
    );
    report("matmul [800,768]x[768,3072] (W [in,out])", s);
    println!("    = {:.1} GFLOP/s", flops / s / 1e9);
    report("matmul [800,768]x[3072,768]^T (W [out,in])", st);
    println!("    = {:.1} GFLOP/s", flops / st / 1e9);
    report(
        "bias broadcast_add [800,3072]",
        time(|| drop(h.broadcast_add(&b).unwrap()), budget),
    );
    let (candle_gelu, fused) = time2(
        || drop(h.broadcast_add(&b).unwrap().gelu().unwrap()),
        || drop(bias_gelu(&h, &b).unwrap()),
        budget,
    );
    report("candle broadcast_add + gelu [800,3072]", candle_gelu);
    report("fused parallel bias_gelu [800,3072]", fused);
    println!("    fused is {:.1}x faster", candle_gelu / fused);
    report(
        "layer_norm [800,768]",
        time(
            || drop(candle_nn::ops::layer_norm(&x, &g, &g, 1e-5).unwrap()),
            budget,
        ),
    );
    report(
        "softmax_last_dim [32,12,25,25]",
        time(|| drop(candle_nn::ops::softmax_last_dim(&att).unwrap()), budget),
    );
    let logits = Tensor::randn(0f32, 3.0, (256, 50257), &dev).unwrap();
    let targets: Vec<u32> = (0..256u32).map(|i| i * 191).collect();
    let t = Tensor::from_vec(targets.clone(), (256, 1), &dev).unwrap();
    let (candle, fused) = time2(
        || {
            let lp = candle_nn::ops::log_softmax(&logits, 1).unwrap();
            drop(lp.gather(&t, 1).unwrap().to_vec2::<f32>().unwrap())
        },
        || drop(llm_attr::model::target_logprobs(&logits, &targets).unwrap()),
        budget,
    );
    report("candle log_softmax + gather [256,50257]", candle);
    report("target_logprobs [256,50257]", fused);
    println!("    target_logprobs is {:.1}x faster", candle / fused);
    let rows = Tensor::randn(0f32, 1.0, (256, c), &dev).unwrap();
    let wte = Tensor::randn(0f32, 1.0, (50257, c), &dev).unwrap();
    report(
        "LM head [256,768]x[50257,768]^T",
        time(|| drop(rows.matmul(&wte.t().unwrap()).unwrap()), budget),
    );
    let qkv = Tensor::randn(0f32, 1.0, (n, 3 * c), &dev).unwrap();
    report(
        "qkv split permute+contiguous",
        time(
            || {
                drop(
                    qkv.reshape((32, 25, 3, 12, 64))
                        .unwrap()
                        .permute((2, 0, 3, 1, 4))
                        .unwrap()
                        .contiguous()
                        .unwrap(),
                )
            },
            budget,
        ),
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let budget = Duration::from_millis(if quick { 300 } else { 3000 });
    if std::env::args().any(|a| a == "--ops") {
        ops(budget);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), 6, 768, 12, 50257, 1024);
    let t0 = Instant::now();
    let model = Model::load(dir.path().to_str().unwrap(), &LoadOptions::default()).unwrap();
    println!(
        "load: {:.2} s, resident after loading: {} MB",
        t0.elapsed().as_secs_f64(),
        rss_mb()
    );
    let arch = llm_attr::model::load::architecture(
        &dir.path().join("config.json"),
        &[dir.path().join("model.safetensors")],
        &LoadOptions::default(),
    )
    .unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let threads = candle_core::utils::get_num_threads();
    println!(
        "distilgpt2-sized GPT-2, random weights, {} tokens per sequence, {threads} threads",
        PROMPT + TARGET
    );
    println!("tokens/s (best call of each, interleaved):");
    println!("  A = Model::score: last block and LM head at the target positions only");
    println!("  B = every block at every position, LM head at the target positions");
    println!("  C = every block and the LM head at every position, full log_softmax");
    println!("batch             A                  B                  C   speed-up A vs C");
    for bs in [1usize, 8, 32, 64] {
        let items: Vec<ScoreItem> = (0..bs)
            .map(|_| ScoreItem {
                prompt: (0..PROMPT).map(|_| rng.random_range(0..50000)).collect(),
                target: (0..TARGET).map(|_| rng.random_range(0..50000)).collect(),
            })
            .collect();
        let fast = model.score(&items).unwrap();
        let full = score_full_head(arch.as_ref(), &items);
        let middle = score_all_rows_head_at_targets(arch.as_ref(), &items);
        for other in [&full, &middle] {
            let worst = fast
                .iter()
                .flatten()
                .zip(other)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-3, "the paths disagree by {worst}");
        }
        let tokens = (bs * (PROMPT + TARGET)) as f64;
        let t = time_all(
            &mut [
                &mut || drop(model.score(&items).unwrap()),
                &mut || drop(score_all_rows_head_at_targets(arch.as_ref(), &items)),
                &mut || drop(score_full_head(arch.as_ref(), &items)),
            ],
            budget,
        );
        println!(
            "{bs:5}  {:12.0}  {:17.0}  {:17.0}  {:17.2}",
            tokens / t[0],
            tokens / t[1],
            tokens / t[2],
            t[2] / t[0]
        );
    }
    let prompt: Vec<u32> = (0..PROMPT as u32).map(|i| 100 + i).collect();
    let g = time(|| drop(model.generate(&prompt, 16).unwrap()), budget);
    println!("greedy generation (KV cache): {:.1} new tokens/s", 16.0 / g);
}
