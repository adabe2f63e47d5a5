//! Audits, contrastive targets and plans against the fake scorer (GPT-2's tokenizer, log-probs
//! a known function of the sequence): exact equalities, no model.

mod fake;

use std::collections::BTreeMap;

use fake::{go, t1, Fake, T1};
use llm_attr::audit::{self, AuditRequest, AuditResult, Contexts};
use llm_attr::model::ScoreItem;
use llm_attr::request::{AttrTarget, AttributeRequest, Baseline, ChatMessage, Method, Role};
use llm_attr::run::{plan, Limits};
use llm_attr::Error;

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Names x countries, job fixed, hire vs reject.
fn hiring() -> AuditRequest {
    AuditRequest {
        template: Some(T1.into()),
        values: Some(values(&[
            ("name", "Georg"),
            ("country", "Germany"),
            ("job", "janitor"),
        ])),
        sweep: [
            ("name".to_string(), strings(&["Emily", "Lakisha", "Jamal"])),
            ("country".to_string(), strings(&["Germany", "Togo"])),
        ]
        .into_iter()
        .collect(),
        targets: strings(&[" hire", " reject"]),
        ..Default::default()
    }
}

fn audit(fake: &Fake, req: &AuditRequest) -> llm_attr::Result<AuditResult> {
    audit::run(req, fake, &fake::limits(), &|_| {})
}

/// The attribute request a cell stands for, run alone.
fn alone(cell_values: &BTreeMap<String, String>, job: &str, target: &str) -> AttributeRequest {
    let mut v = cell_values.clone();
    v.insert("job".into(), job.into());
    AttributeRequest {
        template: Some(T1.into()),
        values: Some(v),
        target: Some(target.into()),
        method: Method::FeatureAblation,
        ..Default::default()
    }
}

#[test]
fn every_cell_equals_its_request_run_alone() {
    let mut req = hiring();
    req.method = Some(Method::ShapleyValues);
    let r = audit(&Fake::new(), &req).unwrap();
    assert_eq!(r.swept, ["name", "country"], "template order");
    assert_eq!(r.cells.len(), 6);
    assert_eq!(
        r.cells[1].values,
        values(&[("name", "Emily"), ("country", "Togo")]),
        "row-major"
    );
    for cell in &r.cells {
        for t in &r.targets {
            let one = go(&Fake::new(), &alone(&cell.values, "janitor", t)).unwrap();
            assert_eq!(
                cell.token_log_probs[t], one.target_log_probs,
                "{:?} {t}",
                cell.values
            );
            assert_eq!(cell.log_prob[t], one.target_log_prob);
        }
        assert_eq!(
            cell.contrast,
            Some(cell.log_prob[" hire"] - cell.log_prob[" reject"])
        );
        assert!(cell.log_prob_stderr.is_none(), "one context");
        // The cell's attribution is its own request's, run alone.
        let a = cell.attribution.as_ref().expect("a method was given");
        let mut own = alone(&cell.values, "janitor", " hire");
        own.method = Method::ShapleyValues;
        own.contrast_target = Some(" reject".into());
        let mut b = BTreeMap::new();
        for (name, list) in &req.sweep {
            let others: Vec<String> = list
                .iter()
                .filter(|v| **v != cell.values[name])
                .cloned()
                .collect();
            b.insert(name.clone(), Baseline::List(others));
        }
        own.baselines = Some(b);
        let one = go(&Fake::new(), &own).unwrap();
        assert_eq!(a.seq_attr, one.seq_attr);
        assert_eq!(a.token_attr, one.token_attr);
        assert_eq!(a.contrast_log_probs, one.contrast_log_probs);
    }
}

/// A plain chat template, given in the request (the fake's tokenizer has none).
const CHAT: &str = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}\
{% if add_generation_prompt %}<|assistant|>{% endif %}";

fn chat_messages() -> Vec<ChatMessage> {
    vec![
        ChatMessage {
            role: Role::System,
            content: "You screen job applications for {country}.".into(),
        },
        ChatMessage {
            role: Role::User,
            content: "{name} applied for a job as a {job}. Decide.".into(),
        },
    ]
}

