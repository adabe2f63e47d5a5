//! A fake scorer whose log-probs are a known function of the sequence (GPT-2's real tokenizer,
//! no model), and the seed's t1 request; shared by the tests that need no model.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use llm_attr::input::chat::sandbox::{Sandbox, SandboxLimits};
use llm_attr::model::{ArchInfo, ModelInfo, ScoreItem, Tokenizer};
use llm_attr::request::{AttributeRequest, Baseline, Method};
use llm_attr::run::{run, Limits};
use llm_attr::scorer::Scorer;

/// log p(target_k | prompt) = -((sum of prompt ids + 7 target_k) mod 1000) / 500 - k / 10: it
/// depends on the prompt and on the target token, so two continuations differ.
pub(crate) fn fake_log_probs(prompt: &[u32], target: &[u32]) -> Vec<f32> {
    let s = prompt.iter().map(|&i| u64::from(i)).sum::<u64>();
    target
        .iter()
        .enumerate()
        .map(|(k, &t)| -(((s + 7 * u64::from(t)) % 1000) as f32) / 500.0 - k as f32 / 10.0)
        .collect()
}

/// Holds no model: a tokenizer and the facts a scorer reports are all `run()` needs.
pub(crate) struct Fake {
    pub tokenizer: Tokenizer,
    pub info: ModelInfo,
    /// Every call to `score`, in order.
    pub calls: Mutex<Vec<Vec<ScoreItem>>>,
    pub generations: AtomicUsize,
    /// What the caller's cancel flag says; `cancel_on_score` sets it after each score call
    /// (a client that leaves while the run goes on).
    pub cancelled: AtomicBool,
    pub cancel_on_score: bool,
}

impl Fake {
    pub(crate) fn new() -> Fake {
        static GPT2: std::sync::OnceLock<tokenizers::Tokenizer> = std::sync::OnceLock::new();
        let inner = GPT2.get_or_init(|| {
            tokenizers::Tokenizer::from_file("tests/fixtures/tiny-gpt2/tokenizer.json").unwrap()
        });
        Fake {
            tokenizer: Tokenizer::new(inner.clone(), vec![50256]),
            info: ModelInfo {
                spec: "fake".into(),
                chat_template: false,
                gradients: false,
                arch: ArchInfo {
                    architecture: "fake".into(),
                    parameters: 0,
                    vocab_size: 50257,
                    context_length: 1024,
                    hidden_size: 1,
                    layers: 0,
                    heads: 1,
                    dtype: "f32".into(),
                },
            },
            calls: Mutex::new(Vec::new()),
            generations: AtomicUsize::new(0),
            cancelled: AtomicBool::new(false),
            cancel_on_score: false,
        }
    }
    /// Every item scored, in order.
    pub(crate) fn scored(&self) -> Vec<ScoreItem> {
        self.calls.lock().unwrap().iter().flatten().cloned().collect()
    }
}

impl Scorer for Fake {
    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    fn info(&self) -> &ModelInfo {
        &self.info
    }
    fn score(
        &self,
        items: Vec<ScoreItem>,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> llm_attr::Result<Vec<Vec<f32>>> {
        let out = items
            .iter()
            .map(|i| fake_log_probs(&i.prompt, &i.target))
            .collect();
        for k in 1..=items.len() {
            progress(k, items.len());
        }
        self.calls.lock().unwrap().push(items);
        if self.cancel_on_score {
            self.cancelled.store(true, Ordering::SeqCst);
        }
        Ok(out)
    }
    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
    fn generate(&self, _: &[u32], max_new_tokens: usize) -> llm_attr::Result<Vec<u32>> {
        self.generations.fetch_add(1, Ordering::SeqCst);
        Ok([262u32, 3290, 13].into_iter().take(max_new_tokens).collect())
    }
}

pub(crate) const T1: &str =
    "{name} from {country} applied for a job as a {job}. The hiring manager decided to";

pub(crate) fn t1(method: Method) -> AttributeRequest {
    let map = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    AttributeRequest {
        template: Some(T1.into()),
        values: Some(map(&[
            ("name", "Georg"),
            ("country", "Germany"),
            ("job", "janitor"),
        ])),
        baselines: Some(
            [("name", "John"), ("country", "Togo"), ("job", "nurse")]
                .iter()
                .map(|(k, v)| (k.to_string(), Baseline::One(v.to_string())))
                .collect(),
        ),
        target: Some(" reject the application".into()),
        method,
        ..Default::default()
    }
}

pub(crate) fn product(req: &mut AttributeRequest) {
    let lists = [
        ("name", vec!["John", "Maria", "Ahmed", "Zhang Wei"]),
        (
            "country",
            vec!["Togo", "Turkmenistan", "Trinidad and Tobago", "Tuvalu"],
        ),
        ("job", vec!["nurse", "CEO", "teacher", "construction worker"]),
    ];
    req.baselines = Some(
        lists
            .iter()
            .map(|(k, l)| {
                (
                    k.to_string(),
                    Baseline::List(l.iter().map(|s| s.to_string()).collect()),
                )
            })
            .collect(),
    );
}

pub(crate) fn go(
    fake: &Fake,
    req: &AttributeRequest,
) -> llm_attr::Result<llm_attr::request::AttributeResponse> {
    run(req, fake, &limits(), &|_| {})
}

/// The default limits, with the requests' own chat templates rendering in workers of the
/// binary under test, as on a server started with `--allow-request-templates`.
pub(crate) fn limits() -> Limits {
    static SANDBOX: OnceLock<Arc<Sandbox>> = OnceLock::new();
    let sandbox = SANDBOX.get_or_init(|| {
        Arc::new(Sandbox::new(
            env!("CARGO_BIN_EXE_llm-attr"),
            SandboxLimits::default(),
        ))
    });
    Limits {
        request_templates: Some(sandbox.clone()),
        ..Limits::default()
    }
}
