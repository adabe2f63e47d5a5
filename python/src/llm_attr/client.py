"""Client and AsyncClient: every endpoint of the llm-attr HTTP API, and jobs (Job, AsyncJob)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Optional, Union

import httpx

from ._errors import JobError
from ._http import AsyncHTTP, SyncHTTP
from ._requests import AttributeRequest, AuditRequest, build
from .results import Attribution, Audit, Plan, Template

DEFAULT_URL = "http://127.0.0.1:8080"
FINISHED = ("done", "failed", "cancelled")
Request = Union[AttributeRequest, AuditRequest, Mapping[str, Any], None]


def _plan_body(request: Request, fields: Mapping[str, Any]) -> dict[str, Any]:
    """An AuditRequest when the request has a `sweep`, else an AttributeRequest."""
    if request is None:
        merged: dict[str, Any] = {}
    elif isinstance(request, Mapping):
        merged = dict(request)
    else:
        merged = dataclasses.asdict(request)
    merged.update(fields)
    kind = AuditRequest if merged.get("sweep") is not None else AttributeRequest
    return build(kind, None, merged)


def _generate_body(prompt: str, max_new_tokens: Optional[int]) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": prompt}
    if max_new_tokens is not None:
        body["max_new_tokens"] = max_new_tokens
    return body


def _result(raw: Mapping[str, Any]) -> Union[Attribution, Audit]:
    """A finished job's result as an Attribution or an Audit."""
    result = raw.get("result") or {}
    return Audit(result) if raw.get("kind") == "audit" else Attribution(result)


class _Progress:
    """A tqdm bar (or a given tqdm-like object) fed by progress events."""

    def __init__(self, progress: Any, desc: str) -> None:
        self.owned = progress is True
        if self.owned:
            try:
                from tqdm.auto import tqdm
            except ImportError as err:  # pragma: no cover - depends on the environment
                hint = "progress bars need tqdm: pip install 'llm-attr[progress]'"
                raise ImportError(hint) from err
            self.bar: Any = tqdm(total=0, desc=desc, unit="seq")
        else:
            self.bar = None if progress is None or progress is False else progress

    def update(self, done: int, total: int) -> None:
        if self.bar is None:
            return
        if total and self.bar.total != total:
            self.bar.total = total
        self.bar.update(done - self.bar.n)

    def finish(self, raw: Mapping[str, Any]) -> None:
        if self.bar is None:
            return
        p = raw.get("progress") or {}
        total = int(p.get("total", 0))
        self.update(total if raw.get("state") == "done" else int(p.get("done", 0)), total)
        if self.owned:
            self.bar.close()


class _JobBase:
    """What Job and AsyncJob share: the job's fields and its paths."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw: dict[str, Any] = dict(raw)

    id = property(lambda self: str(self.raw["id"]), doc="The job id.")
    kind = property(lambda self: str(self.raw.get("kind", "attribution")), doc="attribution|audit")
    state = property(lambda self: str(self.raw["state"]),
                     doc="queued, running, done, failed or cancelled (as last seen).")

    @property
    def progress(self) -> tuple[int, int]:
        """(done, total) sequences, as last seen."""
        p = self.raw.get("progress") or {}
        return int(p.get("done", 0)), int(p.get("total", 0))

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def path(self) -> str:
        return f"/v1/{'audits' if self.kind == 'audit' else 'jobs'}/{self.id}"

    def _on_event(self, event: str, data: Any, bar: _Progress) -> bool:
        """Take one server-sent event; True at the job's end."""
        if event == "progress" and isinstance(data, dict):
            self.raw["progress"] = data
            bar.update(int(data["done"]), int(data["total"]))
        elif event in FINISHED and isinstance(data, dict):
            self.raw = data
            return True
        return False

    def _outcome(self) -> Union[Attribution, Audit]:
        if self.state != "done":
            raise JobError(self.id, self.state, self.raw.get("error"))
        return _result(self.raw)

    def __repr__(self) -> str:
        done, total = self.progress
        return f"Job({self.id}, {self.kind}, {self.state}, {done}/{total})"


class Job(_JobBase):
    """A background attribution or audit: wait(), result(), cancel(), refresh()."""

    def __init__(self, http: SyncHTTP, raw: Mapping[str, Any]) -> None:
        super().__init__(raw)
        self._http = http

    def refresh(self) -> Job:
        """Fetch the job's state, progress and result."""
        self.raw = self._http.call("GET", self.path)
        return self

    def wait(self, progress: Any = False) -> Union[Attribution, Audit]:
        """Wait for the end (over the job's event stream) and return the result.

        `progress=True` draws a tqdm bar of the sequences scored; a tqdm-like object is
        updated instead. A failed or cancelled job raises JobError.
        """
        bar = _Progress(progress, f"{self.kind} {self.id[:8]}")
        try:
            for event, data in self._http.events(self.path + "/events"):
                if self._on_event(event, data, bar):
                    break
            if not self.finished:
                self.refresh()
        finally:
            bar.finish(self.raw)
        return self._outcome()

    def result(self) -> Union[Attribution, Audit]:
        """The result, waiting for it if needed."""
        return self._outcome() if self.refresh().finished else self.wait()

    def cancel(self) -> Job:
        """Cancel the job on the server (its queued work is dropped); the job as it ends."""
        self.raw = self._http.call("DELETE", self.path)
        return self


