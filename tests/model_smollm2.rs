//! SmolLM2-135M-Instruct (GGUF, Q4_1 dequantized to f32) against the PyTorch reference.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use llm_attr::error::Error;
use llm_attr::model::load::gguf;
use llm_attr::model::LoadOptions;
use llm_attr::model::{Model, ScoreItem};
use serde::Deserialize;

fn model_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn model() -> &'static Model {
    static MODEL: OnceLock<Arc<Model>> = OnceLock::new();
    MODEL.get_or_init(|| {
        // Through the model spec, as `--model models/...gguf` does.
        Model::load(model_path().to_str().unwrap(), &LoadOptions::default())
            .expect("load SmolLM2 (scripts/fetch-models.sh)")
    })
}

fn fixture<T: for<'de> Deserialize<'de>>(name: &str) -> T {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/smollm2")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[derive(Deserialize)]
struct Tokenized {
    text: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Logprobs {
    prompt: String,
    target: String,
    prompt_ids: Vec<u32>,
    target_ids: Vec<u32>,
    target_logprobs: Vec<f64>,
}

#[derive(Deserialize)]
struct Generation {
    prompt: String,
    greedy_ids: Vec<u32>,
}

fn rows() -> Vec<Logprobs> {
    fixture("logprobs.json")
}

fn item(row: &Logprobs) -> ScoreItem {
    ScoreItem {
        prompt: row.prompt_ids.clone(),
        target: row.target_ids.clone(),
    }
}

#[test]
fn info_describes_smollm2() {
    let info = model().info();
    assert_eq!(info.arch.architecture, "llama");
    assert_eq!(info.arch.layers, 30);
    assert_eq!(info.arch.heads, 9);
    assert_eq!(info.arch.hidden_size, 576);
    assert_eq!(info.arch.vocab_size, 49152);
    assert_eq!(info.arch.context_length, 8192);
    assert!(
        (134_000_000..136_000_000).contains(&info.arch.parameters),
        "{}",
        info.arch.parameters
    );
    assert_eq!(model().tokenizer().eos_ids(), &[2]);
    // From the GGUF metadata, for chat input.
    let tok = model().tokenizer();
    assert!(tok.chat_template().is_some_and(|t| t.contains("<|im_start|>")));
    assert_eq!(
        (tok.bos_token(), tok.eos_token()),
        (Some("<|im_start|>"), Some("<|im_end|>"))
    );
}

#[test]
fn tokenization_matches_reference() {
    let tok = model().tokenizer();
    let cases: Vec<Tokenized> = fixture("tokenization.json");
    assert!(cases.len() >= 16);
    for case in &cases {
        assert_eq!(tok.encode(&case.text).unwrap(), case.ids, "text {:?}", case.text);
        assert_eq!(
            tok.decode(&case.ids).unwrap(),
            case.text,
            "decode {:?}",
            case.text
        );
    }
}

#[test]
fn prompts_and_targets_encode_as_in_the_reference() {
    let tok = model().tokenizer();
    for row in rows() {
        assert_eq!(tok.encode(&row.prompt).unwrap(), row.prompt_ids);
        assert_eq!(tok.encode(&row.target).unwrap(), row.target_ids);
    }
}

fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= tol,
            "{what} token {k}: got {g}, reference {w}"
        );
    }
}

#[test]
fn logprobs_match_reference_alone() {
    let m = model();
    for (i, row) in rows().iter().enumerate() {
        let got = m.score(&[item(row)]).unwrap();
        assert_close(&got[0], &row.target_logprobs, 1e-3, &format!("row {i}"));
    }
}

#[test]
fn padded_batch_matches_single_sequences() {
    let m = model();
    let rows = rows();
    let items: Vec<ScoreItem> = rows.iter().map(item).collect();
    let lens: Vec<usize> = items.iter().map(ScoreItem::input_len).collect();
    assert!(lens.iter().min() < lens.iter().max(), "mixed lengths {lens:?}");
    let batch = m.score(&items).unwrap();
    // Reversed order puts a different sequence at each batch position.
    let reversed: Vec<ScoreItem> = items.iter().rev().cloned().collect();
    let rev = m.score(&reversed).unwrap();
    for (i, row) in rows.iter().enumerate() {
        let alone = m.score(&[items[i].clone()]).unwrap().remove(0);
        let alone64: Vec<f64> = alone.iter().map(|&x| x as f64).collect();
        assert_close(&batch[i], &alone64, 1e-4, &format!("batched row {i}"));
        assert_close(
            &rev[rows.len() - 1 - i],
            &alone64,
            1e-4,
            &format!("reversed row {i}"),
        );
        assert_close(
            &batch[i],
            &row.target_logprobs,
            1e-3,
            &format!("batched row {i} vs reference"),
        );
    }
    // score_all with a small budget splits into several batches and keeps the order.
    let all = m.score_all(&items, 60).unwrap();
    for (i, row) in rows.iter().enumerate() {
        assert_close(&all[i], &row.target_logprobs, 1e-3, &format!("score_all row {i}"));
    }
}

