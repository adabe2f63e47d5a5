//! Fuzzing the template parser, the request JSON and chat templates given in requests: random
//! and mutated inputs must never panic, every rejection must be a clean error naming a field,
//! and no chat template may grow this process's memory (they render in capped workers).
//!
//! CI runs a few thousand cases. The full campaign is run by hand:
//!
//!     FUZZ_CASES=1000000 cargo test --test fuzz -- --ignored --nocapture
//!
//! Each case is one template and one request body, both from a seeded generator (`FUZZ_SEED`),
//! so a failure names the case that reproduces it. The chat-template campaign likewise:
//!
//!     FUZZ_CASES=1000000 cargo test --test fuzz fuzz_chat_template_campaign -- --ignored --nocapture

use std::sync::OnceLock;

use llm_attr::api::parse_json;
use llm_attr::input::chat::sandbox::{Sandbox, SandboxLimits};
use llm_attr::input::template::{self, Piece};
use llm_attr::input::Input;
use llm_attr::model::Tokenizer;
use llm_attr::request::AttributeRequest;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let inner = tokenizers::Tokenizer::from_file(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/tiny-gpt2/tokenizer.json"
        ))
        .unwrap();
        Tokenizer::new(inner, vec![50256])
    })
}

/// Where the requests' chat templates render: workers of the binary under test.
fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        // FUZZ_TEMPLATE_MB lowers the workers' memory cap, so that a long campaign's bombs
        // reach it sooner.
        let limits = SandboxLimits {
            memory_bytes: env("FUZZ_TEMPLATE_MB", 64) as usize * (1 << 20),
            ..SandboxLimits::default()
        };
        Sandbox::new(env!("CARGO_BIN_EXE_llm-attr"), limits)
    })
}

const FRAGMENTS: [&str; 24] = [
    "{", "}", "{{", "}}", "{name}", "{a}", "{a-b_1}", "{}", "{x:>3}", "{x.y}", "{ }", "{日本}", " from ",
    "a", "Z", "_", "-", ".", "\n", "\u{0}", "é", "🦀", "{name", "name}",
];

fn random_template(rng: &mut ChaCha8Rng) -> String {
    let n = rng.random_range(0..12);
    (0..n).map(|_| *FRAGMENTS.choose(rng).unwrap()).collect()
}

const FIELDS: [&str; 16] = [
    "template",
    "values",
    "baselines",
    "mask",
    "text",
    "skip_tokens",
    "baseline_token",
    "target",
    "max_new_tokens",
    "method",
    "attr_target",
    "n_samples",
    "num_trials",
    "seed",
    "baseline_sampling",
    "colour",
];

const WORDS: [&str; 14] = [
    "fa",
    "sv",
    "svs",
    "lime",
    "kernel",
    "prob",
    "log_prob",
    "exact",
    "sample",
    "a",
    "name",
    "",
    " x",
    "feature_ablation",
];

fn random_value(rng: &mut ChaCha8Rng, depth: u32) -> Value {
    let leaf = depth >= 3 || rng.random_bool(0.6);
    match rng.random_range(0..if leaf { 6 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.random_bool(0.5)),
        2 => json!(*[0i64, 1, 2, 3, -1, 25, 50_000, i64::MAX, i64::MIN]
            .choose(rng)
            .unwrap()),
        3 => json!(*[0.5f64, -0.0, 1e300, 3.0].choose(rng).unwrap()),
        4 => json!(WORDS.choose(rng).unwrap()),
        5 => json!(random_template(rng)),
        6 => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let keys = ["a", "name", "b", "x", ""];
            let m: serde_json::Map<String, Value> = (0..rng.random_range(0..4))
                .map(|_| {
                    (
                        keys.choose(rng).unwrap().to_string(),
                        random_value(rng, depth + 1),
                    )
                })
                .collect();
            Value::Object(m)
        }
    }
}

/// A request body: mostly plausible fields with random values, sometimes a known-good
/// request, then a few byte-level mutations (which may break the JSON or repeat keys).
fn random_body(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let value = if rng.random_bool(0.2) {
        json!({
            "template": "{name} from {country} applied",
            "values": {"name": "Georg", "country": "Germany"},
            "baselines": {"name": ["John", "Maria"], "country": "Togo"},
            "target": " to",
            "method": *["fa", "svs", "kernel"].choose(rng).unwrap(),
        })
    } else {
        let m: serde_json::Map<String, Value> = (0..rng.random_range(0..6))
            .map(|_| (FIELDS.choose(rng).unwrap().to_string(), random_value(rng, 0)))
            .collect();
        Value::Object(m)
    };
    let mut bytes = serde_json::to_vec(&value).unwrap();
    for _ in 0..rng.random_range(0..3) {
        mutate(rng, &mut bytes);
    }
    bytes
}

