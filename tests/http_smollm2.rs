//! The real server with SmolLM2-135M-Instruct (GGUF): attributions, a template job with
//! product baselines over SSE, tokenize and generate, all against the PyTorch/Captum reference.

mod http_util;

use http_util::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_over_http_matches_the_reference() {
    let s = start(SMOLLM2, |_| {}).await;
    let c = client();
    let url = |p: &str| format!("{}{p}", s.url());

    for t in ["t1", "t2"] {
        let path = format!("smollm2/captum_{t}.json");
        let req = t1_request(&path, "shapley_values");
        let res = send(c.post(url("/v1/attributions")).json(&req), 200).await;
        let got: Value = res.json().await.unwrap();
        let want = &fixture(&path)["shapley_values"];
        assert_close(&got["seq_attr"], &want["seq_attr"], &format!("{t} seq_attr"));
        assert_close(
            &got["token_attr"],
            &want["token_attr"],
            &format!("{t} token_attr"),
        );
        assert_eq!(got["output_tokens"], want["output_tokens"]);
    }

    // t1 as /v1/templates serves it (the notebook's baseline lists), as a job with progress.
    let templates = send_json(c.get(url("/v1/templates"))).await;
    let t1 = &templates["templates"][0];
    let req = json!({"template": t1["template"], "values": t1["values"], "baselines": t1["baselines"],
        "target": t1["target"], "method": "shapley_values", "baseline_sampling": "exact"});
    let res = send(c.post(url("/v1/jobs")).json(&req), 202).await;
    let location = job_location(&res);
    let events = get_events(&c, url(&format!("{location}/events"))).await;
    let last = events.last().unwrap();
    assert_eq!(last.event, "done", "{events:?}");
    let progress: Vec<u64> = events
        .iter()
        .filter(|e| e.event == "progress")
        .map(|e| e.data["done"].as_u64().unwrap())
        .collect();
    assert!(progress.windows(2).all(|w| w[0] < w[1]), "{progress:?}");
    let want = fixture("smollm2/exact_product_t1.json");
    let result = &last.data["result"];
    assert_close(
        &result["seq_attr"],
        &want["shapley"]["seq_attr"],
        "product seq_attr",
    );
    assert_close(
        &result["token_attr"],
        &want["shapley"]["token_attr"],
        "product token_attr",
    );
    assert_eq!(result["target_ids"], want["target_ids"]);
    assert_eq!(last.data["progress"]["total"], want["unique_prompts"]);

    for case in fixture("smollm2/tokenization.json")
        .as_array()
        .unwrap()
        .iter()
        .take(5)
    {
        let res = send_json(c.post(url("/v1/tokenize")).json(&json!({"text": case["text"]}))).await;
        assert_eq!(res["ids"], case["ids"], "{}", case["text"]);
    }
    let case = &fixture("smollm2/generation.json")[0];
    let n = case["greedy_ids"].as_array().unwrap().len();
    let generate = json!({"prompt": case["prompt"], "max_new_tokens": n});
    let res = send_json(c.post(url("/v1/generate")).json(&generate)).await;
    assert_eq!(res["ids"], case["greedy_ids"]);
    let info = send_json(c.get(url("/v1/model"))).await;
    assert_eq!(info["architecture"], "llama");
    assert_eq!(info["chat_template"], true);

    // The chat version of t1, with the reference's single baselines: Captum on the rendered chat.
    let chat = templates["templates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "t1-chat")
        .unwrap();
    let want = fixture("smollm2/captum_chat.json");
    let req = json!({"messages": chat["messages"], "values": chat["values"],
        "baselines": want["template"]["baselines"], "target": chat["target"], "method": "feature_ablation"});
    let got = send_json(c.post(url("/v1/attributions")).json(&req)).await;
    assert_eq!(got["prompt"], want["rendered_prompt"]);
    assert_close(
        &got["seq_attr"],
        &want["feature_ablation"]["seq_attr"],
        "chat seq_attr",
    );
    let bad = json!({"messages": [{"role": "robot", "content": "{x}"}], "values": {"x": "a"}});
    let res = send(c.post(url("/v1/attributions")).json(&bad), 400).await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["field"], "messages[0].role");
    s.shutdown().await;
}
