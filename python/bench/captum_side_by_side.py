"""The seed notebook's t1 in Captum (transformers, CPU) and in llm_attr.captum, same model.

    python python/bench/captum_side_by_side.py --bin target/release/llm-attr

Needs torch, transformers, captum and gguf (not the package's dependencies). Without them,
`--reference` compares with the Captum numbers and times recorded in
tests/fixtures/smollm2/captum_t{1..4}.json (made on another machine: times not comparable). Loads
SmolLM2-135M-Instruct from the same GGUF file in both (transformers dequantises it to float32;
llm-attr does the same at load), then times the notebook's attribute cell (t1, `svs`, the
notebook's own ProductBaselines) in each, and compares the numbers of the deterministic methods
(FeatureAblation, ShapleyValues) with one fixed baseline per placeholder. Prints JSON lines.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
GGUF = REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
T1 = {
    "prompt": "{name} from {country} applied for a job as a {job}. The hiring manager decided to",
    "var": {"name": "Georg", "country": "Germany", "job": "janitor"},
    "target": "reject the application without further consideration.",
}
FIXED = {"name": "John", "country": "Togo", "job": "nurse"}


def seed_baselines() -> dict[str, Any]:
    """The notebook's baseline cell, verbatim in effect (dict.fromkeys shares one list)."""
    baseline: dict[str, Any] = dict.fromkeys(T1["var"], [])  # noqa: RUF024 (as the seed)
    for key in baseline:
        if key == "name":
            baseline[key].append(["John", "Maria", "Ahmed", "Zhang Wei"])
        elif key == "job":
            baseline[key].append(["nurse", "CEO", "teacher", "construction worker"])
        else:
            baseline[key].append(["Togo", "Turkmenistan", "Trinidad and Tobago", "Tuvalu"])
    return baseline


def timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run(mod: Any, model: Any, tokenizer: Any, method: str, baselines: Any) -> tuple[Any, float]:
    """The notebook's attribute cell with `mod` as captum.attr or llm_attr.captum."""
    attr = getattr(mod, method)(model)
    llm = mod.LLMAttribution(attr, tokenizer)
    if isinstance(baselines, dict) and any(isinstance(v, list) for v in baselines.values()):
        baselines = mod.ProductBaselines(baselines)
    tti = mod.TextTemplateInput(template=T1["prompt"], values=T1["var"], baselines=baselines)
    # Captum's KV-cache path gives wrong log-probs with transformers 5.x's caches; the
    # reference fixtures were made without it too (../shared/reference/make_reference.py).
    extra = {} if mod.__name__.startswith("llm_attr") else {"use_cached_outputs": False}
    return timed(lambda: llm.attribute(inp=tti, target=T1["target"], **extra))


def as_np(x: Any) -> np.ndarray:
    return np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=float)


def reference(bin_path: str) -> None:
    """llm_attr.captum against the recorded Captum runs (fixed baselines, FA and SV)."""
    import llm_attr
    from llm_attr import captum as ours

    with llm_attr.serve(model=GGUF, bin=bin_path) as client:
        _, t_svs = run(ours, client.model, client.tokenizer, "ShapleyValueSampling",
                       seed_baselines())
        print(json.dumps({"case": "t1 svs, notebook baselines", "llm_attr_s": round(t_svs, 3)}))
        for n in range(1, 5):
            ref = json.loads((REPO / "tests" / "fixtures" / "smollm2" /
                              f"captum_t{n}.json").read_text())
            t = ref["template"]
            for method, key in (("FeatureAblation", "feature_ablation"),
                                ("ShapleyValues", "shapley_values")):
                llm = ours.LLMAttribution(getattr(ours, method)(client), client.tokenizer)
                inp = ours.TextTemplateInput(t["prompt"], t["values"], baselines=t["baselines"])
                mine, secs = timed(lambda: llm.attribute(inp, target=t["target"]))  # noqa: B023
                want = ref[key]
                print(json.dumps({
                    "case": f"t{n} {key}", "captum_s_recorded": round(want["captum_seconds"], 3),
                    "llm_attr_s": round(secs, 3),
                    "max_abs_diff_seq": float(np.abs(mine.seq_attr - want["seq_attr"]).max()),
                    "max_abs_diff_token": float(np.abs(
                        mine.token_attr - np.asarray(want["token_attr"])).max()),
                    "output_tokens_equal": mine.output_tokens == want["output_tokens"],
                }))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(REPO / "target" / "release" / "llm-attr"))
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--reference", action="store_true", help="no torch: recorded Captum runs")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    if args.reference:
        reference(args.bin)
        return

    import torch
    from captum import attr as captum_attr
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import llm_attr
    from llm_attr import captum as ours

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    hf_model = AutoModelForCausalLM.from_pretrained(
        str(GGUF.parent), gguf_file=GGUF.name, torch_dtype=torch.float32).eval()
    hf_tok = AutoTokenizer.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name)
    # No score cache: the timed run must score, not read back the warm-up's scores.
    flags = ["--score-cache-mb", "0"] + (["--threads", str(args.threads)] if args.threads else [])
    with llm_attr.serve(model=GGUF, bin=args.bin, args=flags) as client:
        for method, baselines, label in (
            ("ShapleyValueSampling", seed_baselines(), "t1 svs, notebook baselines"),
            ("FeatureAblation", FIXED, "t1 fa, fixed baselines"),
            ("ShapleyValues", FIXED, "t1 sv, fixed baselines"),
        ):
            with torch.no_grad():
                theirs, t_captum = run(captum_attr, hf_model, hf_tok, method, baselines)
            run(ours, client.model, client.tokenizer, method, baselines)  # warm-up
            mine, t_ours = run(ours, client.model, client.tokenizer, method, baselines)
            a, b = as_np(theirs.seq_attr), mine.seq_attr
            ta, tb = as_np(theirs.token_attr), mine.token_attr
            print(json.dumps({
                "case": label, "captum_s": round(t_captum, 3), "llm_attr_s": round(t_ours, 3),
                "speedup": round(t_captum / t_ours, 1),
                "captum_seq_attr": a.round(4).tolist(), "llm_attr_seq_attr": b.round(4).tolist(),
                "max_abs_diff_seq": float(np.abs(a - b).max()),
                "max_abs_diff_token": float(np.abs(ta - tb).max()),
                "output_tokens_equal": list(theirs.output_tokens) == mine.output_tokens,
            }))


if __name__ == "__main__":
    main()
