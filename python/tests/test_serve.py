"""llm_attr.serve's process, API keys, and the retry and event-stream parsing rules."""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest
from conftest import TINY

import llm_attr
from llm_attr import _http


def test_serve_stops_the_server_and_sends_the_api_key() -> None:
    server = llm_attr.serve(model=TINY, args=["--api-key", "s3cret"])
    with server as client:
        with pytest.raises(llm_attr.RequestError) as caught:
            client.templates()
        assert (caught.value.status, caught.value.code) == (401, "unauthorized")
        with llm_attr.Client(server.url, api_key="s3cret") as keyed:
            assert keyed.templates()[0].id == "t1"
    assert server.process.poll() is not None
    with pytest.raises(llm_attr.ConnectError, match=server.url):
        llm_attr.Client(server.url).health()


def response(status: int, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers, request=httpx.Request("GET", "http://x/"))


def test_retry_delay_honours_retry_after() -> None:
    assert _http.retry_delay(response(503, **{"Retry-After": "2"}), 0, 3) == 2.0
    assert _http.retry_delay(response(429), 2, 3) == 2.0  # no header: 0.5 s doubling
    assert _http.retry_delay(response(503, **{"Retry-After": "9999"}), 0, 3) == 60.0
    assert _http.retry_delay(response(503), 3, 3) is None  # retries used up
    assert _http.retry_delay(response(500), 0, 3) is None  # not retried
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    delay = _http.retry_delay(response(503, **{"Retry-After": date}), 0, 3)
    assert delay is not None and 25 < delay <= 30


def test_sse_parser() -> None:
    lines = [": keep-alive", "event: progress", 'data: {"done": 1,', 'data: "total": 2}', "",
             "", "event: done", "data: not json", ""]
    assert list(_http.parse_sse(iter(lines))) == [
        ("progress", {"done": 1, "total": 2}), ("done", "not json")]
