"""Every Client and AsyncClient method against a real server, compared with direct HTTP calls."""

from __future__ import annotations

import asyncio
import io
import socket
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import T1, direct
from tqdm import tqdm

import llm_attr

TEXT = "Georg from Germany applied for a job as a janitor."
CHAT = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>"

# One request per input kind and method option: every field of AttributeRequest is sent.
REQUESTS: dict[str, dict[str, Any]] = {
    "template_exact": {**T1, "method": "shapley_values"},
    "template_mask": {**T1, "mask": {"name": "who", "country": "who", "job": "job"},
                      "method": "feature_ablation", "attr_target": "prob"},
    "template_sampled": {**T1, "method": "shapley_value_sampling", "n_samples": 5, "seed": 3,
                         "num_trials": 2, "baseline_sampling": "sample"},
    "lime_contrast": {**T1, "method": "lime", "n_samples": 20, "seed": 1,
                      "contrast_target": " hire him."},
    "kernel_shap": {**T1, "method": "kernel_shap", "n_samples": 20, "seed": 2},
    "chat": {"messages": [{"role": "system", "content": "Be fair."},
                          {"role": "user", "content": "{name} from {country} applied."}],
             "chat_template": CHAT, "add_generation_prompt": True,
             "values": {"name": "Georg", "country": "Germany"},
             "baselines": {"name": "John", "country": "Togo"},
             "target": " Hire.", "method": "feature_ablation"},
    "tokens": {"text": TEXT, "skip_tokens": ["."], "baseline_token": 0, "target": " No.",
               "method": "feature_ablation"},
    "generated_target": {"text": TEXT, "max_new_tokens": 3, "method": "feature_ablation"},
    "integrated_gradients": {"text": TEXT, "target": " No.", "method": "integrated_gradients",
                             "n_steps": 8, "integration": "riemann_trapezoid"},
    "gradient_shap": {"text": TEXT, "target": " No.", "method": "gradient_shap",
                      "n_samples": 3, "seed": 4},
}


def same(result: llm_attr.Attribution, raw: dict[str, Any]) -> None:
    """The client's numbers are the server's, bit for bit."""
    np.testing.assert_array_equal(result.seq_attr, raw["seq_attr"])
    np.testing.assert_array_equal(result.token_attr, np.asarray(raw["token_attr"]))
    np.testing.assert_array_equal(result.target_log_probs, raw["target_log_probs"])
    assert result.output_tokens == raw["output_tokens"]
    assert result.features == raw["features"]
    for key in ("seq_attr_stderr", "contrast_log_probs", "convergence_delta"):
        if raw.get(key) is not None:
            np.testing.assert_array_equal(getattr(result, key), raw[key])


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_attribute_equals_direct_http(client: llm_attr.Client, name: str) -> None:
    body = REQUESTS[name]
    status, raw = direct(client, "POST", "/v1/attributions", body)
    assert status == 200, raw
    same(client.attribute(**body), raw)
    same(client.attribute(llm_attr.AttributeRequest(**body)), raw)


def test_attribution_tables(client: llm_attr.Client) -> None:
    result = client.attribute(**REQUESTS["lime_contrast"])
    frame = result.to_pandas()
    assert list(frame.columns) == ["Georg", "Germany", "janitor"]
    assert len(frame) == len(result.output_tokens) + len(result.contrast_output_tokens)
    np.testing.assert_array_equal(frame.to_numpy(), result.token_attr)
    np.testing.assert_array_equal(result.seq_to_pandas().to_numpy(), result.seq_attr)
    assert result.seq_attr_dict == dict(zip(result.input_tokens, result.seq_attr.tolist()))
    html = result._repr_html_()
    assert "<script" not in html
    assert html.count("<td") == result.token_attr.size + result.seq_attr.size
    assert f"{result.token_attr[0, 0]:.4f}" in html


def test_submit_job_equals_direct_http(client: llm_attr.Client) -> None:
    body = REQUESTS["template_exact"]
    _, raw = direct(client, "POST", "/v1/attributions", body)
    job = client.submit(**body)
    assert job.kind == "attribution" and job.state in ("queued", "running", "done")
    result = job.wait()
    assert isinstance(result, llm_attr.Attribution)
    same(result, raw)
    same(job.result(), raw)  # type: ignore[arg-type]
    assert client.job(job.id).state == "done"


def test_progress_bar_reaches_total(client: llm_attr.Client) -> None:
    bar = tqdm(file=io.StringIO())
    job = client.submit(**{**T1, "method": "shapley_value_sampling", "n_samples": 40})
    job.wait(progress=bar)
    done, total = job.progress
    assert total > 0 and done == total
    assert bar.total == total and bar.n == total
    client.submit(**REQUESTS["template_exact"]).wait(progress=True)  # the notebook's own bar


def test_plan_equals_direct_http(client: llm_attr.Client) -> None:
    audit = {**AUDIT, "method": None}
    for body in (REQUESTS["template_exact"], {k: v for k, v in audit.items() if v}):
        _, raw = direct(client, "POST", "/v1/plan", body)
        plan = client.plan(**body)
        for key in ("features", "coalitions", "evaluations", "distinct_sequences", "tokens"):
            assert getattr(plan, key) == raw[key], key
    positional = client.plan(REQUESTS["template_exact"])
    assert positional.evaluations == client.plan(**REQUESTS["template_exact"]).evaluations


