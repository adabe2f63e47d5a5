"""HTTP plumbing shared by Client and AsyncClient: errors from answers, retries, SSE lines."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, Optional

import httpx

from ._errors import APIError, ConnectError, RequestError, ServerError

RETRY_STATUSES = (429, 503)
MAX_RETRY_WAIT = 60.0


def headers(api_key: Optional[str]) -> dict[str, str]:
    """The headers every call sends."""
    h = {"Accept": "application/json", "User-Agent": "llm-attr-python"}
    if api_key:
        h["Authorization"] = f"Bearer {api_key}"
    return h


def client_args(url: str, api_key: Optional[str], timeout: float) -> dict[str, Any]:
    """The httpx client settings: base URL, headers (with the key), timeout."""
    return {"base_url": url, "headers": headers(api_key), "timeout": timeout}


def retry_after(response: httpx.Response) -> Optional[float]:
    """The Retry-After header in seconds (a number or an HTTP date), or None."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when else None


def retry_delay(response: httpx.Response, attempt: int, max_retries: int) -> Optional[float]:
    """Seconds to wait before retrying this answer, or None when it is not retried."""
    if response.status_code not in RETRY_STATUSES or attempt >= max_retries:
        return None
    after = retry_after(response)
    backoff = 0.5 * 2**attempt
    return min(MAX_RETRY_WAIT, after if after is not None else backoff)


def error_from(response: httpx.Response) -> APIError:
    """The APIError for an error answer (the server's `{"error": {code, message, field}}`)."""
    try:
        body = response.json()
        detail = body.get("error", {}) if isinstance(body, dict) else {}
    except (ValueError, json.JSONDecodeError):
        detail = {}
    if not isinstance(detail, dict):
        detail = {}
    status = response.status_code
    cls = RequestError if status < 500 else ServerError
    return cls(
        status=status,
        code=str(detail.get("code", "http_error")),
        message=str(detail.get("message", response.text[:500] or response.reason_phrase)),
        field=detail.get("field"),
        request_id=response.headers.get("X-Request-Id"),
        retry_after=retry_after(response),
    )


def body(response: httpx.Response) -> Any:
    """The JSON body of a successful answer, or the APIError."""
    if response.status_code >= 400:
        raise error_from(response)
    return response.json()


def connect_error(url: str, err: Exception) -> ConnectError:
    """A ConnectError that names the URL the client tried."""
    return ConnectError(
        f"cannot reach llm-attr at {url}: {err}. Is the server running "
        "(`llm-attr serve`, or `with llm_attr.serve(...) as client:`)?"
    )


class SyncHTTP:
    """An httpx.Client with the retry policy."""

    def __init__(self, url: str, api_key: Optional[str], timeout: float, max_retries: int,
                 transport: Optional[httpx.BaseTransport] = None) -> None:
        self.url, self.max_retries = url.rstrip("/"), max_retries
        self.http = httpx.Client(transport=transport, **client_args(self.url, api_key, timeout))

    def call(self, method: str, path: str, payload: Any = None) -> Any:
        """One API call with retries on 429/503; the JSON body, or an error."""
        attempt = 0
        while True:
            try:
                response = self.http.request(method, path, json=payload)
            except httpx.TransportError as err:
                raise connect_error(self.url + path, err) from err
            delay = retry_delay(response, attempt, self.max_retries)
            if delay is None:
                return body(response)
            attempt += 1
            time.sleep(delay)

    def events(self, path: str) -> Iterator[tuple[str, Any]]:
        """The (event, data) pairs of a server-sent event stream."""
        try:
            with self.http.stream("GET", path, timeout=httpx.Timeout(None)) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_from(response)
                yield from parse_sse(response.iter_lines())
        except httpx.TransportError as err:
            raise connect_error(self.url + path, err) from err

    def close(self) -> None:
        self.http.close()


class AsyncHTTP:
    """An httpx.AsyncClient with the retry policy."""

    def __init__(self, url: str, api_key: Optional[str], timeout: float, max_retries: int,
                 transport: Optional[httpx.AsyncBaseTransport] = None) -> None:
        self.url, self.max_retries = url.rstrip("/"), max_retries
        settings = client_args(self.url, api_key, timeout)
        self.http = httpx.AsyncClient(transport=transport, **settings)

    async def call(self, method: str, path: str, payload: Any = None) -> Any:
        """One API call with retries on 429/503; the JSON body, or an error."""
        attempt = 0
        while True:
            try:
                response = await self.http.request(method, path, json=payload)
            except httpx.TransportError as err:
                raise connect_error(self.url + path, err) from err
            delay = retry_delay(response, attempt, self.max_retries)
            if delay is None:
                return body(response)
            attempt += 1
            await asyncio.sleep(delay)

    async def events(self, path: str) -> AsyncIterator[tuple[str, Any]]:
        """The (event, data) pairs of a server-sent event stream."""
        try:
            async with self.http.stream("GET", path, timeout=httpx.Timeout(None)) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise error_from(response)
                parser = SSEParser()
                async for line in response.aiter_lines():
                    event = parser.feed(line)
                    if event is not None:
                        yield event
        except httpx.TransportError as err:
            raise connect_error(self.url + path, err) from err

    async def close(self) -> None:
        await self.http.aclose()


class SSEParser:
    """Turns server-sent event lines into (event, JSON data) pairs."""

    def __init__(self) -> None:
        self.event = "message"
        self.data: list[str] = []

    def feed(self, line: str) -> Optional[tuple[str, Any]]:
        """Feed one line; an event when a blank line ends one."""
        if line == "":
            if not self.data:
                self.event = "message"
                return None
            raw = "\n".join(self.data)
            event, self.event, self.data = self.event, "message", []
            try:
                return event, json.loads(raw)
            except ValueError:
                return event, raw
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        return None


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """The events of a stream of SSE lines."""
    parser = SSEParser()
    for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event
