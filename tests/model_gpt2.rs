//! GPT-2 against PyTorch reference numbers (tests/fixtures/tiny-gpt2), batching, generation and
//! bad input.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use candle_core::{Device, IndexOp, Tensor};
use llm_attr::error::Error;
use llm_attr::model::{greedy, Architecture, LoadOptions, Model, ModelSpec, ScoreItem};
use serde::Deserialize;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt2")
}

fn model() -> Arc<Model> {
    static MODEL: OnceLock<Arc<Model>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            Model::load(fixtures().to_str().unwrap(), &LoadOptions::default()).expect("tiny-gpt2 loads")
        })
        .clone()
}

#[derive(Deserialize)]
struct TokCase {
    text: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct LogprobCase {
    prompt: String,
    target: String,
    prompt_ids: Vec<u32>,
    target_ids: Vec<u32>,
    target_logprobs: Vec<f64>,
}

/// Each case's prompt and target ids, to score.
fn score_items(cases: &[LogprobCase]) -> Vec<ScoreItem> {
    cases
        .iter()
        .map(|c| ScoreItem {
            prompt: c.prompt_ids.clone(),
            target: c.target_ids.clone(),
        })
        .collect()
}

fn read<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let text = std::fs::read_to_string(fixtures().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn tokenization_matches_reference() {
    let m = model();
    let cases: Vec<TokCase> = read("tokenization.json");
    assert!(cases.len() >= 5);
    for c in &cases {
        let ids = m.tokenizer().encode(&c.text).unwrap();
        assert_eq!(ids, c.ids, "text {:?}", c.text);
        // Byte-level BPE round-trips exactly.
        assert_eq!(m.tokenizer().decode(&ids).unwrap(), c.text);
    }
}

#[test]
fn logprobs_match_pytorch() {
    let m = model();
    let cases: Vec<LogprobCase> = read("logprobs.json");
    assert!(!cases.is_empty());
    let items = score_items(&cases);
    for c in &cases {
        assert_eq!(m.tokenizer().encode(&c.prompt).unwrap(), c.prompt_ids);
        assert_eq!(m.tokenizer().encode(&c.target).unwrap(), c.target_ids);
    }
    let mut worst = 0f64;
    for (c, got) in cases.iter().zip(m.score(&items).unwrap()) {
        assert_eq!(got.len(), c.target_logprobs.len());
        for (k, (&g, &r)) in got.iter().zip(&c.target_logprobs).enumerate() {
            let d = (g as f64 - r).abs();
            worst = worst.max(d);
            assert!(d < 1e-4, "{:?} token {k}: got {g}, reference {r}", c.prompt);
        }
    }
    eprintln!("worst |log-prob difference| vs PyTorch: {worst:.2e}");
}

/// Sequences of different lengths, scored one by one and right-padded together, agree.
#[test]
fn batch_equals_single() {
    let m = model();
    let cases: Vec<LogprobCase> = read("logprobs.json");
    let mut items = score_items(&cases);
    // Mixed lengths: a short prompt with a one-token target, a truncated prompt, a long one.
    items.push(ScoreItem {
        prompt: vec![464],
        target: vec![3290],
    });
    items.push(ScoreItem {
        prompt: cases[0].prompt_ids[..5].to_vec(),
        target: cases[0].target_ids[..2].to_vec(),
    });
    let lens: Vec<usize> = items.iter().map(ScoreItem::input_len).collect();
    assert!(lens.iter().min() != lens.iter().max(), "lengths must differ");
    let batched = m.score(&items).unwrap();
    for (item, b) in items.iter().zip(&batched) {
        let single = m.score(std::slice::from_ref(item)).unwrap().remove(0);
        for (x, y) in single.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "single {x} vs batched {y}");
        }
    }
    // score_all with a small budget (several batches, reordered) gives the same numbers.
    let all = m.score_all(&items, 40).unwrap();
    for (a, b) in all.iter().zip(&batched) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5);
        }
    }
}

