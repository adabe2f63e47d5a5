//! The evaluator, `run()` and every bad input, against a fake scorer whose log-probs are a
//! known function of the prompt (GPT-2's real tokenizer, no model).

use std::sync::atomic::Ordering;

mod fake;

use fake::{fake_log_probs, go, product, t1, Fake, T1};
use llm_attr::model::ScoreItem;
use llm_attr::request::{AttrTarget, AttributeRequest, Baseline, BaselineSampling, Method, TokenRef};
use llm_attr::run::{run, Limits, Progress};
use llm_attr::scorer::Scorer;
use llm_attr::Error;

/// The fake's value of one prompt text: [sequence, tokens...].
fn value(fake: &Fake, prompt: &str, target: &[u32]) -> Vec<f64> {
    let ids = fake.tokenizer().encode(prompt).unwrap();
    let lp: Vec<f64> = fake_log_probs(&ids, target).into_iter().map(f64::from).collect();
    let mut v = vec![lp.iter().sum()];
    v.extend(lp);
    v
}

fn fill(name: &str, country: &str, job: &str) -> String {
    T1.replace("{name}", name)
        .replace("{country}", country)
        .replace("{job}", job)
}

#[test]
fn exact_shapley_scores_each_distinct_prompt_once() {
    let fake = Fake::new();
    let mut req = t1(Method::ShapleyValues);
    // The baseline of `name` equals its value: half of the 8 prompts are duplicates.
    req.baselines
        .as_mut()
        .unwrap()
        .insert("name".into(), Baseline::One("Georg".into()));
    let r = go(&fake, &req).unwrap();
    assert_eq!(r.stats.evaluations, 8);
    assert_eq!(r.stats.unique_sequences, 4);
    let scored = fake.scored();
    assert_eq!(scored.len(), 4, "each distinct prompt reaches the scorer once");
    assert_eq!(r.seq_attr[0], 0.0, "a feature equal to its baseline gets nothing");
    assert_eq!(
        r.features.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
        ["name", "country", "job"]
    );
    let tokens: usize = scored.iter().map(ScoreItem::input_len).sum();
    assert_eq!(r.stats.tokens_scored, tokens);
}

#[test]
fn product_baselines_exact_is_the_mean_over_the_product() {
    let fake = Fake::new();
    let mut req = t1(Method::FeatureAblation);
    product(&mut req);
    let r = go(&fake, &req).unwrap();
    assert_eq!(r.baseline_sampling, BaselineSampling::Exact);
    assert_eq!(r.stats.evaluations, 4);
    assert_eq!(r.stats.unique_sequences, 1 + 4 + 4 + 4);
    // Feature ablation of `country`: f(all) - mean over the 4 countries.
    let full = value(&fake, &fill("Georg", "Germany", "janitor"), &r.target_ids);
    let countries = ["Togo", "Turkmenistan", "Trinidad and Tobago", "Tuvalu"];
    let mut mean = vec![0.0; full.len()];
    for c in countries {
        for (m, v) in mean
            .iter_mut()
            .zip(value(&fake, &fill("Georg", c, "janitor"), &r.target_ids))
        {
            *m += v / 4.0;
        }
    }
    assert!((r.seq_attr[1] - (full[0] - mean[0])).abs() < 1e-9);
    for (k, row) in r.token_attr.iter().enumerate() {
        assert!((row[1] - (full[k + 1] - mean[k + 1])).abs() < 1e-9);
    }
    // Exact Shapley over the product: (4+1)^3 distinct prompts, efficiency against the mean of
    // all 64 fully-perturbed prompts.
    let mut req = t1(Method::ShapleyValues);
    product(&mut req);
    let fake = Fake::new();
    let r = go(&fake, &req).unwrap();
    assert_eq!(r.stats.unique_sequences, 125);
    assert_eq!(fake.calls.lock().unwrap().len(), 1, "one batch");
    let names = ["John", "Maria", "Ahmed", "Zhang Wei"];
    let jobs = ["nurse", "CEO", "teacher", "construction worker"];
    let mut none = 0.0;
    for n in names {
        for c in countries {
            for j in jobs {
                none += value(&fake, &fill(n, c, j), &r.target_ids)[0] / 64.0;
            }
        }
    }
    let sum: f64 = r.seq_attr.iter().sum();
    assert!(
        (sum - (full[0] - none)).abs() < 1e-9,
        "{sum} vs {}",
        full[0] - none
    );
}

