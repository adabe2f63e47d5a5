//! Segmented placeholders (`split`), `hierarchy` and context_cite against the fake scorer
//! (GPT-2's tokenizer, log-probs a known function of the prompt): the prompts each ablation
//! scores, template, chat, contrast and audit input, and every bad input.

mod fake;

use std::collections::BTreeMap;

use fake::{fake_log_probs, go, Fake};
use llm_attr::audit::{self, AuditRequest};
use llm_attr::request::{AttrTarget, AttributeRequest, Baseline, ChatMessage, Method, Role, SplitKind};
use llm_attr::run::{run, Limits};
use llm_attr::scorer::Scorer;
use llm_attr::{context_cite_masks, context_cite_weights};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const CONTEXT: &str = "Ada fixed the lamp. Tom rang the bell.\n\nThe ferry left at noon. Rain fell.";
const TEMPLATE: &str = "Context: {context}\nQ: Who fixed the lamp?\nA:";

fn request(method: Method, kind: SplitKind) -> AttributeRequest {
    AttributeRequest {
        template: Some(TEMPLATE.into()),
        values: Some(BTreeMap::from([("context".into(), CONTEXT.into())])),
        split: Some(BTreeMap::from([("context".into(), kind)])),
        target: Some(" Ada".into()),
        method,
        ..Default::default()
    }
}

/// The fake's sequence value of `context` in the template.
fn value(fake: &Fake, context: &str, target: &str) -> f64 {
    let tok = fake.tokenizer();
    let ids = tok
        .encode_prompt(&TEMPLATE.replace("{context}", context))
        .unwrap();
    let t = tok.encode(target).unwrap();
    fake_log_probs(&ids, &t).iter().map(|&v| f64::from(v)).sum()
}

fn error(fake: &Fake, req: &AttributeRequest) -> (String, String) {
    let e = go(fake, req).unwrap_err();
    (e.field().unwrap_or("").to_string(), e.to_string())
}

#[test]
fn each_sentence_is_a_feature_and_goes_with_one_gap() {
    let fake = Fake::new();
    let r = go(&fake, &request(Method::FeatureAblation, SplitKind::Sentence)).unwrap();
    let names: Vec<&str> = r.features.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "context[0] Ada fixed the lamp.",
            "context[1] Tom rang the bell.",
            "context[2] The ferry left at noon.",
            "context[3] Rain fell."
        ]
    );
    let s = &r.features[2].segments[0];
    assert_eq!(
        (s.placeholder.as_str(), s.index, s.start, s.end),
        ("context", 2, 40, 63)
    );
    let full = value(&fake, CONTEXT, " Ada");
    let ablated = [
        "Tom rang the bell.\n\nThe ferry left at noon. Rain fell.",
        "Ada fixed the lamp.\n\nThe ferry left at noon. Rain fell.",
        "Ada fixed the lamp. Tom rang the bell.\n\nRain fell.",
        "Ada fixed the lamp. Tom rang the bell.\n\nThe ferry left at noon.",
    ];
    for (i, text) in ablated.iter().enumerate() {
        let want = full - value(&fake, text, " Ada");
        assert!(
            (r.seq_attr[i] - want).abs() < 1e-9,
            "{i}: {} vs {want}",
            r.seq_attr[i]
        );
    }
    assert_eq!(r.token_attr.len(), 1, "one row per target token");
    assert_eq!(r.stats.unique_sequences, 5);
}

#[test]
fn a_baseline_replaces_the_segment_and_masks_group_segments() {
    let fake = Fake::new();
    let mut req = request(Method::FeatureAblation, SplitKind::Paragraph);
    req.baselines = Some(BTreeMap::from([(
        "context".into(),
        Baseline::One("[gone]".into()),
    )]));
    let r = go(&fake, &req).unwrap();
    assert_eq!(r.features.len(), 2);
    let want =
        value(&fake, CONTEXT, " Ada") - value(&fake, "[gone]\n\nThe ferry left at noon. Rain fell.", " Ada");
    assert!((r.seq_attr[0] - want).abs() < 1e-9);

    let mut req = request(Method::ShapleyValues, SplitKind::Sentence);
    req.mask = Some(BTreeMap::from([
        ("context[0]".into(), "lamp".into()),
        ("context[3]".into(), "lamp".into()),
    ]));
    let r = go(&fake, &req).unwrap();
    let names: Vec<&str> = r.features.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "lamp",
            "context[1] Tom rang the bell.",
            "context[2] The ferry left at noon."
        ]
    );
    assert_eq!(r.features[0].value, "Ada fixed the lamp. Rain fell.");
    assert_eq!(r.features[0].segments.len(), 2);
    // Shapley values add up to v(all) - v(none).
    let total = value(&fake, CONTEXT, " Ada") - value(&fake, "", " Ada");
    assert!((r.seq_attr.iter().sum::<f64>() - total).abs() < 1e-9);
}

