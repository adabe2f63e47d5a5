"""Captum's LLM attribution API, answered by an llm-attr server.

A notebook written for `captum.attr` runs with its imports and its model lines changed:

    from llm_attr.captum import ShapleyValueSampling, LLMAttribution, TextTemplateInput
    model, tokenizer = client.model, client.tokenizer       # instead of transformers
    llm_attr = LLMAttribution(ShapleyValueSampling(model), tokenizer)
    result = llm_attr.attribute(TextTemplateInput(template, values, baselines), target=...)
    result.plot_token_attr(show=True)

The "model" is a `llm_attr.Client` or `client.model`. Arrays are numpy arrays, not tensors.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

from .client import Client, Model, Tokenizer
from .results import Attribution

__all__ = [
    "FeatureAblation",
    "KernelShap",
    "LLMAttribution",
    "LLMAttributionResult",
    "LLMGradientAttribution",
    "LayerGradientShap",
    "LayerGradientXActivation",
    "LayerIntegratedGradients",
    "Lime",
    "ProductBaselines",
    "ShapleyValueSampling",
    "ShapleyValues",
    "TextTemplateInput",
    "TextTokenInput",
]

# Captum keywords that tune how Captum batches or reports on the client; the server decides.
_IGNORED = ("perturbations_per_eval", "show_progress", "internal_batch_size",
            "use_cached_outputs", "return_convergence_delta")
# Keywords passed through to the request.
_PASSED = ("n_samples", "seed", "baseline_sampling", "n_steps", "contrast_target")


def _unsupported(what: str) -> NotImplementedError:
    return NotImplementedError(
        f"llm_attr.captum cannot honour {what}: the llm-attr server runs the model and the "
        "method itself; use captum.attr for that"
    )


def _client(model: Any) -> Client:
    """The Client behind a Captum "model" argument."""
    if isinstance(model, Client):
        return model
    if isinstance(model, Model):
        return model.client
    raise _unsupported(
        f"a custom forward_func ({type(model).__name__}); pass a llm_attr.Client or client.model"
    )


class _Method:
    """A Captum attribution method: its server name and the model's client."""

    method = ""

    def __init__(self, forward_func: Any) -> None:
        self.client = _client(forward_func)
        self.forward_func = forward_func


class FeatureAblation(_Method):
    """Captum's FeatureAblation: f(all) - f(all but the feature at its baseline)."""

    method = "feature_ablation"


class ShapleyValues(_Method):
    """Captum's ShapleyValues: exact, over every coalition."""

    method = "shapley_values"


class ShapleyValueSampling(_Method):
    """Captum's ShapleyValueSampling: `n_samples` random permutations (default 25)."""

    method = "shapley_value_sampling"


class Lime(_Method):
    """Captum's Lime with its defaults (the server's LIME); custom parts are not supported."""

    method = "lime"

    def __init__(self, forward_func: Any, interpretable_model: Any = None,
                 similarity_func: Any = None, perturb_func: Any = None) -> None:
        for name, value in (("interpretable_model", interpretable_model),
                            ("similarity_func", similarity_func), ("perturb_func", perturb_func)):
            if value is not None:
                raise _unsupported(f"a custom {name}")
        super().__init__(forward_func)


class KernelShap(_Method):
    """Captum's KernelShap: `n_samples` coalitions (default 25) fitted with the Shapley kernel."""

    method = "kernel_shap"


class _LayerMethod(_Method):
    """A Captum layer method; llm-attr attributes to the input embeddings only."""

    def __init__(self, forward_func: Any, layer: Any = None, device_ids: Any = None,
                 multiply_by_inputs: bool = True) -> None:
        super().__init__(forward_func)
        if layer is not None and layer != "embed_tokens":
            raise _unsupported(
                f"layer {layer!r}: only the input embeddings (client.model.embed_tokens or None)"
            )
        if device_ids is not None:
            raise _unsupported("device_ids (the server picks its device)")
        if not multiply_by_inputs:
            raise _unsupported("multiply_by_inputs=False")
        self.layer = layer


class LayerIntegratedGradients(_LayerMethod):
    """Captum's LayerIntegratedGradients on the input embeddings (`n_steps`, `method`)."""

    method = "integrated_gradients"


class LayerGradientXActivation(_LayerMethod):
    """Captum's LayerGradientXActivation on the input embeddings."""

    method = "gradient_x_input"


class LayerGradientShap(_LayerMethod):
    """Gradient SHAP on the input embeddings (llm-attr's: points on the path, see README)."""

    method = "gradient_shap"