/// Argmax decoding by full recomputation: one full forward pass per new token, no cache.
fn greedy_without_cache(arch: &dyn Architecture, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut seq = prompt.to_vec();
    for _ in 0..n {
        let ids = Tensor::from_vec(seq.clone(), (1, seq.len()), &Device::Cpu).unwrap();
        let hidden = arch.hidden(&ids).unwrap();
        let last = hidden.i((0, seq.len() - 1..seq.len())).unwrap();
        let logits: Vec<f32> = arch.logits(&last).unwrap().i(0).unwrap().to_vec1().unwrap();
        let mut best = 0;
        for (i, &v) in logits.iter().enumerate() {
            if v > logits[best] {
                best = i;
            }
        }
        seq.push(best as u32);
    }
    seq[prompt.len()..].to_vec()
}

#[test]
fn greedy_with_cache_equals_recomputation() {
    let dir = fixtures();
    let arch = llm_attr::model::load::architecture(
        &dir.join("config.json"),
        &[dir.join("model.safetensors")],
        &LoadOptions::default(),
    )
    .unwrap();
    let cases: Vec<LogprobCase> = read("logprobs.json");
    for c in cases.iter().take(3) {
        let cached = greedy(arch.as_ref(), &c.prompt_ids, 12, &[]).unwrap();
        assert_eq!(cached.len(), 12);
        let full = greedy_without_cache(arch.as_ref(), &c.prompt_ids, 12);
        assert_eq!(cached, full, "prompt {:?}", c.prompt);
        // Stopping: with the 3rd generated id as a stop id, generation ends there, stop included.
        let stop = cached[2];
        let first = cached.iter().position(|&t| t == stop).unwrap();
        assert_eq!(
            greedy(arch.as_ref(), &c.prompt_ids, 12, &[stop]).unwrap(),
            cached[..=first]
        );
        // Through the model (EOS = 50256 stops).
        let m = model();
        let via_model = m.generate(&c.prompt_ids, 12).unwrap();
        let end = cached.iter().position(|&t| t == 50256).map_or(12, |p| p + 1);
        assert_eq!(via_model, cached[..end]);
    }
}

fn expect_model_err(spec: &str, needle: &str) {
    match Model::load(spec, &LoadOptions::default()) {
        Ok(_) => panic!("{spec} loaded"),
        Err(e) => {
            let msg = e.to_string();
            eprintln!("{msg}");
            assert!(msg.starts_with("model"), "{msg}");
            assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
        }
    }
}

/// A copy of the tiny-gpt2 directory with one file replaced (or removed when `content` is None).
fn patched_dir(file: &str, content: Option<&[u8]>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(fixtures().join(f), dir.path().join(f)).unwrap();
    }
    match content {
        Some(c) => std::fs::write(dir.path().join(file), c).unwrap(),
        None => std::fs::remove_file(dir.path().join(file)).unwrap(),
    }
    dir
}