#[test]
fn sampled_baselines_draw_one_combination_per_evaluation_and_repeat_per_seed() {
    let fake = Fake::new();
    let mut req = t1(Method::ShapleyValueSampling);
    product(&mut req);
    req.baseline_sampling = Some(BaselineSampling::Sample);
    req.n_samples = Some(10);
    req.seed = Some(5);
    let a = go(&fake, &req).unwrap();
    assert_eq!(a.stats.evaluations, 1 + 10 * 3);
    assert!(a.stats.unique_sequences <= 1 + 31);
    let b = go(&Fake::new(), &req).unwrap();
    assert_eq!(a.seq_attr, b.seq_attr);
    assert_eq!(a.token_attr, b.token_attr);
    req.seed = Some(6);
    let c = go(&Fake::new(), &req).unwrap();
    assert_ne!(a.seq_attr, c.seq_attr);
    assert!(a.seq_attr_stderr.is_some() && a.token_attr_stderr.is_some());
}

#[test]
fn trials_reuse_scored_prompts_and_progress_reaches_the_total() {
    let fake = Fake::new();
    let mut req = t1(Method::ShapleyValues);
    req.num_trials = Some(3);
    let seen = std::sync::Mutex::new(Vec::new());
    let r = run(&req, &fake, &Limits::default(), &|p: Progress| {
        seen.lock().unwrap().push(p)
    })
    .unwrap();
    assert_eq!(r.stats.evaluations, 24);
    assert_eq!(r.stats.unique_sequences, 8);
    assert_eq!(fake.scored().len(), 8);
    let last = *seen.lock().unwrap().last().unwrap();
    assert_eq!(last, Progress { done: 8, total: 8 });
    assert!(r.seq_attr_stderr.unwrap().iter().all(|s| s.abs() < 1e-12));
}

#[test]
fn prob_target_and_generated_target() {
    let fake = Fake::new();
    let mut req = t1(Method::FeatureAblation);
    req.attr_target = AttrTarget::Prob;
    req.target = None;
    req.max_new_tokens = Some(2);
    let r = go(&fake, &req).unwrap();
    assert!(r.generated_target);
    assert_eq!(r.target_ids, vec![262, 3290]);
    assert_eq!(r.target, " the dog");
    assert_eq!(r.output_tokens, vec!["the", "dog"]);
    let full = value(&fake, &fill("Georg", "Germany", "janitor"), &r.target_ids);
    let abl = value(&fake, &fill("John", "Germany", "janitor"), &r.target_ids);
    assert!((r.seq_attr[0] - (full[0].exp() - abl[0].exp())).abs() < 1e-9);
    assert!((r.token_attr[1][0] - (full[2].exp() - abl[2].exp())).abs() < 1e-9);
    assert!(
        (r.target_log_probs[1] - full[2]).abs() < 1e-6,
        "log-probs stay log-probs"
    );
}

#[test]
fn token_input_skips_and_replaces_tokens() {
    let fake = Fake::new();
    let req = AttributeRequest {
        text: Some("Hello world, hello".into()),
        skip_tokens: Some(vec![TokenRef::Text(",".into())]),
        baseline_token: Some(TokenRef::Id(50256)),
        target: Some(" there".into()),
        method: Method::FeatureAblation,
        ..Default::default()
    };
    let r = go(&fake, &req).unwrap();
    let ids = fake.tokenizer().encode("Hello world, hello").unwrap();
    assert_eq!(r.features.len(), ids.len() - 1);
    assert_eq!(r.features[1].name, " world");
    let prompts: Vec<Vec<u32>> = fake.scored().into_iter().map(|i| i.prompt).collect();
    let mut want = ids.clone();
    want[1] = 50256;
    assert!(prompts.contains(&want), "{prompts:?}");
    // Default: the absent token is removed.
    let mut req = req;
    req.baseline_token = None;
    let fake = Fake::new();
    go(&fake, &req).unwrap();
    let mut want = ids.clone();
    want.remove(0);
    assert!(fake.scored().iter().any(|i| i.prompt == want));
}

#[test]
fn mask_groups_placeholders_into_one_feature() {
    let fake = Fake::new();
    let mut req = t1(Method::ShapleyValues);
    req.mask = Some(
        [("name", "who"), ("country", "who")]
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
            .collect(),
    );
    let r = go(&fake, &req).unwrap();
    assert_eq!(r.features.len(), 2);
    assert_eq!(r.features[0].name, "who");
    assert_eq!(r.features[0].placeholders, vec!["name", "country"]);
    assert_eq!(r.features[0].value, "Georg, Germany");
    assert_eq!(r.stats.unique_sequences, 4);
    let full = value(&fake, &fill("Georg", "Germany", "janitor"), &r.target_ids);
    let none = value(&fake, &fill("John", "Togo", "nurse"), &r.target_ids);
    assert!((r.seq_attr.iter().sum::<f64>() - (full[0] - none[0])).abs() < 1e-9);
}