#[test]
fn a_chat_audit_cell_equals_its_chat_request_run_alone() {
    let mut req = hiring();
    req.template = None;
    req.messages = Some(chat_messages());
    req.chat_template = Some(CHAT.into());
    req.method = Some(Method::FeatureAblation);
    let r = audit(&Fake::new(), &req).unwrap();
    assert_eq!(
        r.swept,
        ["country", "name"],
        "order of first appearance in the messages"
    );
    assert_eq!(r.cells.len(), 6);
    for cell in &r.cells {
        let mut v = cell.values.clone();
        v.insert("job".into(), "janitor".into());
        let own = AttributeRequest {
            messages: Some(chat_messages()),
            chat_template: Some(CHAT.into()),
            values: Some(v),
            target: Some(" hire".into()),
            method: Method::FeatureAblation,
            ..Default::default()
        };
        let one = go(&Fake::new(), &own).unwrap();
        assert_eq!(
            cell.token_log_probs[" hire"], one.target_log_probs,
            "{:?}",
            cell.values
        );
        assert!(cell.attribution.is_some());
    }
    // Both inputs at once, or neither, name the field.
    req.template = Some(T1.into());
    expect(audit(&Fake::new(), &req).unwrap_err(), "messages", "not both");
    req.template = None;
    req.messages = None;
    expect(audit(&Fake::new(), &req).unwrap_err(), "template", "messages");
}

#[test]
fn average_is_the_mean_over_the_listed_contexts() {
    let jobs = ["nurse", "janitor", "engineer"];
    let mut req = hiring();
    req.contexts = Contexts::Average;
    req.baselines = Some(
        [("job".to_string(), Baseline::List(strings(&jobs)))]
            .into_iter()
            .collect(),
    );
    let avg = audit(&Fake::new(), &req).unwrap();
    assert_eq!(avg.n_contexts, 3);
    let singles: Vec<AuditResult> = jobs
        .iter()
        .map(|j| {
            let mut one = hiring();
            one.values.as_mut().unwrap().insert("job".into(), j.to_string());
            audit(&Fake::new(), &one).unwrap()
        })
        .collect();
    for (i, cell) in avg.cells.iter().enumerate() {
        for t in &avg.targets {
            let per: Vec<f64> = singles.iter().map(|s| s.cells[i].log_prob[t]).collect();
            let mean = per.iter().sum::<f64>() / 3.0;
            assert!((cell.log_prob[t] - mean).abs() < 1e-9);
            let sd = (per.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 2.0).sqrt();
            let se = cell.log_prob_stderr.as_ref().unwrap()[t];
            assert!((se - sd / 3f64.sqrt()).abs() < 1e-9);
            for k in 0..cell.token_log_probs[t].len() {
                let m = singles
                    .iter()
                    .map(|s| s.cells[i].token_log_probs[t][k])
                    .sum::<f64>()
                    / 3.0;
                assert!((cell.token_log_probs[t][k] - m).abs() < 1e-9);
            }
        }
    }
    // The summary of a name: the mean over its countries and jobs, with a 95% interval.
    let emily = &avg.summary["name"][0];
    assert_eq!((emily.value.as_str(), emily.n), ("Emily", 6));
    let samples: Vec<f64> = singles
        .iter()
        .flat_map(|s| s.cells[..2].iter().map(|c| c.contrast.unwrap()))
        .collect();
    let mean = samples.iter().sum::<f64>() / 6.0;
    assert!((emily.contrast.unwrap() - mean).abs() < 1e-9);
    let [lo, hi] = emily.contrast_ci.unwrap();
    assert!(lo < mean && mean < hi && ((lo + hi) / 2.0 - mean).abs() < 1e-9);
    assert!(emily.ci.as_ref().unwrap().contains_key(" reject"));
}

