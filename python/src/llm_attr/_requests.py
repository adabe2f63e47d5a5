"""Request bodies: every field of the server's AttributeRequest and AuditRequest."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

Baseline = Union[str, Sequence[str]]
TokenRef = Union[int, str]


@dataclass
class MethodOptions:
    """The method and its options, shared by attributions and audits."""

    method: Optional[str] = None
    attr_target: Optional[str] = None
    n_samples: Optional[int] = None
    num_trials: Optional[int] = None
    seed: Optional[int] = None
    baseline_sampling: Optional[str] = None
    n_steps: Optional[int] = None
    integration: Optional[str] = None


@dataclass
class AttributeRequest(MethodOptions):
    """One attribution (`POST /v1/attributions`, `/v1/jobs`); None fields are left out.

    Input is a template (`template`, `values`, `baselines`, `mask`), chat `messages` (with
    `values`, ...) or token input (`text`, `skip_tokens`, `baseline_token`). See the README's
    "A request" for each field.
    """

    template: Optional[str] = None
    values: Optional[Mapping[str, str]] = None
    baselines: Optional[Mapping[str, Baseline]] = None
    mask: Optional[Mapping[str, Any]] = None
    messages: Optional[Sequence[Mapping[str, str]]] = None
    add_generation_prompt: Optional[bool] = None
    chat_template: Optional[str] = None
    text: Optional[str] = None
    skip_tokens: Optional[Sequence[TokenRef]] = None
    baseline_token: Optional[TokenRef] = None
    target: Optional[str] = None
    contrast_target: Optional[str] = None
    max_new_tokens: Optional[int] = None


@dataclass
class AuditRequest(MethodOptions):
    """One audit (`POST /v1/audits`): a grid of `sweep` values scored for `targets`."""

    sweep: Optional[Mapping[str, Sequence[str]]] = None
    targets: Optional[Sequence[str]] = None
    template: Optional[str] = None
    values: Optional[Mapping[str, str]] = None
    baselines: Optional[Mapping[str, Baseline]] = None
    contexts: Optional[str] = None
    messages: Optional[Sequence[Mapping[str, str]]] = None
    add_generation_prompt: Optional[bool] = None
    chat_template: Optional[str] = None


def to_json(obj: Any) -> Any:
    """Plain JSON values: tuples and other sequences become lists, mappings dicts."""
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, Mapping):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, Sequence):
        return [to_json(v) for v in obj]
    if hasattr(obj, "tolist"):
        return to_json(obj.tolist())
    raise TypeError(f"cannot send {type(obj).__name__} as JSON")


def build(
    kind: type[Any], request: Union[Any, Mapping[str, Any], None], fields: Mapping[str, Any]
) -> dict[str, Any]:
    """The JSON body from a request object or mapping and keyword fields (these win).

    Unknown keyword fields raise TypeError naming them, before anything is sent.
    """
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(fields) - names)
    if unknown:
        raise TypeError(f"{kind.__name__} has no field {', '.join(unknown)}")
    if request is None:
        base: dict[str, Any] = {}
    elif dataclasses.is_dataclass(request) and not isinstance(request, type):
        base = dataclasses.asdict(request)
    elif isinstance(request, Mapping):
        base = dict(request)
    else:
        raise TypeError(f"request must be a {kind.__name__} or a mapping")
    base.update(fields)
    return {k: to_json(v) for k, v in base.items() if v is not None}