class AsyncJob(_JobBase):
    """Job for AsyncClient: the same methods, awaited."""

    def __init__(self, http: AsyncHTTP, raw: Mapping[str, Any]) -> None:
        super().__init__(raw)
        self._http = http

    async def refresh(self) -> AsyncJob:
        self.raw = await self._http.call("GET", self.path)
        return self

    async def wait(self, progress: Any = False) -> Union[Attribution, Audit]:
        """As Job.wait."""
        bar = _Progress(progress, f"{self.kind} {self.id[:8]}")
        try:
            async for event, data in self._http.events(self.path + "/events"):
                if self._on_event(event, data, bar):
                    break
            if not self.finished:
                await self.refresh()
        finally:
            bar.finish(self.raw)
        return self._outcome()

    async def result(self) -> Union[Attribution, Audit]:
        await self.refresh()
        return self._outcome() if self.finished else await self.wait()

    async def cancel(self) -> AsyncJob:
        self.raw = await self._http.call("DELETE", self.path)
        return self


class Tokenizer:
    """The server model's tokenizer (`client.tokenizer`), for LLMAttribution and TextTokenInput."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no special tokens)."""
        return list(self.client.tokenize(text)["ids"])

    def tokenize(self, text: str) -> list[str]:
        """Tokens of `text` as a person reads them."""
        return list(self.client.tokenize(text)["tokens"])

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text)}


class Model:
    """The server's model (`client.model`): what the Captum-shaped layer takes as its model."""

    def __init__(self, client: Client) -> None:
        self.client = client

    @property
    def model(self) -> Model:
        """Itself, so that `model.model.embed_tokens` (Captum's layer argument) works."""
        return self

    @property
    def embed_tokens(self) -> str:
        """The input embeddings: the one layer the gradient methods attribute to."""
        return "embed_tokens"

    @property
    def info(self) -> dict[str, Any]:
        """`GET /v1/model`: spec, architecture, parameters, vocab size, context length, dtype."""
        return self.client.model_info()


class Client:
    """A client of one llm-attr server.

    `url` is the server, `api_key` its key (if it has one), `timeout` seconds per call, and
    `max_retries` how often a 429 or 503 answer is retried (after its Retry-After).
    """

    def __init__(self, url: str = DEFAULT_URL, api_key: Optional[str] = None,
                 timeout: float = 300.0, max_retries: int = 8,
                 transport: Optional[httpx.BaseTransport] = None) -> None:
        self._http = SyncHTTP(url, api_key, timeout, max_retries, transport)
        self.url = self._http.url

    def attribute(self, request: Union[AttributeRequest, Mapping[str, Any], None] = None,
                  /, **fields: Any) -> Attribution:
        """`POST /v1/attributions`: run an attribution and return it.

        Give the fields as keywords (`template=`, `values=`, `baselines=`, `target=`,
        `method=`, ...; see AttributeRequest), or a request object or dict.
        """
        return Attribution(self._http.call(
            "POST", "/v1/attributions", build(AttributeRequest, request, fields)))

    def submit(self, request: Union[AttributeRequest, Mapping[str, Any], None] = None,
               /, **fields: Any) -> Job:
        """`POST /v1/jobs`: start an attribution in the background; a Job."""
        return Job(self._http, self._http.call(
            "POST", "/v1/jobs", build(AttributeRequest, request, fields)))

    def submit_audit(self, request: Union[AuditRequest, Mapping[str, Any], None] = None,
                     /, **fields: Any) -> Job:
        """`POST /v1/audits`: start an audit; a Job whose result is an Audit."""
        return Job(self._http, self._http.call(
            "POST", "/v1/audits", build(AuditRequest, request, fields)))

    def audit(self, request: Union[AuditRequest, Mapping[str, Any], None] = None,
              /, *, progress: Any = False, **fields: Any) -> Audit:
        """Run an audit (a job) and wait for its result."""
        result = self.submit_audit(request, **fields).wait(progress=progress)
        assert isinstance(result, Audit)
        return result

    def job(self, job_id: str) -> Job:
        """`GET /v1/jobs/{id}`: a job by its id."""
        return Job(self._http, self._http.call("GET", f"/v1/jobs/{job_id}"))

    def plan(self, request: Request = None, /, **fields: Any) -> Plan:
        """`POST /v1/plan`: what an attribution or audit (with `sweep`) would cost."""
        return Plan.from_json(self._http.call("POST", "/v1/plan", _plan_body(request, fields)))

    def templates(self) -> list[Template]:
        """`GET /v1/templates`: the seed notebook's templates t1..t4 and their chat versions."""
        return [Template.from_json(t) for t in self._http.call("GET", "/v1/templates")["templates"]]

    def health(self) -> dict[str, Any]:
        """`GET /health`."""
        return dict(self._http.call("GET", "/health"))

    def ready(self) -> bool:
        """`GET /ready` (not retried): whether the model is loaded and the server serves."""
        try:
            return self._http.http.get("/ready").status_code == 200
        except httpx.TransportError:
            return False

    def model_info(self) -> dict[str, Any]:
        """`GET /v1/model`."""
        return dict(self._http.call("GET", "/v1/model"))

    def tokenize(self, text: str) -> dict[str, Any]:
        """`POST /v1/tokenize`: ids, tokens and byte offsets."""
        return dict(self._http.call("POST", "/v1/tokenize", {"text": text}))

    def generate(self, prompt: str, max_new_tokens: Optional[int] = None) -> dict[str, Any]:
        """`POST /v1/generate`: the greedy continuation."""
        body = _generate_body(prompt, max_new_tokens)
        return dict(self._http.call("POST", "/v1/generate", body))

    @property
    def model(self) -> Model:
        """The server's model, for `llm_attr.captum` (`ShapleyValueSampling(client.model)`)."""
        return Model(self)

    @property
    def tokenizer(self) -> Tokenizer:
        """The server's tokenizer, for `LLMAttribution(attr, client.tokenizer)`."""
        return Tokenizer(self)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"


