"""Errors raised by the llm-attr client."""

from __future__ import annotations

from typing import Any, Optional


class LLMAttrError(Exception):
    """Base class of every error this package raises."""


class APIError(LLMAttrError):
    """The server answered with an error status.

    `status` is the HTTP status, `code` the server's error code (`invalid_request`, ...),
    `field` the offending input (`values.name`, `n_samples`, ...) or None, and `message` the
    server's message.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: Optional[str] = None,
        request_id: Optional[str] = None,
        retry_after: Optional[float] = None,
    ) -> None:
        where = f" (field {field})" if field else ""
        super().__init__(f"{status} {code}{where}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.request_id = request_id
        self.retry_after = retry_after


class RequestError(APIError):
    """A 4xx answer: the request was refused (bad input, a limit, auth, unknown job)."""


class ServerError(APIError):
    """A 5xx answer (after the retries of 429/503 ran out)."""


class JobError(LLMAttrError):
    """A job ended `failed` or `cancelled`; `code`, `field` and `message` are the server's."""

    def __init__(self, job_id: str, state: str, error: Optional[dict[str, Any]]) -> None:
        err = error or {}
        self.job_id = job_id
        self.state = state
        self.code: str = str(err.get("code", state))
        self.field: Optional[str] = err.get("field")
        self.message: str = str(err.get("message", f"the job was {state}"))
        super().__init__(f"job {job_id} {state}: {self.code}: {self.message}")


class ConnectError(LLMAttrError, ConnectionError):
    """The server could not be reached; the message names the URL."""
