#!/usr/bin/env python3
"""Builds the reference fixtures under tests/fixtures/ (see README.md beside this file).

    python make_fixtures.py --steps families            # tiny random models, one per family
    python make_fixtures.py --steps gguf                # GGUF twins of qwen2 and mistral
    python make_fixtures.py --steps chat --smollm2-gguf models/SmolLM2-135M-Instruct.Q4_1.gguf
    python make_fixtures.py --steps grad --smollm2-gguf models/SmolLM2-135M-Instruct.Q4_1.gguf
    python make_fixtures.py --steps grad-shap           # what Captum's LayerGradientShap computes
    python make_fixtures.py --llama-1b-shape /tmp/llama-1b-random   # benchmark model, not a fixture
"""
import argparse
import os
import random
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
REPO = os.path.dirname(os.path.dirname(HERE))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures"))
    ap.add_argument("--steps", default="", help="comma list of: families, sharded, family-chat, gguf, chat, grad, grad-shap")
    ap.add_argument("--families", default="", help="comma list of families to build (default all)")
    ap.add_argument("--grad-models", default="tiny-gpt2,llama,qwen2,gemma2,mistral,phi3,qwen3,llama-linear,smollm2",
                    help="fixture dirs the grad steps write captum_grad(_shap).json into")
    ap.add_argument("--smollm2-gguf", default=os.path.join(REPO, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--llama-1b-shape", metavar="DIR",
                    help="write a random model at Llama-3.2-1B's shape into DIR (outside the repo)")
    ap.add_argument("--time-captum-grad", action="store_true",
                    help="print Captum's seconds for IG (50 steps) and gradient x input on SmolLM2, "
                         "20-token prompt, 8-token target (issue 12's speed baseline)")
    a = ap.parse_args()
    torch.manual_seed(0)
    random.seed(0)
    steps = [s for s in a.steps.split(",") if s]
    if not steps and not a.llama_1b_shape and not a.time_captum_grad:
        ap.error("nothing to do: give --steps and/or --llama-1b-shape")
    for step in steps:
        if step == "families":
            import tiny_families
            tiny_families.run(a.out, [f for f in a.families.split(",") if f])
        elif step == "sharded":
            import tiny_families
            tiny_families.write_sharded(a.out)
        elif step == "family-chat":
            import tiny_families
            tiny_families.run_chat(a.out, [f for f in a.families.split(",") if f])
        elif step == "gguf":
            import gguf_twins
            gguf_twins.run(a.out)
        elif step == "chat":
            import smollm2_chat
            smollm2_chat.run(a.out, a.smollm2_gguf)
        elif step == "grad":
            import gradients
            gradients.run(a.out, a.smollm2_gguf, a.grad_models.split(","))
        elif step == "grad-shap":
            import gradients
            gradients.run_shap(a.out, a.smollm2_gguf, a.grad_models.split(","))
        else:
            ap.error(f"unknown step {step!r}")
    if a.time_captum_grad:
        import gradients
        gradients.time_captum(a.smollm2_gguf)
    if a.llama_1b_shape:
        import big_model
        big_model.write(a.llama_1b_shape)


if __name__ == "__main__":
    main()