#[test]
fn chat_contrast_and_audit_take_segments() {
    let fake = Fake::new();
    let mut req = request(Method::FeatureAblation, SplitKind::Sentence);
    req.template = None;
    req.messages = Some(vec![ChatMessage {
        role: Role::User,
        content: "Read: {context}".into(),
    }]);
    req.chat_template = Some("{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}".into());
    req.contrast_target = Some(" Tom".into());
    let r = go(&fake, &req).unwrap();
    assert_eq!(r.features.len(), 4);
    assert_eq!(r.token_attr.len(), 2, "target and contrast rows");
    assert!(r.prompt.starts_with("<user>Read: Ada fixed"), "{}", r.prompt);

    let audit_req = AuditRequest {
        template: Some("{who} read: {context}\nA:".into()),
        values: Some(BTreeMap::from([("context".into(), CONTEXT.into())])),
        split: Some(BTreeMap::from([("context".into(), SplitKind::Paragraph)])),
        sweep: BTreeMap::from([("who".into(), vec!["Ada".into(), "Tom".into()])]),
        targets: vec![" yes".into()],
        method: Some(Method::FeatureAblation),
        ..Default::default()
    };
    let a = audit::run(&audit_req, &fake, &fake::limits(), &|_| {}).unwrap();
    let cell = a.cells[0].attribution.as_ref().unwrap();
    let names: Vec<&str> = cell.features.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "who",
            "context[0] Ada fixed the lamp. Tom rang…",
            "context[1] The ferry left at noon. Rain…"
        ]
    );
    let mut swept = audit_req.clone();
    swept.split = Some(BTreeMap::from([("who".into(), SplitKind::Word)]));
    let e = audit::run(&swept, &fake, &fake::limits(), &|_| {}).unwrap_err();
    assert_eq!(e.field(), Some("split.who"), "{e}");
}

#[test]
fn hierarchy_refines_the_top_paragraphs_only() {
    let fake = Fake::new();
    let mut req = request(Method::FeatureAblation, SplitKind::Sentence);
    req.hierarchy = Some(vec![SplitKind::Paragraph, SplitKind::Sentence]);
    req.top_k = Some(1);
    let r = go(&fake, &req).unwrap();
    let levels = r.levels.as_ref().unwrap();
    assert_eq!(levels.len(), 2);
    assert_eq!(levels[0].features.len(), 2);
    let top = if levels[0].seq_attr[0] >= levels[0].seq_attr[1] {
        0
    } else {
        1
    };
    assert_eq!(levels[0].refined, vec![top]);
    // The second level's features are the top paragraph's two sentences; the other stays whole.
    let want: Vec<&str> = if top == 0 {
        vec!["Ada fixed the lamp.", "Tom rang the bell."]
    } else {
        vec!["The ferry left at noon.", "Rain fell."]
    };
    let got: Vec<&str> = r.features.iter().map(|f| f.value.as_str()).collect();
    assert_eq!(got, want);
    assert_eq!(
        r.stats.unique_sequences,
        levels[0].stats.unique_sequences + levels[1].stats.unique_sequences
    );
    // Leave-one-out of a sentence: the other paragraph is in both prompts.
    let removed = if top == 0 {
        "Tom rang the bell.\n\nThe ferry left at noon. Rain fell."
    } else {
        "Ada fixed the lamp. Tom rang the bell.\n\nRain fell."
    };
    let v = value(&fake, CONTEXT, " Ada") - value(&fake, removed, " Ada");
    assert!((r.seq_attr[0] - v).abs() < 1e-9);
}

