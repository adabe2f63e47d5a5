"""Times Captum's LLMGradientAttribution (LayerIntegratedGradients with 50 Gauss-Legendre steps,
LayerGradientXActivation) on the input embeddings of a model directory, on the GPU when torch
sees one: the baseline that llm-attr's gradient methods are timed against on the same machine
and model (scripts/gpu-check.sh; on a CPU, make_fixtures.py --time-captum-grad does it with the
real SmolLM2).

    python3 scripts/captum_time.py --model /dev/shm/llama-8b --request examples/t1_grad.json --dtype bfloat16

Needs captum (pure Python: carry its wheel where nothing can be fetched). Prints one line per
method: the median of --repeats timed runs after one warm-up, each ended by a device synchronise.
"""
import argparse
import json

import torch
from captum.attr import LayerGradientXActivation, LayerIntegratedGradients, LLMGradientAttribution, TextTokenInput
from transformers import AutoModelForCausalLM, AutoTokenizer

from torch_pass import median_seconds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--request", required=True, help="a JSON request with text and target")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="bfloat16")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    request = json.load(open(args.request))
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype), device_map=device).eval()
    tok = AutoTokenizer.from_pretrained(args.model)
    layer = model.get_input_embeddings()
    n_prompt = len(tok.encode(request["text"]))
    n_target = len(tok.encode(request["target"], add_special_tokens=False))
    for name, method, kwargs in (
            ("integrated_gradients", LayerIntegratedGradients(model, layer), {"n_steps": 50}),
            ("gradient_x_input", LayerGradientXActivation(model, layer), {})):
        llm = LLMGradientAttribution(method, tok)
        attribute = lambda: llm.attribute(TextTokenInput(request["text"], tok), target=request["target"], **kwargs).token_attr
        median = median_seconds(attribute, device, args.repeats)
        print(f"captum {name}: {n_prompt} prompt + {n_target} target tokens, {args.dtype} on {device}: median {median:.4f}s")


if __name__ == "__main__":
    main()
