"""Cancellation and retries on a real, really busy server (SmolLM2, one run slot)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from conftest import direct

import llm_attr

# Thousands of sequences on SmolLM2: minutes of work, so it is still running when cancelled.
LONG = {
    "text": "Georg from Germany applied for a job as a janitor at a large bakery in the old town. "
            "The hiring manager read the letter twice and then decided to",
    "target": " reject the application without further consideration.",
    "method": "shapley_value_sampling",
    "n_samples": 300,
    "baseline_token": 0,
}
SMALL = {"template": "{name} applied.", "values": {"name": "Georg"},
         "baselines": {"name": "John"}, "target": " Hired.", "method": "feature_ablation"}


def running(client: llm_attr.Client, job: llm_attr.Job) -> None:
    """Wait (on the job's own event stream) until it has scored something."""
    with httpx.stream("GET", f"{client.url}{job.path}/events", timeout=None) as events:
        for line in events.iter_lines():
            if line.startswith("data:") and '"done":' in line and '"done":0,' not in line:
                return
    raise AssertionError(f"job {job.id} ended before it started scoring")


def answered_503(client: llm_attr.Client) -> int:
    """503s the server answered on /v1/attributions, from its metrics."""
    text = httpx.get(client.url + "/metrics").text
    pattern = (r'llm_attr_http_requests_total\{[^}]*route="/v1/attributions"'
               r'[^}]*status="503"\} (\d+)')
    return sum(int(n) for n in re.findall(pattern, text))


@pytest.fixture
def long_job(busy: llm_attr.Client) -> Iterator[llm_attr.Job]:
    job = busy.submit(**LONG)
    running(busy, job)
    yield job
    job.cancel()


def test_cancel_ends_the_job_on_the_server(busy: llm_attr.Client,
                                           long_job: llm_attr.Job) -> None:
    cancelled = long_job.cancel()
    assert cancelled.state == "cancelled"
    status, raw = direct(busy, "GET", f"/v1/jobs/{long_job.id}")
    assert status == 200 and raw["state"] == "cancelled"
    assert raw["progress"]["done"] < raw["progress"]["total"]
    with pytest.raises(llm_attr.JobError) as caught:
        long_job.wait()
    assert caught.value.state == "cancelled"
    # The run slot is free again: a synchronous request is answered (retried until it is).
    assert busy.attribute(**SMALL).seq_attr.shape == (1,)


def test_retries_503_until_a_slot_frees(busy: llm_attr.Client, long_job: llm_attr.Job) -> None:
    # The server's real answer while its only run slot is taken: 503 with Retry-After.
    with pytest.raises(llm_attr.ServerError) as caught:
        llm_attr.Client(busy.url, max_retries=0).attribute(**SMALL)
    err = caught.value
    assert (err.status, err.code, err.retry_after) == (503, "overloaded", 1.0)

    before = answered_503(busy)

    def free_the_slot() -> None:
        # Once the retrying client has been answered 503 at least once, cancel the long job.
        while answered_503(busy) == before:
            time.sleep(0.05)
        long_job.cancel()

    helper = threading.Thread(target=free_the_slot)
    helper.start()
    result = llm_attr.Client(busy.url, max_retries=30).attribute(**SMALL)
    helper.join()
    assert answered_503(busy) > before
    _, raw = direct(busy, "POST", "/v1/attributions", SMALL)
    np.testing.assert_array_equal(result.seq_attr, raw["seq_attr"])
