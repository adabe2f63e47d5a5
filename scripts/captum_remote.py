"""Captum's RemoteLLMAttribution against an inference server: the time it takes and the HTTP
requests it sends, for benches/remote.rs to print next to llm-attr's on the same request.

Captum (>= 0.8) sends one completion per perturbed prompt through its VLLMProvider (the
OpenAI client, `prompt_logprobs`). Every HTTP request the provider's client sends is counted
by an httpx event hook during the attribution (retries included), as are the provider's
`get_logprobs` calls (one per forward evaluation).

    PYTHONPATH=/path/to/captum-lib python3 scripts/captum_remote.py --server URL \
        --tokenizer DIR --case examples/t1.json --method shapley_value_sampling --n-samples 25

Needs captum, openai, httpx and transformers (for the tokenizer: DIR holds tokenizer.json).
The case is llm-attr's request JSON (`template`, `values`, `baselines`, `target`); a list of
baselines per placeholder becomes Captum's ProductBaselines (one combination drawn per
evaluation). Prints one JSON object: seconds, requests, forward_calls, seq_attr.
"""
import argparse
import json
import random
import sys
import time

import httpx
import torch
from captum.attr import (
    FeatureAblation,
    KernelShap,
    Lime,
    ProductBaselines,
    RemoteLLMAttribution,
    ShapleyValueSampling,
    ShapleyValues,
    TextTemplateInput,
    VLLMProvider,
)
from openai import OpenAI
from transformers import AutoTokenizer

METHODS = {
    "feature_ablation": FeatureAblation,
    "shapley_values": ShapleyValues,
    "shapley_value_sampling": ShapleyValueSampling,
    "lime": Lime,
    "kernel_shap": KernelShap,
}


class CountingProvider(VLLMProvider):
    """Captum's VLLMProvider whose OpenAI client counts the HTTP requests it sends."""

    def __init__(self, url, model):
        self.requests = 0
        self.forward_calls = 0
        hooks = {"request": [self._count]}
        http = httpx.Client(event_hooks=hooks, timeout=600)
        super().__init__(url, model)
        self.client = OpenAI(base_url=url, api_key="EMPTY", http_client=http)

    def _count(self, _request):
        self.requests += 1

    def get_logprobs(self, input_prompt, target_str, tokenizer=None):
        self.forward_calls += 1
        return super().get_logprobs(input_prompt, target_str, tokenizer)


def text_input(case):
    """Captum's TextTemplateInput of a case: lists of baselines become ProductBaselines."""
    values = case["values"]
    base = case.get("baselines", {})
    if any(isinstance(v, list) for v in base.values()):
        lists = {k: base[k] if isinstance(base.get(k), list) else [base.get(k, "")] for k in values}
        baselines = ProductBaselines(lists)
    else:
        baselines = {k: base.get(k, "") for k in values}
    return TextTemplateInput(case["template"], values=values, baselines=baselines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", required=True, help="base URL, e.g. http://127.0.0.1:18011/v1")
    ap.add_argument("--model", help="served model name (default: the first one listed)")
    ap.add_argument("--tokenizer", required=True, help="directory with the model's tokenizer")
    ap.add_argument("--case", required=True, help="llm-attr request JSON (template, values, ...)")
    ap.add_argument("--method", default=None, help="default: the case's method")
    ap.add_argument("--n-samples", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    random.seed(a.seed)
    torch.manual_seed(a.seed)
    case = json.load(open(a.case))
    method = a.method or case["method"]
    tokenizer = AutoTokenizer.from_pretrained(a.tokenizer)
    provider = CountingProvider(a.server, a.model)
    attr_method = METHODS[method](RemoteLLMAttribution.placeholder_model)
    llm = RemoteLLMAttribution(attr_method, tokenizer, provider)
    kwargs = {} if method in ("feature_ablation", "shapley_values") else {"n_samples": a.n_samples}
    provider.requests = provider.forward_calls = 0
    started = time.perf_counter()
    res = llm.attribute(text_input(case), target=case["target"], **kwargs)
    seconds = time.perf_counter() - started
    json.dump({"method": method, "seconds": seconds, "requests": provider.requests,
               "forward_calls": provider.forward_calls,
               "seq_attr": res.seq_attr.tolist()}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