class ProductBaselines:
    """Captum's ProductBaselines: per placeholder a list of baselines; their product is used.

    llm-attr averages over the whole product when it is affordable (`baseline_sampling:
    exact`) instead of drawing one combination per evaluation as Captum does; pass
    `baseline_sampling="sample"` to `attribute` for Captum's draw.
    """

    def __init__(self, baseline_values: Mapping[Any, Sequence[Any]]) -> None:
        for key in baseline_values:
            if not isinstance(key, str):
                raise _unsupported(f"a joint baseline key {key!r} (one placeholder per key)")
        self.baseline_values = {k: list(v) for k, v in baseline_values.items()}

    def as_request(self) -> dict[str, list[str]]:
        """The request's `baselines`: every value as the template would format it."""
        return {k: [_as_text(k, v) for v in vs] for k, vs in self.baseline_values.items()}


def _as_text(name: str, value: Any) -> str:
    """A baseline as str.format puts it into the prompt (Captum formats it the same way)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        warnings.warn(
            f"baseline of {name!r} is a {type(value).__name__}: Captum formats it into the prompt "
            f"as its Python repr ({str(value)[:40]}...), and so does llm_attr.captum. To compare "
            "against each of its items, give the items themselves.", stacklevel=4)
    return str(value)


class TextTemplateInput:
    """Captum's TextTemplateInput: a template, its values, baselines and an optional mask.

    `values` is a dict (named placeholders) or a list (`{}` placeholders, named x0, x1, ...).
    `baselines` a dict or list of strings or lists, or ProductBaselines; `mask` a list (or
    dict) of group ids per value: values with the same id are one feature.
    """

    def __init__(self, template: Any, values: Union[Mapping[str, Any], Sequence[Any]],
                 baselines: Any = None, mask: Any = None) -> None:
        if not isinstance(template, str):
            raise _unsupported("a callable template (give a format string)")
        if isinstance(values, Mapping):
            self.names = [str(k) for k in values]
            self.template = template
        else:
            self.names = [f"x{i}" for i in range(len(values))]
            self.template = _name_positional(template, self.names)
        vals = list(values.values()) if isinstance(values, Mapping) else list(values)
        self.values = {n: str(v) for n, v in zip(self.names, vals)}
        self.baselines = baselines
        self.mask = mask

    def request(self) -> dict[str, Any]:
        """The template part of an attribute request."""
        body: dict[str, Any] = {"template": self.template, "values": self.values}
        baselines = self._baselines()
        if baselines is not None:
            body["baselines"] = baselines
        if self.mask is not None:
            groups = self.mask.tolist() if hasattr(self.mask, "tolist") else self.mask
            pairs = groups.items() if isinstance(groups, Mapping) else zip(self.names, groups)
            body["mask"] = {str(k): str(g) for k, g in pairs}
        return body

    def _baselines(self) -> Optional[dict[str, Any]]:
        b = self.baselines
        if b is None:
            return None
        if isinstance(b, ProductBaselines):
            return dict(b.as_request())
        if isinstance(b, Mapping):
            return {str(k): _baseline_value(str(k), v) for k, v in b.items()}
        if isinstance(b, (list, tuple)):
            return {n: _baseline_value(n, v) for n, v in zip(self.names, b)}
        raise _unsupported(f"baselines of type {type(b).__name__} (a callable?)")


def _baseline_value(name: str, value: Any) -> Union[str, list[str]]:
    return value if isinstance(value, str) else [_as_text(name, v) for v in value]


def _name_positional(template: str, names: Sequence[str]) -> str:
    """`{}` placeholders named x0, x1, ... (literal `{{`/`}}` kept)."""
    parts = template.split("{}")
    if len(parts) - 1 != len(names):
        raise ValueError(f"the template has {len(parts) - 1} '{{}}' placeholders but "
                         f"{len(names)} values")
    out = parts[0]
    for name, part in zip(names, parts[1:]):
        out += "{" + name + "}" + part
    return out


class TextTokenInput:
    """Captum's TextTokenInput: every token of `text` is a feature.

    `baselines` is the token (id or string) a perturbed token becomes (Captum's default, 0);
    `skip_tokens` tokens (ids or strings) that are not features.
    """

    def __init__(self, text: str, tokenizer: Any = None, baselines: Union[int, str] = 0,
                 skip_tokens: Optional[Sequence[Union[int, str]]] = None) -> None:
        _check_tokenizer(tokenizer)
        self.text = text
        self.baselines = baselines
        self.skip_tokens = list(skip_tokens) if skip_tokens is not None else None

    def request(self) -> dict[str, Any]:
        """The token part of an attribute request."""
        body: dict[str, Any] = {"text": self.text, "baseline_token": self.baselines}
        if self.skip_tokens is not None:
            body["skip_tokens"] = self.skip_tokens
        return body


def _check_tokenizer(tokenizer: Any) -> None:
    if tokenizer is not None and not isinstance(tokenizer, Tokenizer):
        raise _unsupported(
            f"a client-side tokenizer ({type(tokenizer).__name__}): the server tokenizes with "
            "its model's own; pass client.tokenizer or None"
        )


class LLMAttributionResult(Attribution):
    """Captum's LLMAttributionResult: seq_attr, token_attr, input_tokens, output_tokens,
    seq_attr_dict, plot_token_attr and plot_seq_attr (numpy arrays, not tensors)."""


class _LLMBase:
    methods: tuple[type[_Method], ...] = ()

    def __init__(self, attr_method: _Method, tokenizer: Any = None,
                 attr_target: str = "log_prob") -> None:
        if not isinstance(attr_method, self.methods):
            names = ", ".join(m.__name__ for m in self.methods)
            raise _unsupported(f"{type(attr_method).__name__} here (use one of {names})")
        _check_tokenizer(tokenizer)
        if attr_target not in ("log_prob", "prob"):
            raise ValueError(f"attr_target must be 'log_prob' or 'prob', got {attr_target!r}")
        self.attr_method = attr_method
        self.tokenizer = tokenizer
        self.attr_target = attr_target

    def _request(self, inp: Any, target: Optional[str], gen_args: Optional[Mapping[str, Any]],
                 skip_tokens: Any, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(inp, (TextTemplateInput, TextTokenInput)):
            raise _unsupported(f"input of type {type(inp).__name__}")
        if skip_tokens is not None:
            raise _unsupported("skip_tokens for the target (the target is encoded as given)")
        body = inp.request()
        body.update(method=self.attr_method.method, attr_target=self.attr_target)
        if target is not None:
            body["target"] = target
        body.update(_gen_args(gen_args))
        body.update(_method_kwargs(kwargs))
        return body

    def _run(self, body: dict[str, Any]) -> LLMAttributionResult:
        raw = self.attr_method.client.attribute(body).raw
        return LLMAttributionResult(raw)


def _gen_args(gen_args: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    if not gen_args:
        return {}
    extra = set(gen_args) - {"max_new_tokens", "do_sample"}
    if extra or gen_args.get("do_sample"):
        raise _unsupported(f"gen_args {sorted(extra) or ['do_sample']} (generation is greedy)")
    return {"max_new_tokens": gen_args["max_new_tokens"]} if "max_new_tokens" in gen_args else {}


def _method_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Captum's method keywords as request fields; unknown ones are refused by name."""
    body: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in _PASSED:
            body[key] = value
        elif key == "method":  # IntegratedGradients' quadrature rule
            body["integration"] = value
        elif key not in _IGNORED:
            raise _unsupported(f"the keyword {key}")
    return body


class LLMAttribution(_LLMBase):
    """Captum's LLMAttribution over a perturbation method, run by the server."""

    methods = (FeatureAblation, ShapleyValues, ShapleyValueSampling, Lime, KernelShap)

    def attribute(self, inp: Union[TextTemplateInput, TextTokenInput],
                  target: Optional[str] = None, skip_tokens: Any = None, num_trials: int = 1,
                  gen_args: Optional[Mapping[str, Any]] = None,
                  **kwargs: Any) -> LLMAttributionResult:
        """Attribute `target` (absent: the greedy continuation) to the input's features.

        Takes Captum's keywords: `n_samples`, `perturbations_per_eval` (ignored: the server
        batches), `num_trials`, and `seed`, `baseline_sampling`, `contrast_target`.
        """
        body = self._request(inp, target, gen_args, skip_tokens, kwargs)
        if num_trials != 1:
            body["num_trials"] = num_trials
        return self._run(body)


class LLMGradientAttribution(_LLMBase):
    """Captum's LLMGradientAttribution over a layer method, on the input embeddings."""

    methods = (LayerIntegratedGradients, LayerGradientXActivation, LayerGradientShap)

    def attribute(self, inp: Union[TextTokenInput, TextTemplateInput],
                  target: Optional[str] = None, skip_tokens: Any = None,
                  gen_args: Optional[Mapping[str, Any]] = None,
                  **kwargs: Any) -> LLMAttributionResult:
        """Attribute `target` to the input's tokens (or placeholders), as Captum does.

        Takes Captum's keywords: `n_steps`, `method` (the integration rule), and `seed`,
        `n_samples` (gradient SHAP), `contrast_target`.
        """
        return self._run(self._request(inp, target, gen_args, skip_tokens, kwargs))
