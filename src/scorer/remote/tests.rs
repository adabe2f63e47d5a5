//! The protocols read the response bodies their servers document (tests/fixtures/remote/,
//! whose README says where each format comes from), and the alignment check passes them.

use serde_json::Value;

use super::protocol::{Echoed, Tok};
use super::{align, openai_echo, sglang, tgi, vllm};
use crate::model::{ScoreItem, Tokenizer};

fn fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/remote")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// GPT-2's tokenizer: ids 10..13 are "+,-.", 20..22 are "567".
fn tokenizer() -> Tokenizer {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt2");
    crate::model::load::load_tokenizer(dir.to_str().unwrap()).unwrap()
}

fn item(prompt: &[u32], target: &[u32]) -> ScoreItem {
    ScoreItem {
        prompt: prompt.to_vec(),
        target: target.to_vec(),
    }
}

fn targets(items: &[ScoreItem], echoed: &[Echoed]) -> Vec<Vec<f32>> {
    let tok = tokenizer();
    items
        .iter()
        .zip(echoed)
        .map(|(i, e)| align::target_logprobs(i, e, &tok).unwrap())
        .collect()
}

#[test]
fn vllm_prompt_logprobs_are_read_by_token_id() {
    let items = [item(&[10, 11], &[12, 13]), item(&[20], &[21, 22])];
    let echoed = vllm::parse_scores(&fixture("vllm_completions.json"), &items).unwrap();
    assert_eq!(targets(&items, &echoed), [vec![-1.25, -0.5], vec![-3.0, -4.75]]);
    // A token the server did not score is the alignment error, at its position.
    let wrong = [item(&[10, 11], &[12, 14]), item(&[20], &[21, 22])];
    let echoed = vllm::parse_scores(&fixture("vllm_completions.json"), &wrong).unwrap();
    let e = align::target_logprobs(&wrong[0], &echoed[0], &tokenizer()).unwrap_err();
    assert!(e.to_string().contains("position 3"), "{e}");
}

#[test]
fn sglang_input_token_logprobs_start_at_the_asked_position() {
    let items = [item(&[10, 11, 12], &[13]), item(&[20], &[21, 22])];
    let call = sglang::score_call(&items);
    assert_eq!(call.body["logprob_start_len"], serde_json::json!([2, 0]));
    let echoed = sglang::parse_scores(&fixture("sglang_generate.json"), &items).unwrap();
    assert_eq!(echoed[0].start, 2);
    assert_eq!(targets(&items, &echoed), [vec![-0.5], vec![-3.0, -4.75]]);
}

#[test]
fn tgi_prefill_and_openai_echo_tokens_are_read() {
    let items = [item(&[10, 11], &[12, 13])];
    let echoed = tgi::parse_scores(&fixture("tgi_generate.json")).unwrap();
    assert_eq!(echoed.tokens[0], Tok::Id(10));
    assert_eq!(targets(&items, &[echoed]), [vec![-1.25, -0.5]]);
    let echoed = openai_echo::parse_scores(&fixture("openai_echo.json")).unwrap();
    assert_eq!(echoed.tokens[4], Tok::Text(" the".into()));
    assert_eq!(targets(&items, &[echoed]), [vec![-1.25, -0.5]]);
    assert_eq!(
        tgi::parse_generated(&fixture("tgi_generate.json")).unwrap(),
        [262]
    );
}

#[test]
fn requests_carry_token_ids_and_the_options_that_give_prompt_logprobs() {
    let items = [item(&[10, 11], &[12])];
    let v = vllm::score_call("m", &items).body;
    assert_eq!(v["prompt"], serde_json::json!([[10, 11, 12]]));
    assert_eq!(
        (v["prompt_logprobs"].as_u64(), v["max_tokens"].as_u64()),
        (Some(0), Some(1))
    );
    let s = sglang::score_call(&items).body;
    assert_eq!(s["input_ids"], serde_json::json!([[10, 11, 12]]));
    assert_eq!(s["return_logprob"], true);
    let t = tgi::score_call("+,-").body;
    assert_eq!(t["parameters"]["decoder_input_details"], true);
    let o = openai_echo::score_call("m", "+,-").body;
    assert_eq!(
        (o["echo"].as_bool(), o["logprobs"].as_u64()),
        (Some(true), Some(1))
    );
}