fn mutate(rng: &mut ChaCha8Rng, b: &mut Vec<u8>) {
    if b.is_empty() {
        b.push(b'{');
        return;
    }
    let at = rng.random_range(0..b.len());
    match rng.random_range(0..6) {
        0 => b[at] = *b"{}[]\",:0a\\\xff ".choose(rng).unwrap(),
        1 => {
            b.remove(at);
        }
        2 => b.truncate(at),
        3 => {
            // Repeat a key: `"values": ` becomes `"values": {...}, "values": `.
            let dup = format!("\"{}\": {}, ", FIELDS.choose(rng).unwrap(), random_value(rng, 1));
            if let Some(open) = b.iter().position(|&c| c == b'{') {
                b.splice(open + 1..open + 1, dup.into_bytes());
            }
        }
        4 => b.insert(at, *b"{}\" ".choose(rng).unwrap()),
        _ => {
            let (x, y) = (rng.random_range(0..b.len()), rng.random_range(0..b.len()));
            b.swap(x, y);
        }
    }
}

/// A template parsed, written back with escapes, parses to the same pieces.
fn write_back(pieces: &[Piece]) -> String {
    pieces
        .iter()
        .map(|p| match p {
            Piece::Text(t) => t.replace('{', "{{").replace('}', "}}"),
            Piece::Slot(n) => format!("{{{n}}}"),
        })
        .collect()
}

fn check_template(t: &str) {
    match template::parse(t) {
        Ok(pieces) => {
            assert!(!pieces.is_empty(), "{t:?}");
            assert_eq!(
                template::parse(&write_back(&pieces)).as_ref(),
                Ok(&pieces),
                "{t:?}"
            );
        }
        Err(e) => assert_eq!(e.field(), Some("template"), "{t:?}: {e}"),
    }
}

fn check_body(body: &[u8]) {
    match parse_json::<AttributeRequest>(body) {
        Ok(req) => {
            // What parses also writes back and parses to the same request.
            let again = serde_json::to_vec(&req).unwrap();
            let back: AttributeRequest = parse_json(&again).unwrap_or_else(|e| panic!("{e:?}"));
            assert_eq!(
                serde_json::to_value(&back).unwrap(),
                serde_json::to_value(&req).unwrap()
            );
            if let Err(e) = Input::from_request(&req, tokenizer(), Some(sandbox())) {
                assert!(e.field().is_some_and(|f| !f.is_empty()), "{e}");
            }
        }
        Err(e) => {
            assert_eq!(e.status, 400, "{}", String::from_utf8_lossy(body));
            assert!(matches!(e.code, "invalid_json" | "invalid_request"), "{e:?}");
            assert!(e.code == "invalid_json" || e.field.is_some(), "{e:?}");
        }
    }
}