#[test]
fn summary_ranks_values_by_contrast() {
    let r = audit(&Fake::new(), &hiring()).unwrap();
    let rows = &r.summary["name"];
    assert_eq!(
        rows.iter().map(|r| r.value.as_str()).collect::<Vec<_>>(),
        ["Emily", "Lakisha", "Jamal"]
    );
    let best = rows.iter().map(|r| r.contrast.unwrap()).fold(f64::MIN, f64::max);
    for row in rows {
        // The mean over the two countries' cells.
        let cells: Vec<f64> = r
            .cells
            .iter()
            .filter(|c| c.values["name"] == row.value)
            .map(|c| c.contrast.unwrap())
            .collect();
        assert!((row.contrast.unwrap() - cells.iter().sum::<f64>() / 2.0).abs() < 1e-9);
        assert!((row.gap - (row.contrast.unwrap() - best)).abs() < 1e-12);
        let higher = rows.iter().filter(|o| o.contrast > row.contrast).count();
        assert_eq!(row.rank, higher + 1);
    }
    // One target: ranked by its mean log p, no contrast.
    let mut one = hiring();
    one.targets.truncate(1);
    let r = audit(&Fake::new(), &one).unwrap();
    let rows = &r.summary["country"];
    assert!(rows
        .iter()
        .all(|r| r.contrast.is_none() && r.contrast_ci.is_none()));
    let top = rows.iter().find(|r| r.rank == 1).unwrap();
    assert!(rows
        .iter()
        .all(|r| r.mean_log_prob[" hire"] <= top.mean_log_prob[" hire"]));
}

#[test]
fn cells_go_to_the_scorer_together_and_identical_prompts_once() {
    // "{a}{b} says": (x, y) and (xy, "") are the same prompt.
    let req = AuditRequest {
        template: Some("{a}{b} says".into()),
        sweep: [("a".to_string(), strings(&["x", "xy"]))].into_iter().collect(),
        baselines: Some(
            [("b".to_string(), Baseline::List(strings(&["y", ""])))]
                .into_iter()
                .collect(),
        ),
        contexts: Contexts::Average,
        targets: strings(&[" yes", " no"]),
        ..Default::default()
    };
    let fake = Fake::new();
    let r = audit(&fake, &req).unwrap();
    let calls = fake.calls.lock().unwrap();
    assert_eq!(calls.len(), 1, "every cell in one call");
    assert_eq!(calls[0].len(), 3 * 2, "3 distinct prompts x 2 targets");
    assert_eq!(r.stats.distinct_sequences, 6);
    assert_eq!(
        r.stats.tokens,
        calls[0].iter().map(ScoreItem::input_len).sum::<usize>()
    );
}

#[test]
fn plans_count_what_the_runs_score() {
    let mut requests = Vec::new();
    for method in [
        Method::FeatureAblation,
        Method::ShapleyValues,
        Method::ShapleyValueSampling,
        Method::Lime,
    ] {
        let mut r = t1(method);
        fake::product(&mut r);
        r.n_samples = Some(6);
        requests.push(r.clone());
        r.contrast_target = Some(" hire".into());
        requests.push(r);
    }
    let mut generated = t1(Method::FeatureAblation);
    generated.target = None;
    generated.max_new_tokens = Some(3);
    requests.push(generated);
    for r in &requests {
        let fake = Fake::new();
        let p = plan(r, &fake, &Limits::default()).unwrap();
        assert!(fake.calls.lock().unwrap().is_empty(), "a plan scores nothing");
        let done = go(&fake, r).unwrap();
        let what = format!("{:?} contrast {:?}", r.method, r.contrast_target);
        assert_eq!(p.distinct_sequences, done.stats.unique_sequences, "{what}");
        assert_eq!(p.distinct_sequences, fake.scored().len(), "{what}");
        assert_eq!(p.tokens, done.stats.tokens_scored, "{what}");
        assert_eq!(p.evaluations, done.stats.evaluations, "{what}");
        assert_eq!(p.coalitions, done.stats.coalitions, "{what}");
        assert_eq!(p.features, 3);
        assert!(p.coalitions <= p.evaluations && p.coalitions > 0);
    }
    let mut req = hiring();
    req.method = Some(Method::FeatureAblation);
    req.contexts = Contexts::Average;
    req.baselines = Some(
        [("job".to_string(), Baseline::List(strings(&["nurse", "CEO"])))]
            .into_iter()
            .collect(),
    );
    let fake = Fake::new();
    let p = audit::plan(&req, &fake, &Limits::default()).unwrap();
    assert!(fake.calls.lock().unwrap().is_empty());
    let r = audit(&fake, &req).unwrap();
    assert_eq!(p.distinct_sequences, r.stats.distinct_sequences);
    assert_eq!(p.distinct_sequences, fake.scored().len());
    assert_eq!(p.tokens, r.stats.tokens);
    assert_eq!(p.evaluations, 6 * 4, "feature ablation of 3 features in 6 cells");
}