#[test]
fn bad_model_files_give_clear_errors() {
    expect_model_err("/no/such/dir", "does not exist");
    expect_model_err("/no/such/model.gguf", "does not exist");
    expect_model_err("", "empty");
    expect_model_err("hf:", "not a valid hub repo");
    expect_model_err("hf:a/b/c", "not a valid hub repo");
    expect_model_err("hf:org/name@", "invalid revision");

    let d = patched_dir("model.safetensors", None);
    expect_model_err(d.path().to_str().unwrap(), "no .safetensors");

    let d = patched_dir("model.safetensors", Some(b"this is not a safetensors file"));
    expect_model_err(d.path().to_str().unwrap(), "cannot read safetensors");

    // Truncated: a valid header whose data is cut short.
    let full = std::fs::read(fixtures().join("model.safetensors")).unwrap();
    let d = patched_dir("model.safetensors", Some(&full[..full.len() / 2]));
    expect_model_err(d.path().to_str().unwrap(), "safetensors");

    let d = patched_dir("config.json", Some(b"{ not json"));
    expect_model_err(d.path().to_str().unwrap(), "not valid JSON");

    let cfg = std::fs::read_to_string(fixtures().join("config.json")).unwrap();
    let d = patched_dir(
        "config.json",
        Some(cfg.replace("\"gpt2\"", "\"bert\"").as_bytes()),
    );
    expect_model_err(
        d.path().to_str().unwrap(),
        "unsupported model_type `bert` (supported: gpt2, llama, mistral, qwen2, qwen3, phi3, gemma2)",
    );

    let d = patched_dir(
        "config.json",
        Some(cfg.replace("\"n_head\": 4", "\"n_head\": 5").as_bytes()),
    );
    expect_model_err(d.path().to_str().unwrap(), "not a multiple of n_head");

    let d = patched_dir(
        "config.json",
        Some(cfg.replace("\"n_embd\": 64", "\"n_embd\": 32").as_bytes()),
    );
    expect_model_err(d.path().to_str().unwrap(), "has shape");

    let d = patched_dir("tokenizer.json", None);
    expect_model_err(d.path().to_str().unwrap(), "no tokenizer.json");

    let d = patched_dir("tokenizer.json", Some(b"{\"model\": 3}"));
    expect_model_err(d.path().to_str().unwrap(), "cannot read tokenizer");

    let d = patched_dir("config.json", None);
    expect_model_err(d.path().to_str().unwrap(), "no config.json");
}

#[test]
fn spec_parsing() {
    assert_eq!(
        ModelSpec::parse("hf:distilbert/distilgpt2").unwrap(),
        ModelSpec::Hub {
            repo: "distilbert/distilgpt2".into(),
            revision: None
        }
    );
    assert_eq!(
        ModelSpec::parse("hf:gpt2@refs/pr/1").unwrap(),
        ModelSpec::Hub {
            repo: "gpt2".into(),
            revision: Some("refs/pr/1".into())
        }
    );
    assert_eq!(
        ModelSpec::parse(fixtures().to_str().unwrap()).unwrap(),
        ModelSpec::Dir(fixtures())
    );
    let e = ModelSpec::parse(fixtures().join("config.json").to_str().unwrap()).unwrap_err();
    assert_eq!(e.field(), Some("model"));
}

#[test]
fn bad_scoring_input_gives_clear_errors() {
    let m = model();
    assert_eq!(m.context_length(), 128);
    let check = |items: Vec<ScoreItem>, needle: &str| {
        let e = m.score(&items).unwrap_err();
        assert!(e.to_string().contains(needle), "{e}");
        assert_eq!(e.field(), Some("sequences[1]"), "{e}");
    };
    let ok = ScoreItem {
        prompt: vec![1, 2],
        target: vec![3],
    };
    check(
        vec![
            ok.clone(),
            ScoreItem {
                prompt: vec![1; 120],
                target: vec![2; 10],
            },
        ],
        "exceed the model's context length of 128",
    );
    check(
        vec![
            ok.clone(),
            ScoreItem {
                prompt: vec![1, 2],
                target: vec![],
            },
        ],
        "target is empty",
    );
    check(
        vec![
            ok.clone(),
            ScoreItem {
                prompt: vec![1, 50257],
                target: vec![2],
            },
        ],
        "token id 50257 is out of range",
    );
    check(
        vec![
            ok.clone(),
            ScoreItem {
                prompt: vec![1],
                target: vec![u32::MAX],
            },
        ],
        "out of range",
    );
    // Exactly the context length is fine: 120 + 9 - 1 = 128 inputs.
    let full = ScoreItem {
        prompt: vec![1; 120],
        target: vec![2; 9],
    };
    assert_eq!(m.score(&[full]).unwrap()[0].len(), 9);

    let e = m.generate(&[1; 120], 20).unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e}");
    let e = m.generate(&[], 5).unwrap_err();
    assert_eq!(e.field(), Some("prompt"));
    let e = m.generate(&[60000], 5).unwrap_err();
    assert!(e.to_string().contains("out of range"), "{e}");
}