#[test]
fn greedy_generation_matches_reference() {
    let m = model();
    let cases: Vec<Generation> = fixture("generation.json");
    for case in &cases {
        let prompt = m.tokenizer().encode(&case.prompt).unwrap();
        let got = m.generate(&prompt, 12).unwrap();
        assert_eq!(got, case.greedy_ids, "prompt {:?}", case.prompt);
    }
}

#[test]
fn generation_stops_at_eos() {
    let m = model();
    // A chat turn that the instruct model answers and closes with <|im_end|> (id 2).
    let prompt = m
        .tokenizer()
        .encode("<|im_start|>user\nSay only the word yes.<|im_end|>\n<|im_start|>assistant\n")
        .unwrap();
    let got = m.generate(&prompt, 40).unwrap();
    assert!(got.len() < 40, "no EOS within 40 tokens: {got:?}");
    assert_eq!(got.last(), Some(&2));
    assert_eq!(got.iter().filter(|&&t| t == 2).count(), 1);
}

// ---- bad input ----

fn model_error(r: Result<Model, Error>) -> String {
    match r {
        Err(Error::Model(m)) => m,
        Err(e) => panic!("expected a model error, got {e:?}"),
        Ok(_) => panic!("expected a model error, got a model"),
    }
}

#[test]
fn missing_file_is_a_clear_error() {
    let msg = model_error(gguf::load(
        Path::new("/nonexistent/model.gguf"),
        "x",
        &LoadOptions::default(),
    ));
    assert!(
        msg.contains("/nonexistent/model.gguf") && msg.contains("cannot open"),
        "{msg}"
    );
}

#[test]
fn garbage_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.gguf", vec![], "not a valid GGUF"),
        (
            "text.gguf",
            b"this is not a model at all, just some text".to_vec(),
            "bad magic",
        ),
        (
            // A valid magic then a string length of 2^62.
            "huge-string.gguf",
            [
                &b"GGUF"[..],
                &3u32.to_le_bytes(),
                &0u64.to_le_bytes(),
                &1u64.to_le_bytes(),
                &(1u64 << 62).to_le_bytes(),
                &[0u8; 100],
            ]
            .concat(),
            "past the end",
        ),
        (
            "huge-counts.gguf",
            [
                &b"GGUF"[..],
                &3u32.to_le_bytes(),
                &u64::MAX.to_le_bytes(),
                &u64::MAX.to_le_bytes(),
            ]
            .concat(),
            "cannot fit",
        ),
        (
            "bad-version.gguf",
            [&b"GGUF"[..], &99u32.to_le_bytes()].concat(),
            "version 99",
        ),
    ];
    for (name, bytes, want) in cases {
        let p = write(name, &bytes);
        let msg = model_error(gguf::load(&p, name, &LoadOptions::default()));
        assert!(msg.contains(want) && msg.contains(name), "{name}: {msg}");
    }
}

#[test]
fn truncated_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(model_path()).unwrap();
    // Inside the metadata, then inside the tensor data.
    for (cut, want) in [(1000, "not a valid GGUF"), (bytes.len() / 2, "truncated")] {
        let p = dir.path().join(format!("cut-{cut}.gguf"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let msg = model_error(gguf::load(&p, "cut", &LoadOptions::default()));
        assert!(msg.contains(want), "cut at {cut}: {msg}");
    }
    // Random bytes over the tensor index.
    let mut broken = bytes[..4 << 20].to_vec();
    let start = 2_300_000.min(broken.len() - 4096);
    for (i, b) in broken[start..start + 4096].iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3];
    }
    let p = dir.path().join("scrambled.gguf");
    std::fs::write(&p, &broken).unwrap();
    let msg = model_error(gguf::load(&p, "scrambled", &LoadOptions::default()));
    assert!(msg.contains("scrambled.gguf"), "{msg}");
}

