//! Chat input on SmolLM2 with the chat template from its GGUF: renders equal transformers'
//! `apply_chat_template` (tests/fixtures/smollm2/chat_render.json, made by
//! scripts/reference/smollm2_chat.py), and bad chat requests get errors naming the field.

use std::path::Path;
use std::sync::OnceLock;

use llm_attr::api::parse_json;
use llm_attr::input::chat::sandbox::{Sandbox, SandboxLimits};
use llm_attr::input::chat::{Chat, ChatTemplate};
use llm_attr::input::template::{self, Piece};
use llm_attr::input::Input;
use llm_attr::model::load::gguf;
use llm_attr::model::Tokenizer;
use llm_attr::request::{AttributeRequest, ChatMessage};
use serde::Deserialize;
use serde_json::{json, Value};

fn smollm2() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
        let file = gguf::Gguf::open(&path).expect("SmolLM2 (scripts/fetch-models.sh)");
        gguf::tokenizer(&file).unwrap()
    })
}

/// Where the requests' own chat templates render: workers of the binary under test.
fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| Sandbox::new(env!("CARGO_BIN_EXE_llm-attr"), SandboxLimits::default()))
}

/// GPT-2's tokenizer: no chat template.
fn gpt2() -> Tokenizer {
    Tokenizer::from_file(Path::new("tests/fixtures/tiny-gpt2/tokenizer.json"), vec![]).unwrap()
}

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/smollm2")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[derive(Deserialize)]
struct Render {
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    text: String,
    ids: Vec<u32>,
}

#[test]
fn renders_equal_transformers_apply_chat_template() {
    let f = fixture("chat_render.json");
    let tok = smollm2();
    assert_eq!(
        tok.chat_template(),
        f["chat_template"].as_str(),
        "the GGUF's template"
    );
    let renders: Vec<Render> = serde_json::from_value(f["renders"].clone()).unwrap();
    assert!(renders
        .iter()
        .any(|r| r.messages[0].content.contains("helpful assistant")));
    assert!(renders
        .iter()
        .any(|r| !r.messages[0].content.contains("helpful assistant")));
    for r in renders {
        // The fixture's contents are plain text: as message text, their braces are literal.
        let messages: Vec<ChatMessage> = r
            .messages
            .iter()
            .map(|m| ChatMessage {
                role: m.role,
                content: template::escape(&m.content),
            })
            .collect();
        let chat_template = ChatTemplate {
            source: tok.chat_template().unwrap(),
            bos_token: tok.bos_token(),
            eos_token: tok.eos_token(),
            field: "messages",
            sandbox: None,
        };
        let rendered = Chat::new(chat_template, &messages, r.add_generation_prompt)
            .and_then(|c| c.to_template())
            .unwrap();
        let text: String = template::parse(&rendered)
            .unwrap()
            .into_iter()
            .map(|p| match p {
                Piece::Text(t) => t,
                Piece::Slot(name) => panic!("no placeholders here, found {name}"),
            })
            .collect();
        assert_eq!(text, r.text);
        assert_eq!(tok.encode(&text).unwrap(), r.ids, "{text:?}");
    }
}

fn request(body: Value) -> AttributeRequest {
    serde_json::from_value(body).unwrap()
}

fn t1_chat() -> Value {
    let f = fixture("captum_chat.json");
    json!({"messages": f["messages"], "values": f["template"]["values"],
           "baselines": f["template"]["baselines"], "target": f["template"]["target"]})
}

#[test]
fn a_chat_request_is_the_rendered_template() {
    let f = fixture("captum_chat.json");
    let input = Input::from_request(&request(t1_chat()), smollm2(), Some(sandbox())).unwrap();
    assert_eq!(input.prompt, f["rendered_prompt"].as_str().unwrap());
    let names: Vec<&str> = input.features.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["name", "country", "job"]);
    let ids = input.render(smollm2(), &[None, None, None]).unwrap();
    assert_eq!(serde_json::to_value(ids).unwrap(), f["prompt_ids"]);
    // Every feature absent: the markup stays, only the placeholders change.
    let absent = input.render(smollm2(), &[Some(0), Some(0), Some(0)]).unwrap();
    let text = smollm2().decode(&absent).unwrap();
    let want = f["template"]["prompt"]
        .as_str()
        .unwrap()
        .replace("{name}", "John")
        .replace("{country}", "Togo")
        .replace("{job}", "nurse");
    assert_eq!(text, want);
}

