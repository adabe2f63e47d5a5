"""Fixtures: real llm-attr servers started from the binary CI builds (no mock server)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import llm_attr

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("LLM_ATTR_BIN") or REPO / "target" / "debug" / "llm-attr")
TINY = REPO / "tests" / "fixtures" / "tiny-gpt2"
SMOL = REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

T1: dict[str, Any] = {
    "template": "{name} from {country} applied for a job as a {job}. The hiring manager decided to",
    "values": {"name": "Georg", "country": "Germany", "job": "janitor"},
    "baselines": {"name": ["John", "Maria"], "country": "Togo", "job": ["nurse", "CEO"]},
    "target": " reject the application.",
}


def pytest_configure(config: pytest.Config) -> None:
    if not BIN.is_file():
        hint = "run `cargo build` or set LLM_ATTR_BIN"
        raise pytest.UsageError(f"no llm-attr binary at {BIN}: {hint}")
    os.environ["LLM_ATTR_BIN"] = str(BIN)


@pytest.fixture(scope="session")
def client() -> Iterator[llm_attr.Client]:
    """A server on the tiny GPT-2 fixture (fast; the model does not matter here). It renders
    chat templates given in requests, which the chat cases send."""
    with llm_attr.serve(model=TINY, args=["--allow-request-templates"]) as c:
        yield c


@pytest.fixture(scope="session")
def busy() -> Iterator[llm_attr.Client]:
    """A server on SmolLM2 with one run slot: long jobs, and 503s for synchronous requests."""
    if not SMOL.exists():
        raise pytest.UsageError(f"no model at {SMOL}: run ./scripts/fetch-models.sh")
    with llm_attr.serve(model=SMOL, args=["--max-concurrent-jobs", "1"]) as c:
        yield c


def direct(client: llm_attr.Client, method: str, path: str, body: Any = None) -> Any:
    """The same call made with plain httpx, for comparison."""
    response = httpx.request(method, client.url + path, json=body, timeout=300)
    return response.status_code, response.json()