#[test]
fn unsupported_architecture_is_a_clear_error() {
    use candle_core::quantized::gguf_file::{self, Value};
    use candle_core::quantized::{GgmlDType, QTensor};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mamba.gguf");
    let t = candle_core::Tensor::zeros((4, 32), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, GgmlDType::F32).unwrap();
    let arch = Value::String("mamba".into());
    // A tokenizer this crate cannot build: the architecture is reported first.
    let tok_model = Value::String("llama".into());
    let tokens = Value::Array(
        ["a", "b", "c", "ab"]
            .iter()
            .map(|s| Value::String(s.to_string()))
            .collect(),
    );
    let merges = Value::Array(vec![Value::String("a b".into())]);
    let mut f = std::fs::File::create(&path).unwrap();
    gguf_file::write(
        &mut f,
        &[
            ("general.architecture", &arch),
            ("tokenizer.ggml.model", &tok_model),
            ("tokenizer.ggml.tokens", &tokens),
            ("tokenizer.ggml.merges", &merges),
        ],
        &[("token_embd.weight", &q)],
    )
    .unwrap();
    drop(f);
    let msg = model_error(gguf::load(&path, "mamba", &LoadOptions::default()));
    assert!(
        msg.contains(
            "unsupported architecture `mamba` (supported in GGUF: llama, qwen2, qwen3, phi3, gemma2)"
        ),
        "{msg}"
    );

    // A llama file whose tokenizer model is neither byte-level BPE nor SentencePiece.
    let path = dir.path().join("rwkv.gguf");
    let llama = Value::String("llama".into());
    let mut f = std::fs::File::create(&path).unwrap();
    gguf_file::write(
        &mut f,
        &[
            ("general.architecture", &llama),
            ("tokenizer.ggml.model", &Value::String("rwkv".into())),
            ("tokenizer.ggml.tokens", &tokens),
        ],
        &[("token_embd.weight", &q)],
    )
    .unwrap();
    drop(f);
    let msg = model_error(gguf::load(&path, "rwkv", &LoadOptions::default()));
    assert!(msg.contains("unsupported tokenizer model `rwkv`"), "{msg}");
}

#[test]
fn pretty_tokens_match_captum_output_tokens() {
    let tok = model().tokenizer();
    let captum: serde_json::Value = fixture("captum_t1.json");
    let target = captum["template"]["target"].as_str().unwrap();
    let want: Vec<&str> = captum["feature_ablation"]["output_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(tok.pretty_tokens(&tok.encode(target).unwrap()), want);
}

#[test]
fn bad_sequences_are_clear_errors() {
    let m = model();
    let ok = ScoreItem {
        prompt: vec![504, 713],
        target: vec![216],
    };
    assert!(m.score(std::slice::from_ref(&ok)).is_ok());

    let empty_target = ScoreItem {
        prompt: vec![504],
        target: vec![],
    };
    let e = m.score(&[ok.clone(), empty_target]).unwrap_err();
    assert!(
        matches!(&e, Error::Invalid { field, message } if field == "sequences[1]" && message.contains("target is empty")),
        "{e:?}"
    );

    let empty_prompt = ScoreItem {
        prompt: vec![],
        target: vec![5],
    };
    let e = m.score(&[empty_prompt]).unwrap_err();
    assert!(
        matches!(&e, Error::Invalid { field, .. } if field == "sequences[0]"),
        "{e:?}"
    );

    let out_of_range = ScoreItem {
        prompt: vec![504, 49152],
        target: vec![5],
    };
    let e = m.score(&[out_of_range]).unwrap_err();
    assert!(
        matches!(&e, Error::Invalid { message, .. } if message.contains("49152") && message.contains("out of range")),
        "{e:?}"
    );
    let e = m
        .score(&[ScoreItem {
            prompt: vec![1],
            target: vec![u32::MAX],
        }])
        .unwrap_err();
    assert!(matches!(&e, Error::Invalid { .. }), "{e:?}");

    let too_long = ScoreItem {
        prompt: vec![216; 8192],
        target: vec![216, 216],
    };
    let e = m.score(&[too_long]).unwrap_err();
    assert!(
        matches!(&e, Error::TooLarge { message, .. } if message.contains("8192")),
        "{e:?}"
    );

    let e = m.generate(&[216; 8190], 12).unwrap_err();
    assert!(
        matches!(&e, Error::TooLarge { field, .. } if field == "max_new_tokens"),
        "{e:?}"
    );
    let e = m.generate(&[], 12).unwrap_err();
    assert!(
        matches!(&e, Error::Invalid { field, .. } if field == "prompt"),
        "{e:?}"
    );
    let e = m.generate(&[60_000], 2).unwrap_err();
    assert!(matches!(&e, Error::Invalid { .. }), "{e:?}");
}
