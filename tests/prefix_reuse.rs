//! Shared-prefix reuse gives the scores of passes without it (within 1e-5 on f32): batches of
//! sequences sharing prefixes of varied lengths (the whole prompt, the prompt but its last
//! token, a few tokens, none), mixed groups, a warm prefix cache, and through the engine and a
//! whole attribution, on SmolLM2 (GGUF) and the tiny random families.

use std::path::Path;
use std::sync::Arc;

use llm_attr::engine::{CancelToken, Engine, EngineConfig};
use llm_attr::model::load::load;
use llm_attr::model::{LoadOptions, Model, ScoreItem};
use llm_attr::request::AttributeRequest;
use llm_attr::run::{plan, run, Limits};
use llm_attr::scorer::Scorer;

const SMOLLM2: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

const TEXT: &str = "The harbour committee met on a wet Tuesday in March. The clerk read the \
    minutes of the last meeting, and the members agreed that the eastern quay needed new \
    timber before the summer. The harbour master reported two storms in February, a fishing \
    boat lost off the point, and the price of coal up by a shilling a ton. Mrs Hale asked \
    whether the lighthouse keeper had been paid, and the treasurer said he had, though late. \
    The committee resolved to write to the county about the road to the station.";

/// A model of its own (the tests switch its reuse on and off).
fn fresh(spec: &str) -> Model {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(spec);
    load(path.to_str().unwrap(), &LoadOptions::default()).unwrap()
}

/// `n` deterministic token ids below `vocab`, by `seed`.
fn ids(seed: u32, n: usize, vocab: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| {
            let x = seed.wrapping_mul(2_654_435_761) ^ i.wrapping_mul(40_503).wrapping_add(seed);
            5 + x % (vocab - 10)
        })
        .collect()
}

fn cat(a: &[u32], b: &[u32]) -> Vec<u32> {
    a.iter().chain(b).copied().collect()
}

fn item(prompt: Vec<u32>, target: Vec<u32>) -> ScoreItem {
    ScoreItem { prompt, target }
}