#[test]
fn repeated_placeholder_is_one_feature_and_literal_braces_stay() {
    let fake = Fake::new();
    let mut req = t1(Method::FeatureAblation);
    req.template = Some("{{{name}}} met {name} in {country}; {job}".into());
    let r = go(&fake, &req).unwrap();
    assert_eq!(r.prompt, "{Georg} met Georg in Germany; janitor");
    assert_eq!(r.features.len(), 3);
}

/// Chat input: every coalition fills the one rendered template, so only the placeholders
/// change between scored prompts and the chat markup is the same in all of them.
#[test]
fn chat_coalitions_perturb_the_placeholders_and_never_the_markup() {
    let fake = Fake::new();
    let mut req = t1(Method::ShapleyValues);
    req.template = None;
    req.messages = Some(
        serde_json::from_value(serde_json::json!([
            {"role": "system", "content": "Judge {{fairly}}."},
            {"role": "user", "content": T1}
        ]))
        .unwrap(),
    );
    req.chat_template = Some(
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}\
         {% if add_generation_prompt %}<|assistant|>{% endif %}"
            .into(),
    );
    let r = go(&fake, &req).unwrap();
    let chat = |name, country, job| {
        format!(
            "<|system|>Judge {{fairly}}.\n<|user|>{}\n<|assistant|>",
            fill(name, country, job)
        )
    };
    assert_eq!(r.prompt, chat("Georg", "Germany", "janitor"));
    let mut want: Vec<Vec<u32>> = Vec::new();
    for name in ["Georg", "John"] {
        for country in ["Germany", "Togo"] {
            for job in ["janitor", "nurse"] {
                want.push(fake.tokenizer().encode(&chat(name, country, job)).unwrap());
            }
        }
    }
    let mut scored: Vec<Vec<u32>> = fake.scored().into_iter().map(|i| i.prompt).collect();
    scored.sort();
    want.sort();
    assert_eq!(scored, want);
}

fn err(req: &AttributeRequest) -> Error {
    go(&Fake::new(), req).expect_err("must fail")
}

fn expect(req: &AttributeRequest, field: &str, words: &str) {
    let e = err(req);
    assert_eq!(e.field(), Some(field), "{e}");
    assert!(e.to_string().contains(words), "{e:?} lacks {words:?}");
}

