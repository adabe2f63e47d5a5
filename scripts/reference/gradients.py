"""Step 4: Captum 0.9 LLMGradientAttribution references (issue 12).

LayerIntegratedGradients and LayerGradientXActivation on the input embedding layer
(`model.get_input_embeddings()`), TextTokenInput with Captum's default baseline (token id 0),
skip_tokens = [BOS] where the tokenizer adds one.

Captum's semantics (captum/attr/_core/llm_attr.py, LLMGradientAttribution.attribute):
- the prompt is `tokenizer.encode(text)` (special tokens added); the target
  `tokenizer.encode(target, add_special_tokens=False)`;
- one attribution per target token k: f_k = log_softmax(logits at the last position of
  prompt + target[:k])[target[k]], and the method attributes f_k to the embedding layer's output
  for the whole sequence prompt + target[:k];
- IG's baseline is the same sequence with every attributed prompt token replaced by the baseline
  id (skipped tokens and the earlier target tokens stay as they are, so their attribution is 0);
  IG interpolates the embedding outputs between baseline and input (all n_steps in one batch);
- each row is summed over the embedding dimension, cut to the prompt, and skipped tokens
  dropped: `token_attr[k][i]`; `seq_attr[i] = sum_k token_attr[k][i]`.
The convergence delta of row k is Captum's: sum of that row's attributions minus
(f_k(input) − f_k(baseline)).
"""
import os
import time

import torch
from captum.attr import LayerGradientXActivation, LayerIntegratedGradients, LLMGradientAttribution, TextTokenInput
from captum.attr._core.llm_attr import GradientForwardFunc

from common import TEMPLATES, dump

PROMPT = TEMPLATES["t1"]["prompt"].format(**TEMPLATES["t1"]["values"])
TARGET = " " + TEMPLATES["t1"]["target"]

CASES = [
    {"method": "integrated_gradients", "n_steps": 50, "integration": "gausslegendre"},
    {"method": "integrated_gradients", "n_steps": 20, "integration": "riemann_trapezoid"},
    {"method": "gradient_x_input"},
]


def module_name(model, module):
    return next(n for n, m in model.named_modules() if m is module)


def attribute(model, tok, case, skip_tokens):
    layer = model.get_input_embeddings()
    if case["method"] == "integrated_gradients":
        method = LayerIntegratedGradients(model, layer)
        kwargs = {"n_steps": case["n_steps"], "method": case["integration"]}
    else:
        method = LayerGradientXActivation(model, layer)
        kwargs = {}
    llm = LLMGradientAttribution(method, tok)
    inp = TextTokenInput(PROMPT, tok, skip_tokens=skip_tokens or None)
    t = time.time()
    r = llm.attribute(inp, target=TARGET, **kwargs)
    seconds = time.time() - t
    target_ids = tok.encode(TARGET, add_special_tokens=False)
    out = dict(case)
    out.update({
        "captum_class": type(method).__name__, "layer": module_name(model, layer),
        "text": PROMPT, "target": TARGET, "input_ids": inp.inp_tensor[0].tolist(),
        "skip_tokens": skip_tokens, "input_tokens": r.input_tokens,
        "input_positions": [i for i, v in enumerate(inp.inp_tensor[0].tolist()) if v not in set(skip_tokens)],
        "target_ids": target_ids, "output_tokens": r.output_tokens,
        "seq_attr": r.seq_attr.tolist(), "token_attr": r.token_attr.tolist(), "captum_seconds": seconds})
    if case["method"] == "integrated_gradients":
        out["baseline_token_id"] = inp.baselines
        out["baseline_token"] = tok.convert_ids_to_tokens([inp.baselines])[0]
        out.update(convergence(llm, inp, torch.tensor(target_ids), kwargs, r.token_attr))
    return out


def convergence(llm, inp, target_ids, kwargs, token_attr):
    """Per row: Captum's own convergence delta (the same call with
    return_convergence_delta=True), f at the input and at the baseline."""
    fwd = GradientForwardFunc(llm)
    attr_inp = inp.to_tensor()
    deltas, f_in, f_base = [], [], []
    with torch.no_grad():
        for k in range(len(target_ids)):
            f_in.append(fwd(attr_inp, inp, target_ids, k).item())
            f_base.append(fwd(torch.zeros_like(attr_inp), inp, target_ids, k).item())
    for k in range(len(target_ids)):
        attr, delta = llm.attr_method.attribute(attr_inp, additional_forward_args=(inp, target_ids, k),
                                                return_convergence_delta=True, **kwargs)
        row = attr.detach().sum(-1)[0]
        # the same numbers LLMGradientAttribution returned for this row
        kept = row[: row.shape[0] - k] if k else row
        if inp.itp_mask is not None:
            kept = kept[inp.itp_mask[0]]
        assert torch.allclose(kept, token_attr[k], atol=1e-6), k
        assert abs(row.sum().item() - (f_in[k] - f_base[k]) - delta.item()) < 1e-4
        deltas.append(delta.item())
    return {"convergence_delta": deltas, "f_input": f_in, "f_baseline": f_base}


def bos_skip(tok):
    """[BOS] when tokenizer.encode adds one, else []."""
    ids = tok.encode("a")
    return [ids[0]] if ids != tok.encode("a", add_special_tokens=False) else []


def model_refs(model, tok, name):
    skip = bos_skip(tok)
    cases = [attribute(model, tok, c, skip) for c in CASES]
    if skip:
        # and once without skip_tokens: BOS is then a feature replaced by the baseline too
        cases.append(dict(attribute(model, tok, CASES[0], []), note="no skip_tokens"))
    for c in cases:
        c["model"] = name
    return {"model": name, "cases": cases}