/// Sequences that share prefixes of every kind, in one batch; `v(seed, n)` gives `n` tokens.
fn batch(v: impl Fn(u32, usize) -> Vec<u32>) -> Vec<ScoreItem> {
    let p = v(1, 24);
    let a = cat(&p, &v(2, 5));
    let mut minus_one = a[..a.len() - 1].to_vec();
    minus_one.push(v(18, 1)[0]);
    let q = v(10, 12);
    vec![
        item(a.clone(), v(3, 4)),
        item(cat(&p, &v(4, 11)), v(5, 2)),
        // The same prompt with another target.
        item(a.clone(), v(6, 3)),
        // The prompt but its last token shared, a one-token target.
        item(minus_one, v(7, 1)),
        // Nothing shared.
        item(v(8, 17), v(9, 3)),
        // A second group.
        item(cat(&q, &v(11, 3)), v(12, 2)),
        item(cat(&q, &v(13, 9)), v(14, 5)),
        // A few tokens shared with the first group.
        item(cat(&p[..9], &v(15, 20)), v(16, 2)),
        // A one-token prompt.
        item(v(17, 1), v(19, 3)),
    ]
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

/// Scores `items` as one batch, then one by one (from the prefix cache), then in batches of a
/// small budget, with reuse and without; the reused tokens grow.
fn check_parity(m: &Model, items: &[ScoreItem], what: &str) {
    let one_by_one = |m: &Model| -> Vec<Vec<f32>> {
        items
            .iter()
            .flat_map(|it| m.score(std::slice::from_ref(it)).unwrap())
            .collect()
    };
    m.set_prefix_reuse(false);
    let want = [
        m.score(items).unwrap(),
        one_by_one(m),
        m.score_all(items, 64).unwrap(),
    ];
    m.set_prefix_reuse(true);
    m.set_prefix_cache_bytes(64 << 20);
    let (_, reused0) = m.token_counts();
    let batched = m.score(items).unwrap();
    let (_, reused1) = m.token_counts();
    assert!(reused1 > reused0, "{what}: the batch reused nothing");
    let single = one_by_one(m);
    let (_, reused2) = m.token_counts();
    assert!(reused2 > reused1, "{what}: the cache gave nothing");
    m.set_prefix_cache_bytes(64 << 20);
    let budgeted = m.score_all(items, 64).unwrap();
    let got = [batched, single, budgeted];
    for (k, how) in ["one batch", "one by one", "budget 64"].iter().enumerate() {
        let d = max_diff(&want[k], &got[k]);
        assert!(d < 1e-5, "{what}, {how}: max difference {d}");
    }
}

#[test]
fn families_score_the_same_with_and_without_reuse() {
    for family in ["llama", "gemma2", "qwen3", "tiny-gpt2"] {
        let m = fresh(&format!("tests/fixtures/{family}"));
        let vocab = m.info().arch.vocab_size as u32;
        check_parity(&m, &batch(|seed, n| ids(seed, n, vocab)), family);
    }
}

#[test]
fn smollm2_scores_the_same_with_and_without_reuse() {
    // Windows of English text: the log-probs of random ids (-10 to -25) are beyond what f32
    // keeps to 1e-5 whatever the batch (a batch of one and of nine differ by 6e-6 there).
    let m = fresh(SMOLLM2);
    let text = m.tokenizer().encode(TEXT).unwrap();
    let window = |seed: u32, n: usize| {
        let start = (seed as usize * 37) % (text.len() - n);
        text[start..start + n].to_vec()
    };
    check_parity(&m, &batch(window), "smollm2");
}

/// Through the engine: each handle counts its own tokens, computed and reused, which add up
/// to its sequences' input tokens; the engine's stats count the reuse and the cache's lookups.
#[test]
fn the_engine_counts_reused_tokens_per_request() {
    let model = Arc::new(fresh("tests/fixtures/llama"));
    let engine = Engine::new(model.clone(), EngineConfig::default()).unwrap();
    let vocab = model.info().arch.vocab_size as u32;
    let items = batch(|seed, n| ids(seed, n, vocab));
    let total: u64 = items.iter().map(|it| it.input_len() as u64).sum();
    model.set_prefix_reuse(false);
    let want = model.score(&items).unwrap();
    model.set_prefix_reuse(true);
    for round in 0..2 {
        let h = engine.handle(CancelToken::new());
        let got = h.score_items(items.clone(), &|_, _| {}).unwrap();
        assert!(max_diff(&want, &got) < 1e-5);
        let work = h.tokens().unwrap();
        assert_eq!(work.computed + work.reused, total, "round {round}");
        assert!(work.reused > 0 && work.computed > 0, "round {round}: {work:?}");
    }
    let st = engine.stats();
    assert!(st.reused_tokens.load(std::sync::atomic::Ordering::Relaxed) > 0);
    assert!(st.prefix_hit_rate() > 0.0);
}

fn chat_t1() -> AttributeRequest {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/t1_chat.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Chat t1 (exact Shapley values over the baselines' product), rendered by the Llama 3 chat
/// template of the tiny Llama, gives the same attributions with and without reuse, and
/// computes at least a third fewer tokens with it (SmolLM2's numbers: `benches/prefix.rs`):
/// exactly the plan's `tokens_after_reuse`, the fewest that any exact prefix reuse computes.
#[test]
fn chat_shapley_is_the_same_with_reuse_and_computes_less() {
    let m = fresh("tests/fixtures/llama");
    let request = chat_t1();
    let limits = Limits::default();
    m.set_prefix_reuse(false);
    let off = run(&request, &m, &limits, &|_| {}).unwrap();
    m.set_prefix_reuse(true);
    let on = run(&request, &m, &limits, &|_| {}).unwrap();
    for (a, b) in off.seq_attr.iter().zip(&on.seq_attr) {
        assert!((a - b).abs() < 1e-5, "seq_attr {a} vs {b}");
    }
    for (ra, rb) in off.token_attr.iter().zip(&on.token_attr) {
        for (a, b) in ra.iter().zip(rb) {
            assert!((a - b).abs() < 1e-5, "token_attr {a} vs {b}");
        }
    }
    let (s_off, s_on) = (&off.stats, &on.stats);
    assert_eq!(
        (s_off.tokens_reused, s_off.tokens_computed),
        (0, s_off.tokens_scored)
    );
    assert_eq!(s_on.tokens_computed + s_on.tokens_reused, s_on.tokens_scored);
    assert!(
        3 * s_on.tokens_computed <= 2 * s_off.tokens_computed,
        "computed {} with reuse, {} without",
        s_on.tokens_computed,
        s_off.tokens_computed
    );
    // With an empty prefix cache, reuse computes each distinct prefix once: the floor that the
    // plan counts (`tokens_after_reuse`), and not a token more.
    let floor = plan(&request, &m, &limits).unwrap().tokens_after_reuse;
    assert_eq!(s_on.tokens_computed, floor, "the plan's floor");
}

/// Every perturbation method, on chat t1 through the tiny Llama's chat template with a seed
/// (the sampling methods draw the same design either way), gives the same attributions with
/// and without reuse.
#[test]
fn every_perturbation_method_is_the_same_with_and_without_reuse() {
    use llm_attr::request::Method;
    let m = fresh("tests/fixtures/llama");
    let limits = Limits::default();
    for method in [
        Method::FeatureAblation,
        Method::ShapleyValues,
        Method::ShapleyValueSampling,
        Method::Lime,
        Method::KernelShap,
        Method::ContextCite,
    ] {
        let request = AttributeRequest {
            method,
            n_samples: Some(12),
            seed: Some(7),
            ..chat_t1()
        };
        m.set_prefix_reuse(false);
        let off = run(&request, &m, &limits, &|_| {}).unwrap();
        m.set_prefix_reuse(true);
        let on = run(&request, &m, &limits, &|_| {}).unwrap();
        assert!(on.stats.tokens_reused > 0, "{method:?}: nothing reused");
        let rows = |r: &llm_attr::request::AttributeResponse| {
            std::iter::once(r.seq_attr.clone())
                .chain(r.token_attr.iter().cloned())
                .collect::<Vec<_>>()
        };
        for (a, b) in rows(&off).iter().flatten().zip(rows(&on).iter().flatten()) {
            assert!((a - b).abs() < 1e-5, "{method:?}: {a} vs {b}");
        }
    }
}