fn error(body: Value, tokenizer: &Tokenizer) -> (String, String) {
    let e = Input::from_request(&request(body), tokenizer, Some(sandbox())).expect_err("an error");
    (e.field().unwrap_or_default().to_string(), e.to_string())
}

#[test]
fn bad_chat_requests_name_the_field() {
    let with = |extra: Value| {
        let mut body = t1_chat();
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let (field, message) = error(t1_chat(), &gpt2());
    assert_eq!(field, "messages");
    assert!(message.contains("no chat template"), "{message}");

    let (field, _) = error(with(json!({"template": "{name}"})), smollm2());
    assert_eq!(field, "messages");
    let (field, _) = error(with(json!({"messages": []})), smollm2());
    assert_eq!(field, "messages");

    let refuses = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}";
    let (field, message) = error(with(json!({"chat_template": refuses})), smollm2());
    assert_eq!(field, "messages");
    assert!(message.contains("System role not supported"), "{message}");

    let (field, _) = error(
        with(json!({"chat_template": "{% for m in messages %}"})),
        smollm2(),
    );
    assert_eq!(field, "chat_template");

    // A value for a placeholder that no message holds.
    let (field, message) = error(
        with(json!({"values": {"name": "Georg", "country": "Germany", "job": "janitor", "age": "40"}})),
        smollm2(),
    );
    assert_eq!(field, "values.age");
    assert!(
        message.contains("messages have {name}, {country}, {job}"),
        "{message}"
    );

    let (field, _) = error(
        with(json!({"messages": [{"role": "user", "content": "no placeholder"}], "values": {}})),
        smollm2(),
    );
    assert_eq!(field, "messages");

    let (field, _) = error(
        json!({"template": "{x}", "values": {"x": "a"}, "chat_template": "x"}),
        smollm2(),
    );
    assert_eq!(field, "chat_template");

    let e = parse_json::<AttributeRequest>(
        br#"{"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "{x}"}]}"#,
    )
    .expect_err("unknown role");
    assert_eq!(e.field.as_deref(), Some("messages[1].role"), "{}", e.message);
    assert!(e.message.contains("user"), "{}", e.message);
}

/// A template's error that quotes message text shows the placeholders as the request wrote
/// them, never the sentinels that stand in for them while the template renders.
#[test]
fn errors_quote_placeholders_not_sentinels() {
    let mut body = t1_chat();
    body["chat_template"] = json!("{{ raise_exception(messages[1].content) }}");
    let (field, message) = error(body.clone(), smollm2());
    assert_eq!(field, "messages");
    assert!(
        message.contains("{name} from {country} applied for a job as a {job}"),
        "{message}"
    );
    assert!(!message.contains('\u{e000}'), "{message:?}");
    body["chat_template"] = json!("{{ messages[1].content | int(strict=true) }}");
    let (_, message) = error(body, smollm2());
    assert!(
        !message.chars().any(|c| ('\u{e000}'..='\u{f8ff}').contains(&c)),
        "{message:?}"
    );
}

/// Without a sandbox (the server's default), a request's own chat template is refused before
/// anything renders, naming the field and the flag that allows it.
#[test]
fn request_templates_are_refused_without_a_sandbox() {
    let mut body = t1_chat();
    body["chat_template"] = json!("{% for m in messages %}{{ m.content }}{% endfor %}");
    let e = Input::from_request(&request(body.clone()), smollm2(), None).expect_err("refused");
    assert_eq!(e.field(), Some("chat_template"));
    assert!(e.to_string().contains("--allow-request-templates"), "{e}");
    body.as_object_mut().unwrap().remove("chat_template");
    assert!(Input::from_request(&request(body), smollm2(), None).is_ok());
}

#[test]
fn add_generation_prompt_and_chat_template_override() {
    let mut body = t1_chat();
    body["add_generation_prompt"] = json!(false);
    let input = Input::from_request(&request(body.clone()), smollm2(), Some(sandbox())).unwrap();
    assert!(
        input.prompt.ends_with("application?<|im_end|>\n"),
        "{:?}",
        input.prompt
    );
    body["chat_template"] = json!("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}");
    let input = Input::from_request(&request(body), smollm2(), Some(sandbox())).unwrap();
    assert!(
        input.prompt.starts_with("[system] You are a helpful assistant"),
        "{:?}",
        input.prompt
    );
}