#[test]
fn context_cite_fits_the_logit_probability_on_seeded_masks() {
    let fake = Fake::new();
    let mut req = request(Method::ContextCite, SplitKind::Sentence);
    req.seed = Some(7);
    req.n_samples = Some(16);
    let r = go(&fake, &req).unwrap();
    assert_eq!(r.attr_target, AttrTarget::LogitProb);
    let masks = context_cite_masks(4, 16, &mut ChaCha8Rng::seed_from_u64(7));
    let sentences = [
        "Ada fixed the lamp.",
        "Tom rang the bell.",
        "The ferry left at noon.",
        "Rain fell.",
    ];
    let logit = |lp: f64| lp - (-lp.exp_m1()).ln();
    let y: Vec<f64> = masks
        .iter()
        .map(|m| {
            let kept: Vec<&str> = (0..4).filter(|&i| m[i]).map(|i| sentences[i]).collect();
            // Only the paragraph break between sentences 1 and 2 is strong.
            let mut text = String::new();
            let mut last: Option<usize> = None;
            for (i, s) in sentences.iter().enumerate().filter(|(i, _)| m[*i]) {
                if let Some(l) = last {
                    text.push_str(if l < 2 && i >= 2 { "\n\n" } else { " " });
                }
                text.push_str(s);
                last = Some(i);
            }
            let _ = kept;
            logit(value(&fake, &text, " Ada"))
        })
        .collect();
    let want = context_cite_weights(&masks, &y, 1);
    for (g, w) in r.seq_attr.iter().zip(&want) {
        assert!((g - w).abs() < 1e-9, "{:?} vs {want:?}", r.seq_attr);
    }
    req.attr_target = AttrTarget::Prob;
    assert_eq!(error(&fake, &req).0, "attr_target");
}

#[test]
fn bad_split_requests_name_their_field() {
    let fake = Fake::new();
    let mut req = request(Method::FeatureAblation, SplitKind::Sentence);
    req.split = Some(BTreeMap::from([("ctx".into(), SplitKind::Sentence)]));
    let (field, message) = error(&fake, &req);
    assert_eq!(field, "split.ctx", "{message}");

    let body =
        serde_json::json!({"template": TEMPLATE, "values": {"context": "a"}, "split": {"context": "clause"}});
    let e = serde_json::from_value::<AttributeRequest>(body)
        .unwrap_err()
        .to_string();
    assert!(e.contains("clause") && e.contains("sentence"), "{e}");

    let mut req = request(Method::FeatureAblation, SplitKind::Sentence);
    req.values = Some(BTreeMap::from([("context".into(), " \n ".into())]));
    let (field, message) = error(&fake, &req);
    assert_eq!(field, "values.context", "{message}");

    let long: String = (0..70).map(|i| format!("Fact {i} holds. ")).collect();
    let mut req = request(Method::FeatureAblation, SplitKind::Sentence);
    req.values = Some(BTreeMap::from([("context".into(), long.clone())]));
    let (field, message) = error(&fake, &req);
    assert_eq!(field, "split.context", "{message}");
    assert!(
        message.contains("70 segments") && message.contains("hierarchy"),
        "{message}"
    );

    // Exact Shapley over 40 sentences: refused before anything is scored.
    let forty: String = (0..40).map(|i| format!("Fact {i} holds. ")).collect();
    let mut req = request(Method::ShapleyValues, SplitKind::Sentence);
    req.values = Some(BTreeMap::from([("context".into(), forty)]));
    let (field, message) = error(&fake, &req);
    assert_eq!(field, "method", "{message}");
    assert!(
        message.contains("context_cite") && message.contains("feature_ablation"),
        "{message}"
    );
    assert!(fake.scored().is_empty());

    let mut req = request(Method::FeatureAblation, SplitKind::Sentence);
    req.hierarchy = Some(vec![SplitKind::Paragraph, SplitKind::Sentence]);
    assert_eq!(error(&fake, &req).0, "top_k");
    req.top_k = Some(2);
    req.hierarchy = Some(vec![SplitKind::Sentence, SplitKind::Paragraph]);
    assert_eq!(error(&fake, &req).0, "hierarchy");

    // A prompt past the model's context: how many tokens over.
    let mut req = request(Method::FeatureAblation, SplitKind::Paragraph);
    req.values = Some(BTreeMap::from([("context".into(), "word ".repeat(1100))]));
    let limits = Limits {
        max_tokens_per_sequence: 4096,
        ..Limits::default()
    };
    let e = run(&req, &fake, &limits, &|_| {}).unwrap_err();
    assert_eq!(e.field(), Some("template"), "{e}");
    assert!(
        e.to_string().contains("tokens over") && e.to_string().contains("context length"),
        "{e}"
    );
}