def gradient_shap(model, tok, skip_tokens, seed=0):
    """Captum's LayerGradientShap through LLMGradientAttribution, from the baseline integrated
    gradients uses (every attributed token replaced by the baseline id), with 1 and with 5
    samples. Two things make it something other than gradient SHAP, and the fixture pins both:
    - it interpolates TextTokenInput's interpretable tensor (1 = keep the token), and
      `to_model_input` maps every value other than 1 to the baseline, so every point is the
      baseline: each row is the gradient at the baseline times (input - baseline), whatever
      coefficients np.random.uniform draws;
    - NoiseTunnel repeats the additional forward args per sample (`repeat_interleave`), so with
      n samples the forward function's `target_tokens` is the target with each token repeated n
      times: row k scores token `target[k // n]` after the first k of those repeated tokens."""
    import numpy as np
    from captum.attr import LayerGradientShap
    llm = LLMGradientAttribution(LayerGradientShap(model, model.get_input_embeddings()), tok)
    inp = TextTokenInput(PROMPT, tok, skip_tokens=skip_tokens or None)
    attr_inp = inp.to_tensor()
    runs = {}
    for n in (1, 5):
        np.random.seed(seed)
        torch.manual_seed(seed)
        runs[n] = llm.attribute(inp, target=TARGET, baselines=torch.full_like(attr_inp, inp.baselines),
                                n_samples=n)
    target_ids = tok.encode(TARGET, add_special_tokens=False)
    return {
        "method": "gradient_shap", "np_seed": seed, "captum_class": "LayerGradientShap",
        "text": PROMPT, "target": TARGET,
        "input_ids": inp.inp_tensor[0].tolist(), "skip_tokens": skip_tokens,
        "input_positions": [i for i, v in enumerate(inp.inp_tensor[0].tolist()) if v not in set(skip_tokens)],
        "baseline_token_id": inp.baselines, "target_ids": target_ids,
        "seq_attr": runs[1].seq_attr.tolist(), "token_attr": runs[1].token_attr.tolist(),
        "n_samples_5": {"seq_attr": runs[5].seq_attr.tolist(), "token_attr": runs[5].token_attr.tolist()}}


def run_shap(root, gguf_path, families):
    """captum_grad_shap.json per fixture dir: what Captum's gradient SHAP computes for an LLM."""
    for fam in families:
        model, tok, name = load(root, fam, gguf_path)
        case = dict(gradient_shap(model, tok, bos_skip(tok)), model=name)
        dump({"model": name, "cases": [case]}, os.path.join(root, fam), "captum_grad_shap.json")
        print(fam, [round(x, 4) for x in case["seq_attr"]], flush=True)


def load(root, fam, gguf_path):
    import tiny_families
    from smollm2_chat import load_smollm2
    d = os.path.join(root, fam)
    if fam == "tiny-gpt2":
        return (*load_tiny_gpt2(d), "tiny-gpt2 (random weights)")
    if fam == "smollm2":
        model, tok, _ = load_smollm2(gguf_path)
        return model, tok, "SmolLM2-135M-Instruct.Q4_1 dequantized to f32"
    return (*tiny_families.load(d), f"tiny random {fam}")


def load_tiny_gpt2(d):
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(d, "tokenizer.json"),
                                  eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    return GPT2LMHeadModel.from_pretrained(d, dtype=torch.float32).eval(), tok


def run(root, gguf_path, families):
    for fam in families:
        model, tok, name = load(root, fam, gguf_path)
        res = model_refs(model, tok, name)
        dump(res, os.path.join(root, fam), "captum_grad.json")
        print(fam, [(c["method"], c.get("integration"), [round(x, 3) for x in c["seq_attr"]][:4],
                     max(map(abs, c.get("convergence_delta", [0])))) for c in res["cases"]], flush=True)


BENCH_PROMPT = "Georg from Germany applied for a job as a janitor at a bakery. The hiring manager decided to"
BENCH_TARGET = " reject the application without any further consideration."


def time_captum(gguf_path, repeats=2):
    """Seconds Captum 0.9 takes for IG (50 steps, Gauss-Legendre) and gradient x input on
    SmolLM2 with a 20-token prompt and an 8-token target, on this CPU: the number issue 12's
    bench compares against. The best of `repeats` runs."""
    import json
    from smollm2_chat import load_smollm2
    model, tok, _ = load_smollm2(gguf_path)
    n_prompt, n_target = len(tok.encode(BENCH_PROMPT)), len(tok.encode(BENCH_TARGET, add_special_tokens=False))
    assert (n_prompt, n_target) == (20, 8), (n_prompt, n_target)
    layer = model.get_input_embeddings()
    out = {"model": "SmolLM2-135M-Instruct.Q4_1 dequantized to f32", "prompt": BENCH_PROMPT,
           "target": BENCH_TARGET, "prompt_tokens": n_prompt, "target_tokens": n_target,
           "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    for name, method, kwargs in (
            ("integrated_gradients_50_gausslegendre", LayerIntegratedGradients(model, layer), {"n_steps": 50}),
            ("gradient_x_input", LayerGradientXActivation(model, layer), {})):
        llm = LLMGradientAttribution(method, tok)
        best, best_cpu = float("inf"), float("inf")
        for _ in range(repeats):
            t, c = time.time(), time.process_time()
            llm.attribute(TextTokenInput(BENCH_PROMPT, tok), target=BENCH_TARGET, **kwargs)
            best, best_cpu = min(best, time.time() - t), min(best_cpu, time.process_time() - c)
        out[name + "_seconds"] = best
        # CPU seconds of the process: at one thread, the work done whatever else the machine runs.
        out[name + "_cpu_seconds"] = best_cpu
    print(json.dumps(out, indent=1), flush=True)
    return out