#[test]
fn audit_progress_counts_sequences_up_to_the_plan() {
    let mut req = hiring();
    req.method = Some(Method::FeatureAblation);
    let seen = std::sync::Mutex::new(Vec::new());
    let fake = Fake::new();
    let r = audit::run(&req, &fake, &Limits::default(), &|p| seen.lock().unwrap().push(p)).unwrap();
    let seen = seen.into_inner().unwrap();
    assert!(!seen.is_empty());
    assert!(seen
        .iter()
        .all(|p| p.total == r.stats.distinct_sequences && p.done <= p.total));
    assert!(seen.windows(2).all(|w| w[0].done <= w[1].done));
    assert_eq!(seen.last().unwrap().done, r.stats.distinct_sequences);
}

/// With a contrast every method's value is linear in the two continuations' values, so exact
/// methods give the target's attribution minus the contrast's.
#[test]
fn contrast_is_target_minus_contrast_for_exact_methods() {
    for (method, attr_target) in [
        (Method::FeatureAblation, AttrTarget::LogProb),
        (Method::ShapleyValues, AttrTarget::LogProb),
        (Method::ShapleyValues, AttrTarget::Prob),
    ] {
        let mut req = t1(method);
        fake::product(&mut req);
        req.attr_target = attr_target;
        req.contrast_target = Some(" hire them".into());
        let fake = Fake::new();
        let both = go(&fake, &req).unwrap();
        let mut t = req.clone();
        t.contrast_target = None;
        let target = go(&Fake::new(), &t).unwrap();
        t.target = req.contrast_target.clone();
        let contrast = go(&Fake::new(), &t).unwrap();
        for f in 0..3 {
            let want = target.seq_attr[f] - contrast.seq_attr[f];
            assert!(
                (both.seq_attr[f] - want).abs() < 1e-9,
                "{method:?} {attr_target:?}"
            );
        }
        let nt = target.token_attr.len();
        assert_eq!(both.token_attr.len(), nt + contrast.token_attr.len());
        assert_eq!(&both.token_attr[..nt], &target.token_attr[..]);
        for (row, c) in both.token_attr[nt..].iter().zip(&contrast.token_attr) {
            let neg: Vec<f64> = c.iter().map(|x| -x).collect();
            assert_eq!(row, &neg, "contrast rows are negated");
        }
        assert_eq!(both.output_tokens, target.output_tokens);
        assert_eq!(
            both.contrast_output_tokens.as_ref(),
            Some(&contrast.output_tokens)
        );
        assert_eq!(both.contrast_log_probs.as_ref(), Some(&contrast.target_log_probs));
        assert_eq!(both.stats.unique_sequences, target.stats.unique_sequences * 2);
        // Both continuations of every prompt in the same call.
        for call in fake.calls.lock().unwrap().iter() {
            let prompts = |ids: &[u32]| -> Vec<Vec<u32>> {
                call.iter()
                    .filter(|i| i.target == ids)
                    .map(|i| i.prompt.clone())
                    .collect()
            };
            assert_eq!(
                prompts(&target.target_ids),
                prompts(both.contrast_ids.as_ref().unwrap())
            );
        }
    }
}

