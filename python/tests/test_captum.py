"""llm_attr.captum: the same numbers as Client.attribute, Captum's figures, its refusals."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from conftest import T1

import llm_attr
from llm_attr import captum

TEXT = "Georg from Germany applied for a job as a janitor."
TARGET = " reject the application."
BASELINES = {"name": ["John", "Maria"], "country": ["Togo"], "job": ["nurse", "CEO"]}

PERTURBATION = [
    (captum.FeatureAblation, "feature_ablation", {}),
    (captum.ShapleyValues, "shapley_values", {}),
    (captum.ShapleyValueSampling, "shapley_value_sampling", {"n_samples": 7, "seed": 5}),
    (captum.Lime, "lime", {"n_samples": 30, "seed": 6}),
    (captum.KernelShap, "kernel_shap", {"n_samples": 30, "seed": 7}),
]
GRADIENT = [
    (captum.LayerIntegratedGradients, "integrated_gradients", {"n_steps": 10}),
    (captum.LayerGradientXActivation, "gradient_x_input", {}),
]


def same(a: Any, b: llm_attr.Attribution) -> None:
    np.testing.assert_array_equal(a.seq_attr, b.seq_attr)
    np.testing.assert_array_equal(a.token_attr, b.token_attr)
    assert a.input_tokens == b.input_tokens and a.output_tokens == b.output_tokens


@pytest.mark.parametrize(("cls", "method", "options"), PERTURBATION)
def test_perturbation_methods_equal_client(client: llm_attr.Client, cls: Any, method: str,
                                           options: dict[str, Any]) -> None:
    llm = captum.LLMAttribution(cls(client), client.tokenizer)
    inp = captum.TextTemplateInput(T1["template"], T1["values"],
                                   baselines=captum.ProductBaselines(BASELINES))
    result = llm.attribute(inp, target=TARGET, perturbations_per_eval=4, **options)
    expected = client.attribute(template=T1["template"], values=T1["values"],
                                baselines=BASELINES, target=TARGET, method=method, **options)
    same(result, expected)
    assert result.seq_attr_dict == dict(zip(["Georg", "Germany", "janitor"],
                                            expected.seq_attr.tolist()))


@pytest.mark.parametrize(("cls", "method", "options"), GRADIENT)
def test_gradient_methods_equal_client(client: llm_attr.Client, cls: Any, method: str,
                                       options: dict[str, Any]) -> None:
    model = client.model
    llm = captum.LLMGradientAttribution(cls(model, model.model.embed_tokens), client.tokenizer)
    inp = captum.TextTokenInput(TEXT, client.tokenizer)
    result = llm.attribute(inp, target=TARGET, **options)
    expected = client.attribute(text=TEXT, baseline_token=0, target=TARGET, method=method,
                                **options)
    same(result, expected)
    assert result.token_attr.shape == (len(result.output_tokens), len(client.tokenize(TEXT)["ids"]))


def test_plots_show_token_attr(client: llm_attr.Client) -> None:
    llm = captum.LLMAttribution(captum.ShapleyValues(client), None)
    result = llm.attribute(captum.TextTemplateInput(T1["template"], T1["values"], BASELINES),
                           target=TARGET)
    fig, ax = result.plot_token_attr(show=False)
    assert isinstance(fig, matplotlib.figure.Figure)
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), result.token_attr)
    assert [t.get_text() for t in ax.get_xticklabels()] == result.input_tokens
    assert [t.get_text() for t in ax.get_yticklabels()] == result.output_tokens
    assert ax.images[0].norm.vmin == -np.abs(result.token_attr).max()
    fig, ax = result.plot_seq_attr(show=False)
    bars = sorted(ax.patches, key=lambda p: p.get_x())
    np.testing.assert_allclose([b.get_height() for b in bars], result.seq_attr)
    assert [t.get_text() for t in ax.get_xticklabels()] == result.input_tokens
    assert result.plot_seq_attr(show=True) is None


def test_inputs_as_captum_takes_them(client: llm_attr.Client) -> None:
    llm = captum.LLMAttribution(captum.FeatureAblation(client.model), client.tokenizer)
    positional = captum.TextTemplateInput("{} from {} applied.", ["Georg", "Germany"],
                                          baselines=["John", "Togo"], mask=[0, 0])
    result = llm.attribute(positional, target=TARGET)
    expected = client.attribute(template="{x0} from {x1} applied.",
                                values={"x0": "Georg", "x1": "Germany"},
                                baselines={"x0": "John", "x1": "Togo"},
                                mask={"x0": "0", "x1": "0"}, target=TARGET,
                                method="feature_ablation")
    same(result, expected)
    assert result.input_tokens == ["Georg, Germany"]


def test_seed_notebooks_shared_baseline_lists(client: llm_attr.Client) -> None:
    # The seed notebook builds its baselines with dict.fromkeys(keys, []): every key shares
    # one list of lists, which Captum formats into the prompt as Python reprs. So do we.
    lists = [["John", "Maria"], ["Togo"]]
    shared = dict.fromkeys(["name", "country"], lists)
    inp = captum.TextTemplateInput("{name} from {country} applied.",
                                   {"name": "Georg", "country": "Germany"},
                                   baselines=captum.ProductBaselines(shared))
    llm = captum.LLMAttribution(captum.ShapleyValues(client), client.tokenizer)
    with pytest.warns(UserWarning, match="Python repr"):
        result = llm.attribute(inp, target=TARGET)
    reprs = [str(x) for x in lists]
    expected = client.attribute(template="{name} from {country} applied.",
                                values={"name": "Georg", "country": "Germany"},
                                baselines={"name": reprs, "country": reprs},
                                target=TARGET, method="shapley_values")
    same(result, expected)


def test_what_llm_attr_cannot_honour(client: llm_attr.Client) -> None:
    with pytest.raises(NotImplementedError, match="forward_func"):
        captum.FeatureAblation(lambda x: x)
    with pytest.raises(NotImplementedError, match="interpretable_model"):
        captum.Lime(client, interpretable_model=object())
    with pytest.raises(NotImplementedError, match="layer"):
        captum.LayerIntegratedGradients(client, layer="model.layers.3")
    with pytest.raises(NotImplementedError, match="tokenizer"):
        captum.LLMAttribution(captum.FeatureAblation(client), object())
    with pytest.raises(NotImplementedError, match="LayerIntegratedGradients"):
        captum.LLMAttribution(captum.LayerIntegratedGradients(client), None)
    llm = captum.LLMAttribution(captum.FeatureAblation(client), None)
    inp = captum.TextTemplateInput(T1["template"], T1["values"])
    with pytest.raises(NotImplementedError, match="feature_mask"):
        llm.attribute(inp, target=TARGET, feature_mask=[0, 1, 2])
    with pytest.raises(NotImplementedError, match="callable template"):
        captum.TextTemplateInput(lambda **kw: "x", {"a": "b"})
    generated = llm.attribute(inp, gen_args={"max_new_tokens": 2})
    assert len(generated.output_tokens) == 2