#[test]
fn every_bad_input_names_its_field() {
    let base = || t1(Method::ShapleyValues);
    let mut r = base();
    r.values.as_mut().unwrap().insert("age".into(), "40".into());
    expect(&r, "values.age", "unknown placeholder");
    let mut r = base();
    r.values.as_mut().unwrap().remove("job");
    expect(&r, "values.job", "missing value");
    let mut r = base();
    r.values = None;
    expect(&r, "values", "missing");
    let mut r = base();
    r.template = Some("{name} from {country".into());
    expect(&r, "template", "unbalanced");
    let mut r = base();
    r.template = Some("{name}} from {country} {job}".into());
    expect(&r, "template", "unbalanced");
    let mut r = base();
    r.template = Some(String::new());
    expect(&r, "template", "empty");
    let mut r = base();
    r.template = Some("no placeholders".into());
    r.values = Some(Default::default());
    r.baselines = None;
    expect(&r, "template", "no placeholders");
    let mut r = base();
    r.mask = Some([("nme".to_string(), serde_json::json!(1))].into_iter().collect());
    expect(&r, "mask.nme", "unknown placeholder");
    let mut r = base();
    r.mask = Some(
        [("name".to_string(), serde_json::json!("country"))]
            .into_iter()
            .collect(),
    );
    expect(&r, "mask.name", "two features");
    let mut r = base();
    r.mask = Some(
        [("name".to_string(), serde_json::json!(null))]
            .into_iter()
            .collect(),
    );
    expect(&r, "mask.name", "group label");
    let mut r = base();
    r.baselines
        .as_mut()
        .unwrap()
        .insert("age".into(), Baseline::One("x".into()));
    expect(&r, "baselines.age", "unknown placeholder");
    let mut r = base();
    r.baselines
        .as_mut()
        .unwrap()
        .insert("job".into(), Baseline::List(vec![]));
    expect(&r, "baselines.job", "empty");
    let mut r = base();
    r.n_samples = Some(0);
    expect(&r, "n_samples", "at least 1");
    let mut r = base();
    r.n_samples = Some(1_000_000);
    expect(&r, "n_samples", "limit");
    let mut r = base();
    r.num_trials = Some(0);
    expect(&r, "num_trials", "at least 1");
    let mut r = base();
    r.target = Some(String::new());
    expect(&r, "target", "empty");
    let mut r = base();
    r.target = None;
    r.max_new_tokens = Some(0);
    expect(&r, "max_new_tokens", "at least 1");
    let mut r = base();
    r.text = Some("both".into());
    expect(&r, "text", "not both");
    let mut r = base();
    r.template = None;
    r.values = None;
    r.baselines = None;
    expect(&r, "template", "missing input");
    let mut r = base();
    r.skip_tokens = Some(vec![TokenRef::Id(1)]);
    expect(&r, "skip_tokens", "only for token input");
    // Too many features for exact Shapley: say so and suggest sampling.
    let names: Vec<String> = (0..16).map(|i| format!("p{i}")).collect();
    let mut r = base();
    r.template = Some(
        names
            .iter()
            .map(|n| format!("{{{n}}}"))
            .collect::<Vec<_>>()
            .join(" "),
    );
    r.values = Some(names.iter().map(|n| (n.clone(), "v".to_string())).collect());
    r.baselines = None;
    expect(&r, "method", "shapley_value_sampling");
    let mut small = r.clone();
    small.method = Method::ShapleyValueSampling;
    assert!(go(&Fake::new(), &small).is_ok());
    let lim = Limits {
        max_features: 8,
        ..Limits::default()
    };
    let e = run(&small, &Fake::new(), &lim, &|_| {}).unwrap_err();
    assert_eq!(e.field(), Some("template"));
    // Every feature removed leaves nothing before the target.
    let mut r = base();
    r.template = Some("{name}".into());
    r.values = Some([("name".to_string(), "Georg".to_string())].into_iter().collect());
    r.baselines = None;
    expect(&r, "baselines", "empty");
    // Token input.
    let tok = |text: &str| AttributeRequest {
        text: Some(text.into()),
        target: Some(" x".into()),
        method: Method::FeatureAblation,
        ..Default::default()
    };
    expect(&tok(""), "text", "empty");
    let mut r = tok("a b");
    r.skip_tokens = Some(vec![TokenRef::Text("no such token at all".into())]);
    expect(&r, "skip_tokens[0]", "not one token");
    let mut r = tok("a b");
    r.baseline_token = Some(TokenRef::Id(999_999));
    expect(&r, "baseline_token", "out of range");
    let mut r = tok("a");
    r.skip_tokens = Some(vec![TokenRef::Text("a".into())]);
    expect(&r, "skip_tokens", "nothing is left");
    let mut r = tok("a b");
    r.values = Some(Default::default());
    expect(&r, "values", "only for template input");
    // Exact baselines beyond the sequence limit.
    let mut r = base();
    product(&mut r);
    r.baseline_sampling = Some(BaselineSampling::Exact);
    let lim = Limits {
        max_sequences: 50,
        ..Limits::default()
    };
    let e = run(&r, &Fake::new(), &lim, &|_| {}).unwrap_err();
    assert_eq!(e.field(), Some("baseline_sampling"), "{e}");
}