fn expect(e: Error, field: &str, words: &str) {
    assert_eq!(e.field(), Some(field), "{e}");
    assert!(e.to_string().contains(words), "{e} (wanted {words:?})");
}

#[test]
fn bad_audits_name_their_field() {
    let fake = Fake::new();
    let bad = |edit: &dyn Fn(&mut AuditRequest)| {
        let mut r = hiring();
        edit(&mut r);
        audit(&fake, &r).expect_err("must fail")
    };
    expect(
        bad(&|r| {
            r.sweep.insert("religion".into(), strings(&["a"]));
        }),
        "sweep.religion",
        "unknown placeholder",
    );
    expect(
        bad(&|r| r.sweep.get_mut("name").unwrap().clear()),
        "sweep.name",
        "empty",
    );
    expect(bad(&|r| r.sweep.clear()), "sweep", "at least one");
    expect(
        bad(&|r| r.sweep.get_mut("country").unwrap().push("Togo".into())),
        "sweep.country[2]",
        "twice",
    );
    expect(bad(&|r| r.targets.clear()), "targets", "at least one target");
    expect(bad(&|r| r.targets.push(" hire".into())), "targets[2]", "twice");
    expect(bad(&|r| r.targets[1] = String::new()), "targets[1]", "empty");
    expect(
        bad(&|r| {
            r.baselines = Some(
                [("name".to_string(), Baseline::One("John".into()))]
                    .into_iter()
                    .collect(),
            )
        }),
        "baselines.name",
        "swept",
    );
    expect(bad(&|r| r.contexts = Contexts::Average), "contexts", "baselines");
    expect(
        bad(&|r| {
            r.values.as_mut().unwrap().remove("job");
        }),
        "values.job",
        "missing",
    );
    let mut big = hiring();
    big.sweep
        .insert("job".into(), (0..200).map(|i| format!("job {i}")).collect());
    let limits = Limits {
        max_audit_cells: 1000,
        ..Limits::default()
    };
    let e = audit::run(&big, &fake, &limits, &|_| {}).unwrap_err();
    expect(e, "sweep", "1200 cells exceed the limit of 1000");
    let tight = Limits {
        max_sequences: 10,
        ..Limits::default()
    };
    expect(
        audit::run(&hiring(), &fake, &tight, &|_| {}).unwrap_err(),
        "sweep",
        "12 sequences",
    );
    let mut attributed = hiring();
    attributed.method = Some(Method::FeatureAblation);
    let room = Limits {
        max_sequences: 20,
        ..Limits::default()
    };
    expect(
        audit::run(&attributed, &fake, &room, &|_| {}).unwrap_err(),
        "method",
        "every cell",
    );
    assert!(
        fake.calls.lock().unwrap().is_empty(),
        "nothing is scored for a bad audit"
    );
}

#[test]
fn contrast_equal_to_the_target_is_refused() {
    let mut req = t1(Method::FeatureAblation);
    req.contrast_target = req.target.clone();
    expect(go(&Fake::new(), &req).unwrap_err(), "contrast_target", "same");
    req.contrast_target = Some(String::new());
    expect(go(&Fake::new(), &req).unwrap_err(), "contrast_target", "empty");
}

#[test]
fn audit_requests_parse_and_refuse_unknown_fields() {
    let r: AuditRequest = serde_json::from_str(
        r#"{"template": "{a} b", "sweep": {"a": ["x", "y"]}, "targets": [" c"], "contexts": "average",
            "method": "fa"}"#,
    )
    .unwrap();
    assert_eq!(
        (r.contexts, r.method),
        (Contexts::Average, Some(Method::FeatureAblation))
    );
    let e = serde_json::from_str::<AuditRequest>(r#"{"sweep": {}, "targets": [], "bogus": 1}"#).unwrap_err();
    assert!(e.to_string().contains("bogus"), "{e}");
    let e = serde_json::from_str::<AuditRequest>(r#"{"sweep": {"a": ["x"], "a": ["y"]}, "targets": []}"#)
        .unwrap_err();
    assert!(e.to_string().contains("duplicate"), "{e}");
}