AUDIT: dict[str, Any] = {
    "template": T1["template"],
    "values": {"job": "janitor"},
    "sweep": {"name": ["Emily", "Jamal"], "country": ["Germany", "Togo"]},
    "targets": [" hire", " reject"],
    "baselines": {"job": ["nurse", "engineer"]},
    "contexts": "average",
    "method": "feature_ablation",
}


def test_audit_equals_direct_http(client: llm_attr.Client) -> None:
    audit = client.audit(**AUDIT, progress=tqdm(file=io.StringIO()))
    job = client.submit_audit(**AUDIT)
    assert job.kind == "audit"
    httpx.get(f"{client.url}/v1/audits/{job.id}/events", timeout=300)  # ends with the job
    _, finished = direct(client, "GET", f"/v1/audits/{job.id}")
    assert finished["state"] == "done"
    expected = finished["result"]
    cells = audit.cells
    assert len(cells) == 4 * 2
    assert cells["log_prob"].tolist() == [
        c["log_prob"][t] for c in expected["cells"] for t in expected["targets"]]
    summary = audit.summary
    assert set(summary["placeholder"]) == {"name", "country"}
    assert summary["contrast"].tolist() == [
        r["contrast"] for rows in expected["summary"].values() for r in rows]
    first = audit.attributions[0]
    assert first is not None
    np.testing.assert_array_equal(first.seq_attr, expected["cells"][0]["attribution"]["seq_attr"])
    _fig, axes = audit.plot()
    assert len(axes[0]) == 2


def test_templates_health_model_tokenize_generate(client: llm_attr.Client) -> None:
    templates = client.templates()
    _, raw = direct(client, "GET", "/v1/templates")
    assert [t.id for t in templates] == [t["id"] for t in raw["templates"]]
    assert templates[0].id == "t1" and templates[0].template
    result = client.attribute(templates[0].request(method="feature_ablation"))
    assert len(result.seq_attr) == 3
    assert client.health() == direct(client, "GET", "/health")[1]
    assert client.ready()
    assert client.model_info() == direct(client, "GET", "/v1/model")[1]
    assert client.model.info["architecture"] == "gpt2"
    assert client.tokenize(TEXT) == direct(client, "POST", "/v1/tokenize", {"text": TEXT})[1]
    assert client.tokenizer.encode(TEXT) == client.tokenize(TEXT)["ids"]
    body = {"prompt": TEXT, "max_new_tokens": 4}
    assert client.generate(TEXT, 4) == direct(client, "POST", "/v1/generate", body)[1]


def test_async_client(client: llm_attr.Client) -> None:
    body = REQUESTS["template_exact"]
    _, raw = direct(client, "POST", "/v1/attributions", body)

    async def run() -> None:
        async with llm_attr.AsyncClient(client.url) as ac:
            same(await ac.attribute(**body), raw)
            job = await ac.submit(**body)
            same(await job.wait(progress=tqdm(file=io.StringIO())), raw)  # type: ignore[arg-type]
            same(await job.result(), raw)  # type: ignore[arg-type]
            assert (await ac.job(job.id)).state == "done"
            assert (await ac.plan(body)).evaluations == client.plan(body).evaluations
            audit = await ac.audit(**AUDIT)
            assert len(audit.cells) == 8
            assert next(t.id for t in await ac.templates()) == "t1"
            assert (await ac.health())["status"] == "ok" and await ac.ready()
            assert (await ac.model_info())["architecture"] == "gpt2"
            assert (await ac.tokenize(TEXT)) == client.tokenize(TEXT)
            assert (await ac.generate(TEXT, 2)) == client.generate(TEXT, 2)
            with pytest.raises(llm_attr.RequestError):
                await ac.attribute(**{**body, "n_samples": -1})

    asyncio.run(run())


def test_request_error_fields(client: llm_attr.Client) -> None:
    bad = {**T1, "values": {"name": "Georg", "country": "Germany"}}
    status, raw = direct(client, "POST", "/v1/attributions", bad)
    with pytest.raises(llm_attr.RequestError) as caught:
        client.attribute(**bad)
    err = caught.value
    assert err.status == status and 400 <= status < 500
    assert err.field == raw["error"]["field"] == "values.job"
    assert err.code == raw["error"]["code"] and err.message == raw["error"]["message"]
    assert "values.job" in str(err)
    with pytest.raises(llm_attr.RequestError) as missing:
        client.job("no-such-job")
    assert missing.value.status == 404 and missing.value.code == "not_found"
    with pytest.raises(TypeError, match="n_sample"):
        client.attribute(**T1, n_sample=3)


def test_connection_error_names_the_url() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(llm_attr.ConnectError, match=f"127.0.0.1:{port}/health"):
        llm_attr.Client(url).health()


def test_serve_reports_a_failed_start(tmp_path: Any) -> None:
    with pytest.raises(llm_attr.LLMAttrError, match="exited"), \
            llm_attr.serve(model=tmp_path / "missing.gguf"):
        pass
    with pytest.raises(llm_attr.LLMAttrError, match="LLM_ATTR_BIN"), \
            llm_attr.serve(bin=tmp_path / "no-binary"):
        pass