#[test]
fn json_errors_name_the_field() {
    let dup = r#"{"template": "{a}", "values": {"a": "x", "a": "y"}}"#;
    let e = serde_json::from_str::<AttributeRequest>(dup)
        .unwrap_err()
        .to_string();
    assert!(e.contains("values.a: duplicate name"), "{e}");
    let e = serde_json::from_str::<AttributeRequest>(r#"{"template": "{a}", "mthod": "fa"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("mthod"), "{e}");
    let ok: AttributeRequest =
        serde_json::from_str(r#"{"template": "{a}", "values": {"a": "x"}, "method": "svs", "mask": null}"#)
            .unwrap();
    assert_eq!(ok.method, Method::ShapleyValueSampling);
}

#[test]
fn default_baseline_sampling_is_exact_while_affordable() {
    let mut r = t1(Method::Lime);
    product(&mut r);
    let resp = go(&Fake::new(), &r).unwrap();
    assert_eq!(resp.baseline_sampling, BaselineSampling::Exact);
    assert!(resp.stats.unique_sequences <= 125);
    // Ten placeholders with four baselines each: 5^10 prompts is not affordable.
    let names: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
    let r = AttributeRequest {
        template: Some(
            names
                .iter()
                .map(|n| format!("{{{n}}}"))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        values: Some(names.iter().map(|n| (n.clone(), "v".to_string())).collect()),
        baselines: Some(
            names
                .iter()
                .map(|n| {
                    (
                        n.clone(),
                        Baseline::List(vec!["a".into(), "b".into(), "c".into(), "d".into()]),
                    )
                })
                .collect(),
        ),
        target: Some(" x".into()),
        method: Method::KernelShap,
        ..Default::default()
    };
    let resp = go(&Fake::new(), &r).unwrap();
    assert_eq!(resp.baseline_sampling, BaselineSampling::Sample);
    assert_eq!(resp.stats.evaluations, 25);
}

#[test]
fn a_prompt_too_long_for_its_target_is_refused_before_generating() {
    let fake = Fake::new();
    let long = format!(
        "{}{{a}} decided to",
        "The committee reviewed the file carefully. ".repeat(200)
    );
    let mut req = AttributeRequest {
        template: Some(long),
        values: Some([("a".to_string(), "Georg".to_string())].into()),
        method: Method::FeatureAblation,
        ..Default::default()
    };
    let e = go(&fake, &req).unwrap_err();
    assert_eq!((e.code(), e.field()), ("limit_exceeded", Some("template")), "{e}");
    // A prompt that fits alone, but not with the tokens it may generate.
    let prompt = fake.tokenizer().encode("Georg decided to").unwrap().len();
    req.template = Some("{a} decided to".into());
    let limits = Limits {
        max_tokens_per_sequence: prompt + 10,
        ..Limits::default()
    };
    let e = run(&req, &fake, &limits, &|_| {}).unwrap_err();
    assert_eq!(
        (e.code(), e.field()),
        ("limit_exceeded", Some("max_new_tokens")),
        "{e}"
    );
    assert_eq!(
        fake.generations.load(Ordering::SeqCst),
        0,
        "nothing was generated"
    );
    assert!(fake.scored().is_empty());
    // The same with a target that is too long: the target is named.
    req.target = Some(" and".repeat(20));
    let e = run(&req, &fake, &limits, &|_| {}).unwrap_err();
    assert_eq!((e.code(), e.field()), ("limit_exceeded", Some("target")), "{e}");
}

#[test]
fn distinct_sequences_are_counted_before_prompts_are_built() {
    // shapley_value_sampling over 64 token features with 2000 permutations: every field is
    // within its limit, but the permutations reach ~126,000 distinct coalitions.
    let fake = Fake::new();
    let req = AttributeRequest {
        text: Some(" a".repeat(64)),
        target: Some(" b".into()),
        method: Method::ShapleyValueSampling,
        n_samples: Some(2000),
        ..Default::default()
    };
    let e = go(&fake, &req).unwrap_err();
    assert_eq!(
        (e.code(), e.field()),
        ("limit_exceeded", Some("n_samples")),
        "{e}"
    );
    let msg = e.to_string();
    let count: usize = msg
        .split("up to ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{msg}"));
    // The count of distinct coalitions, not of prompts built until a cut-off (the old answer
    // was 80,001, four times the limit plus one).
    assert!((120_000..=126_002).contains(&count), "{msg}");
    assert!(msg.contains("distinct coalitions"), "{msg}");
    assert!(fake.scored().is_empty());
}

#[test]
fn a_cancelled_run_stops_building_and_scoring() {
    let fake = Fake::new();
    fake.cancelled.store(true, Ordering::SeqCst);
    let mut no_target = t1(Method::FeatureAblation);
    no_target.target = None;
    for req in [t1(Method::ShapleyValueSampling), no_target] {
        assert_eq!(go(&fake, &req).unwrap_err(), Error::Cancelled);
    }
    assert!(fake.scored().is_empty());
    assert_eq!(fake.generations.load(Ordering::SeqCst), 0);

    // Cancelled while it runs: what follows the first scores is never built or scored.
    let fake = Fake {
        cancel_on_score: true,
        ..Fake::new()
    };
    let mut req = t1(Method::ShapleyValueSampling);
    req.num_trials = Some(5);
    assert_eq!(go(&fake, &req).unwrap_err(), Error::Cancelled);
    assert_eq!(fake.calls.lock().unwrap().len(), 1);
}
