//! The start-up probe: which server this is (unless the operator said), the model it serves,
//! the revision it reports and its context. vLLM and SGLang list models at `/v1/models` with
//! `owned_by` and `max_model_len`; TGI describes itself at `/info`; SGLang also at
//! `/get_model_info`; any other OpenAI-compatible server (llama-cpp-python) gets the echo form.

use serde_json::Value;

use super::client::Client;
use super::protocol::{Protocol, ServerFacts};
use super::PROBE_TIMEOUT;
use crate::error::{Error, Result};

/// What the server's description endpoints answered (`None`: 404 or not asked).
struct Answers {
    models: Option<Value>,
    tgi: Option<Value>,
    sglang: Option<Value>,
}

pub(super) async fn probe(client: &Client, asked: Protocol, model: Option<&str>) -> Result<ServerFacts> {
    let a = Answers {
        models: client
            .get("/v1/models", PROBE_TIMEOUT)
            .await
            .map_err(unreachable)?,
        tgi: match asked {
            Protocol::Auto | Protocol::Tgi => client.get("/info", PROBE_TIMEOUT).await.ok().flatten(),
            _ => None,
        },
        sglang: match asked {
            Protocol::Auto | Protocol::Sglang => {
                client.get("/get_model_info", PROBE_TIMEOUT).await.ok().flatten()
            }
            _ => None,
        },
    };
    let protocol = match asked {
        Protocol::Auto => detect(&a).ok_or_else(|| {
            Error::remote(
                format!(
                    "the server at {} answers none of /v1/models, /info (TGI) and \
                     /get_model_info (SGLang): is it an inference server? (--remote-protocol)",
                    client.root()
                ),
                false,
            )
        })?,
        p => p,
    };
    let listed = served(&a);
    let name = pick(&listed, model)?;
    let entry = entry_of(&a, &name);
    let facts = ServerFacts {
        protocol,
        revision: revision(&a, entry),
        context: context(&a, entry),
        model: name,
    };
    tracing::info!(
        url = client.root(),
        protocol = protocol.name(),
        auto = asked == Protocol::Auto,
        model = %facts.model,
        revision = %facts.revision,
        context = facts.context,
        "inference server found"
    );
    Ok(facts)
}

/// The start-up error for a server that cannot be reached.
fn unreachable(e: Error) -> Error {
    e.with_remote_message(|m| format!("{m} (start with --remote-lazy to wait for it)"))
}

fn detect(a: &Answers) -> Option<Protocol> {
    let owner = |who: &str| {
        list(a.models.as_ref())
            .iter()
            .any(|m| m.get("owned_by").and_then(Value::as_str) == Some(who))
    };
    if a.tgi
        .as_ref()
        .is_some_and(|i| i.get("model_id").is_some() && i.get("max_total_tokens").is_some())
    {
        Some(Protocol::Tgi)
    } else if a.sglang.as_ref().is_some_and(|i| i.get("model_path").is_some()) || owner("sglang") {
        Some(Protocol::Sglang)
    } else if owner("vllm") {
        Some(Protocol::Vllm)
    } else {
        a.models.as_ref().map(|_| Protocol::OpenaiEcho)
    }
}

fn list(models: Option<&Value>) -> &[Value] {
    models
        .and_then(|m| m.get("data"))
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The names the server serves.
fn served(a: &Answers) -> Vec<String> {
    let mut names: Vec<String> = list(a.models.as_ref())
        .iter()
        .filter_map(|m| m.get("id").and_then(Value::as_str).map(str::to_string))
        .collect();
    let other = [
        a.tgi.as_ref().and_then(|i| i.get("model_id")),
        a.sglang.as_ref().and_then(|i| i.get("model_path")),
    ];
    if names.is_empty() {
        names.extend(
            other
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string),
        );
    }
    names
}

/// The asked name (which the server must serve), or the only one it serves.
fn pick(listed: &[String], model: Option<&str>) -> Result<String> {
    let field = "remote-model";
    match (model, listed) {
        (Some(m), _) if listed.is_empty() || listed.iter().any(|l| l == m) => Ok(m.to_string()),
        (Some(m), _) => Err(Error::invalid(
            field,
            format!("the server does not serve {m:?}; it serves {}", listed.join(", ")),
        )),
        (None, [one]) => Ok(one.clone()),
        (None, []) => Err(Error::invalid(
            field,
            "the server lists no model; name it with --remote-model",
        )),
        (None, many) => Err(Error::invalid(
            field,
            format!(
                "the server serves several models ({}); choose one with --remote-model",
                many.join(", ")
            ),
        )),
    }
}

fn entry_of<'a>(a: &'a Answers, name: &str) -> Option<&'a Value> {
    list(a.models.as_ref())
        .iter()
        .find(|m| m.get("id").and_then(Value::as_str) == Some(name))
}

/// What pins the weights: TGI's `model_sha`, SGLang's model path, vLLM's `root`.
fn revision(a: &Answers, entry: Option<&Value>) -> String {
    let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    s(a.tgi.as_ref().and_then(|i| i.get("model_sha")))
        .or_else(|| s(a.sglang.as_ref().and_then(|i| i.get("model_path"))))
        .or_else(|| s(entry.and_then(|e| e.get("root"))))
        .unwrap_or_default()
}

/// The most tokens a sequence may have: `max_model_len` or TGI's `max_total_tokens`.
fn context(a: &Answers, entry: Option<&Value>) -> Option<usize> {
    let n = |v: Option<&Value>| v.and_then(Value::as_u64).map(|x| x as usize);
    n(entry.and_then(|e| e.get("max_model_len")))
        .or_else(|| n(a.tgi.as_ref().and_then(|i| i.get("max_total_tokens"))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answers(models: Option<Value>, tgi: Option<Value>, sglang: Option<Value>) -> Answers {
        Answers { models, tgi, sglang }
    }

    #[test]
    fn servers_are_told_apart_by_what_they_describe() {
        let vllm = json!({"object": "list", "data": [{"id": "m", "owned_by": "vllm", "root": "/w/m", "max_model_len": 2048}]});
        assert_eq!(
            detect(&answers(Some(vllm.clone()), None, None)),
            Some(Protocol::Vllm)
        );
        let tgi = json!({"model_id": "org/m", "model_sha": "abc", "max_total_tokens": 4096});
        assert_eq!(detect(&answers(None, Some(tgi), None)), Some(Protocol::Tgi));
        let sgl = json!({"model_path": "org/m", "is_generation": true});
        assert_eq!(
            detect(&answers(Some(vllm.clone()), None, Some(sgl))),
            Some(Protocol::Sglang)
        );
        let llama = json!({"object": "list", "data": [{"id": "x.gguf", "owned_by": "me"}]});
        assert_eq!(
            detect(&answers(Some(llama), None, None)),
            Some(Protocol::OpenaiEcho)
        );
        assert_eq!(detect(&answers(None, None, None)), None);
        let a = answers(Some(vllm), None, None);
        assert_eq!(revision(&a, entry_of(&a, "m")), "/w/m");
        assert_eq!(context(&a, entry_of(&a, "m")), Some(2048));
    }

    #[test]
    fn the_model_must_be_served_and_named_when_several_are() {
        let two = vec!["a".to_string(), "b".to_string()];
        assert_eq!(pick(&two, Some("b")).unwrap(), "b");
        let e = pick(&two, Some("c")).unwrap_err().to_string();
        assert!(e.contains("remote-model") && e.contains("a, b"), "{e}");
        assert!(pick(&two, None).unwrap_err().to_string().contains("several"));
        assert_eq!(pick(&two[..1], None).unwrap(), "a");
    }
}