/// Runs `cases` cases from `seed`; returns how many request bodies parsed.
fn campaign(seed: u64, cases: u64) -> u64 {
    let mut parsed = 0;
    for case in 0..cases {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ case.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let t = random_template(&mut rng);
        let body = random_body(&mut rng);
        let ok = std::panic::catch_unwind(|| {
            check_template(&t);
            check_body(&body);
            parse_json::<AttributeRequest>(&body).is_ok()
        });
        match ok {
            Ok(true) => parsed += 1,
            Ok(false) => {}
            Err(_) => panic!(
                "case {case} (FUZZ_SEED={seed}) failed: template {t:?}, body {:?}",
                String::from_utf8_lossy(&body)
            ),
        }
    }
    parsed
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Pieces of chat templates: loops, namespaces, string operators, and the filters and methods
/// that take a size.
const JINJA: [&str; 40] = [
    "{% for m in messages %}",
    "{% endfor %}",
    "{{ m.content }}",
    "{{ m['role'] }}",
    "{% set ns = namespace(v='ab') %}",
    "{% set ns.v = ns.v ~ ns.v %}",
    "{% set ns.v = ns.v + ns.v %}",
    "{% set ns.v = ns.v * 3 %}",
    "{% set ns.v = [ns.v, ns.v] %}",
    "{% set ns.v = ns.v.replace('a', 'aaaa') %}",
    "{% for i in range(40) %}",
    "{% for i in range(100000) %}",
    "{{ ns.v }}",
    "{{ ns.v|length }}",
    "{{ ns.v|tojson }}",
    "{{ messages|tojson(indent=100000000) }}",
    "{{ 'x\ny'|indent(1000000000) }}",
    "{{ 'x'|center(1000000000) }}",
    "{{ 'x'.ljust(1000000000) }}",
    "{{ '{:>1000000000}'.format('x') }}",
    "{{ 'x' * 100000000 }}",
    "{{ range(100000)|batch(1000000000, 'x')|list|length }}",
    "{{ range(100000)|join(ns.v) }}",
    "{{ ns.v|urlencode }}",
    "{{ ns.v|pprint }}",
    "{% set c %}{{ ns.v }}{{ ns.v }}{% endset %}{% set ns.v = c %}",
    "{% macro f(s, n) %}{% if n %}{{ f(s ~ s, n - 1) }}{% endif %}{% endmacro %}",
    "{{ f('x', 60) }}",
    "{% if add_generation_prompt %}",
    "{% endif %}",
    "{{ raise_exception(messages[0].content) }}",
    "{{ strftime_now('%Y' * 1000000) }}",
    "{{ bos_token }}",
    "<|im_start|>",
    "\n",
    "{{ m.content|trim }}",
    "{%",
    "}}",
    "{{ loop.index }}",
    "{{ messages[0].content }}",
];

/// A chat template of fragments, often inside a loop over the messages.
fn random_chat_template(rng: &mut ChaCha8Rng) -> String {
    let body: String = (0..rng.random_range(0..10))
        .map(|_| *JINJA.choose(rng).unwrap())
        .collect();
    match rng.random_range(0..3) {
        0 => body,
        1 => format!("{{% set ns = namespace(v='ab') %}}{{% for i in range(64) %}}{body}{{% endfor %}}{{{{ ns.v|length }}}}"),
        _ => format!("{{% for m in messages %}}{{{{ m.content }}}}{body}{{% endfor %}}"),
    }
}

/// A chat request with `chat_template` must render or fail with an error naming a field.
fn check_chat_template(chat_template: &str) {
    let req: AttributeRequest = serde_json::from_value(json!({
        "messages": [{"role": "user", "content": "{name} is a"}],
        "values": {"name": "Bob"},
        "target": " doctor",
        "chat_template": chat_template,
    }))
    .unwrap();
    if let Err(e) = Input::from_request(&req, tokenizer(), Some(sandbox())) {
        assert!(e.field().is_some_and(|f| !f.is_empty()), "{chat_template:?}: {e}");
    }
}

/// This process's peak resident memory (VmHWM), in MB.
fn peak_rss_mb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// Runs `cases` chat-template cases from `seed`; returns the peak RSS in MB.
fn template_campaign(seed: u64, cases: u64) -> u64 {
    for case in 0..cases {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ case.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let t = random_chat_template(&mut rng);
        if std::panic::catch_unwind(|| check_chat_template(&t)).is_err() {
            panic!("chat template case {case} (FUZZ_SEED={seed}) failed: {t:?}");
        }
    }
    peak_rss_mb()
}

/// Bounds this process's peak memory: the template bombs among the cases would each take
/// gigabytes if they rendered here.
const PEAK_RSS_MB: u64 = 1024;

#[test]
fn fuzz_a_few_hundred_chat_templates() {
    let peak = template_campaign(env("FUZZ_SEED", 13), 300);
    assert!(peak < PEAK_RSS_MB, "peak RSS {peak} MB");
}

#[test]
#[ignore = "the full campaign: FUZZ_CASES=1000000 cargo test --test fuzz fuzz_chat_template_campaign -- --ignored --nocapture"]
fn fuzz_chat_template_campaign() {
    let (seed, cases) = (env("FUZZ_SEED", 1), env("FUZZ_CASES", 1_000_000));
    let started = std::time::Instant::now();
    let peak = template_campaign(seed, cases);
    println!(
        "fuzz: {cases} chat templates (seed {seed}), 0 panics, peak RSS {peak} MB, {:.0} s",
        started.elapsed().as_secs_f64()
    );
    assert!(peak < PEAK_RSS_MB, "peak RSS {peak} MB");
}

#[test]
fn fuzz_a_few_thousand_inputs() {
    let parsed = campaign(env("FUZZ_SEED", 13), 3000);
    // The generator reaches past the JSON syntax into the request's own checks.
    assert!(parsed > 100, "only {parsed} bodies parsed");
}

#[test]
#[ignore = "the full campaign: FUZZ_CASES=1000000 cargo test --test fuzz -- --ignored --nocapture"]
fn fuzz_campaign() {
    let (seed, cases) = (env("FUZZ_SEED", 1), env("FUZZ_CASES", 1_000_000));
    let started = std::time::Instant::now();
    let parsed = campaign(seed, cases);
    println!(
        "fuzz: {cases} templates + {cases} request bodies (seed {seed}), {parsed} bodies parsed, \
         0 panics, {:.0} s",
        started.elapsed().as_secs_f64()
    );
}