class AsyncClient:
    """Client for asyncio: the same methods, awaited; jobs are AsyncJobs."""

    def __init__(self, url: str = DEFAULT_URL, api_key: Optional[str] = None,
                 timeout: float = 300.0, max_retries: int = 8,
                 transport: Optional[httpx.AsyncBaseTransport] = None) -> None:
        self._http = AsyncHTTP(url, api_key, timeout, max_retries, transport)
        self.url = self._http.url

    async def attribute(self, request: Union[AttributeRequest, Mapping[str, Any], None] = None,
                        /, **fields: Any) -> Attribution:
        return Attribution(await self._http.call(
            "POST", "/v1/attributions", build(AttributeRequest, request, fields)))

    async def submit(self, request: Union[AttributeRequest, Mapping[str, Any], None] = None,
                     /, **fields: Any) -> AsyncJob:
        return AsyncJob(self._http, await self._http.call(
            "POST", "/v1/jobs", build(AttributeRequest, request, fields)))

    async def submit_audit(self, request: Union[AuditRequest, Mapping[str, Any], None] = None,
                           /, **fields: Any) -> AsyncJob:
        return AsyncJob(self._http, await self._http.call(
            "POST", "/v1/audits", build(AuditRequest, request, fields)))

    async def audit(self, request: Union[AuditRequest, Mapping[str, Any], None] = None,
                    /, *, progress: Any = False, **fields: Any) -> Audit:
        result = await (await self.submit_audit(request, **fields)).wait(progress=progress)
        assert isinstance(result, Audit)
        return result

    async def job(self, job_id: str) -> AsyncJob:
        return AsyncJob(self._http, await self._http.call("GET", f"/v1/jobs/{job_id}"))

    async def plan(self, request: Request = None, /, **fields: Any) -> Plan:
        return Plan.from_json(
            await self._http.call("POST", "/v1/plan", _plan_body(request, fields)))

    async def templates(self) -> list[Template]:
        raw = await self._http.call("GET", "/v1/templates")
        return [Template.from_json(t) for t in raw["templates"]]

    async def health(self) -> dict[str, Any]:
        return dict(await self._http.call("GET", "/health"))

    async def ready(self) -> bool:
        try:
            return (await self._http.http.get("/ready")).status_code == 200
        except httpx.TransportError:
            return False

    async def model_info(self) -> dict[str, Any]:
        return dict(await self._http.call("GET", "/v1/model"))

    async def tokenize(self, text: str) -> dict[str, Any]:
        return dict(await self._http.call("POST", "/v1/tokenize", {"text": text}))

    async def generate(self, prompt: str, max_new_tokens: Optional[int] = None) -> dict[str, Any]:
        body = _generate_body(prompt, max_new_tokens)
        return dict(await self._http.call("POST", "/v1/generate", body))

    async def close(self) -> None:
        await self._http.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