#[test]
fn model_is_shareable_across_threads() {
    fn shareable<T: Send + Sync + 'static>(_: &T) {}
    let m = model();
    shareable(&m);
    let items = vec![ScoreItem {
        prompt: vec![464, 3290],
        target: vec![13, 198],
    }];
    let want = m.score(&items).unwrap();
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let (m, items) = (m.clone(), items.clone());
            std::thread::spawn(move || m.score(&items).unwrap())
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), want);
    }
}

#[test]
fn info_describes_the_model() {
    let m = model();
    let i = &m.info().arch;
    assert_eq!(i.architecture, "gpt2");
    assert_eq!(
        (i.vocab_size, i.hidden_size, i.layers, i.heads),
        (50257, 64, 2, 4)
    );
    // wte + wpe + 2 blocks + ln_f, lm_head tied.
    let block = 2 * 64 + (64 * 192 + 192) + (64 * 64 + 64) + 2 * 64 + (64 * 256 + 256) + (256 * 64 + 64);
    assert_eq!(i.parameters, 50257 * 64 + 128 * 64 + 2 * block + 2 * 64);
    assert_eq!(m.tokenizer().eos_ids(), &[50256]);
}

/// The fixture's weights rewritten: names without the `transformer.` prefix (as in the original
/// `gpt2` checkpoint, with its `attn.bias` mask buffers) and an explicit `lm_head.weight`.
fn rewritten_dir(lm_head_scale: Option<f64>, tie: bool) -> tempfile::TempDir {
    use std::collections::HashMap;
    let dir = tempfile::tempdir().unwrap();
    let tensors = candle_core::safetensors::load(fixtures().join("model.safetensors"), &Device::Cpu).unwrap();
    let mut out: HashMap<String, Tensor> = HashMap::new();
    for (name, t) in tensors {
        out.insert(name.trim_start_matches("transformer.").to_string(), t);
    }
    for i in 0..2 {
        out.insert(
            format!("h.{i}.attn.bias"),
            Tensor::ones((1, 1, 128, 128), candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    }
    if let Some(scale) = lm_head_scale {
        let head = (out["wte.weight"].clone() * scale).unwrap();
        out.insert("lm_head.weight".into(), head);
    }
    candle_core::safetensors::save(&out, dir.path().join("model.safetensors")).unwrap();
    let cfg = std::fs::read_to_string(fixtures().join("config.json")).unwrap();
    let cfg = if tie {
        cfg
    } else {
        cfg.replace("\"tie_word_embeddings\": true", "\"tie_word_embeddings\": false")
    };
    std::fs::write(dir.path().join("config.json"), cfg).unwrap();
    std::fs::copy(
        fixtures().join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    dir
}

#[test]
fn tensor_names_without_prefix_and_explicit_lm_head() {
    let cases: Vec<LogprobCase> = read("logprobs.json");
    let items = score_items(&cases);
    // A model of its own, not the shared one: the shared model's prefix cache holds other
    // tests' prefixes, and a cached prefix may round differently (within 1e-5) from one
    // computed in the batch; both loads here start with an empty cache.
    let fresh = Model::load(fixtures().to_str().unwrap(), &LoadOptions::default()).unwrap();
    let want = fresh.score(&items).unwrap();

    // No prefix, lm_head stored as a copy of wte: the same numbers.
    let d = rewritten_dir(Some(1.0), true);
    let m = Model::load(d.path().to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(m.score(&items).unwrap(), want);

    // An untied head is really used: doubling it changes the scores.
    let d = rewritten_dir(Some(2.0), false);
    let m = Model::load(d.path().to_str().unwrap(), &LoadOptions::default()).unwrap();
    let got = m.score(&items).unwrap();
    assert!(got[0][0] != want[0][0], "{} == {}", got[0][0], want[0][0]);
    assert_eq!(
        m.info().arch.parameters,
        model().info().arch.parameters + 50257 * 64
    );

    // Untied without a head: a clear error.
    let d = rewritten_dir(None, false);
    expect_model_err(d.path().to_str().unwrap(), "no lm_head.weight");
}

#[test]
fn pretty_tokens_like_captum() {
    let m = model();
    let t = m.tokenizer();
    let ids = t
        .encode("reject the application without further consideration.")
        .unwrap();
    // tiny-gpt2/captum_t1.json output_tokens.
    assert_eq!(
        t.pretty_tokens(&ids),
        [
            "re",
            "ject",
            "the",
            "application",
            "without",
            "further",
            "consideration",
            "."
        ]
    );
    let ids = t.encode(" a\nb 🙂! 北京").unwrap();
    // Bytes of one character split over tokens share its span: Captum marks the repeats.
    assert_eq!(
        t.pretty_tokens(&ids),
        [
            "a",
            "\\n",
            "b",
            "🙂",
            "!",
            "北",
            "北 [OVERLAP]",
            "北 [OVERLAP]",
            "京",
            "京 [OVERLAP]"
        ]
    );
    // Ids that do not re-encode to themselves (a split character cut in half) use the fallback.
    assert_eq!(t.pretty_tokens(&ids[5..7]).len(), 2);
    assert_eq!(t.pretty_tokens(&[]), Vec::<String>::new());
}

/// `vocab.json` + `merges.txt` (what `tokenizer.json` was built from), as older GPT-2 repos ship.
fn write_vocab_merges(dir: &Path) {
    let tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("tokenizer.json")).unwrap()).unwrap();
    std::fs::write(dir.join("vocab.json"), tok["model"]["vocab"].to_string()).unwrap();
    let mut merges = String::from("#version: 0.2\n");
    for m in tok["model"]["merges"].as_array().unwrap() {
        let pair = m.as_array().unwrap();
        merges += &format!("{} {}\n", pair[0].as_str().unwrap(), pair[1].as_str().unwrap());
    }
    std::fs::write(dir.join("merges.txt"), merges).unwrap();
}

#[test]
fn vocab_and_merges_instead_of_tokenizer_json() {
    let d = patched_dir("tokenizer.json", None);
    write_vocab_merges(d.path());
    let m = Model::load(d.path().to_str().unwrap(), &LoadOptions::default()).unwrap();
    let cases: Vec<TokCase> = read("tokenization.json");
    for c in &cases {
        let ids = m.tokenizer().encode(&c.text).unwrap();
        assert_eq!(ids, c.ids, "text {:?}", c.text);
        assert_eq!(m.tokenizer().decode(&ids).unwrap(), c.text);
    }
    assert_eq!(m.tokenizer().encode("a<|endoftext|>").unwrap(), [64, 50256]);
    assert_eq!(m.tokenizer().eos_ids(), &[50256]);
    let reference = model();
    assert_eq!(
        m.tokenizer().pretty_tokens(&cases[0].ids),
        reference.tokenizer().pretty_tokens(&cases[0].ids)
    );
}

/// The scorer's fused log-softmax at the targets against an f64 reference at GPT-2's vocabulary
/// size, with wide logits and -inf entries.
#[test]
fn target_logprobs_match_f64_reference() {
    use llm_attr::model::target_logprobs;
    let logits = (Tensor::randn(0f32, 4.0, (5, 50_257), &Device::Cpu).unwrap() * 1.0).unwrap();
    let targets: Vec<u32> = vec![0, 17, 50_256, 3, 25_000];
    let got = target_logprobs(&logits, &targets).unwrap();
    for ((row, &t), g) in logits.to_vec2::<f32>().unwrap().iter().zip(&targets).zip(&got) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
        let want = row[t as usize] as f64 - lse;
        assert!((*g as f64 - want).abs() < 2e-5, "{g} vs {want}");
    }
    let small = Tensor::new(&[[0f32, f32::NEG_INFINITY, 1.0]], &Device::Cpu).unwrap();
    let lp = target_logprobs(&small, &[2]).unwrap()[0] as f64;
    assert!((lp - (1.0 - (1f64 + 1f64.exp()).ln())).abs() < 1e-6);
    assert_eq!(target_logprobs(&small, &[1]).unwrap()[0], f32::NEG_INFINITY);
    assert!(target_logprobs(&small, &[3]).is_err());
}
