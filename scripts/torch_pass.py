"""Times the PyTorch floor for an exact-product request, side by side with llm-attr on the same
machine and model (scripts/gpu-check.sh): one batched transformers forward over every prompt of
the product of each placeholder's value and baselines (t1: 5^3 = 125 prompts), right-padded, with
the target's log-probs gathered on the device. That is the work an exact Shapley run cannot avoid,
so llm-attr's exact time over this one is the overhead of everything else.

    python3 scripts/torch_pass.py --model /dev/shm/llama-8b --request examples/t1.json --dtype bfloat16

Prompts are encoded with the tokenizer's special tokens and the target without, as llm-attr and
Captum do. Prints one line: prompts, tokens, and the median of --repeats timed passes (seconds)
after one warm-up, each ended by a device synchronise.
"""
import argparse
import itertools
import json
import re
import statistics
import time

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM


def prompts(request):
    """Every filling of the template with each placeholder's value or one of its baselines."""
    names = re.findall(r"\{(\w+)\}", request["template"])
    choices = [[request["values"][n]] + list(request["baselines"][n]) for n in names]
    for combo in itertools.product(*choices):
        yield request["template"].format(**dict(zip(names, combo)))


def batch(tokenizer, request, device):
    target = tokenizer.encode(request["target"], add_special_tokens=False).ids
    # The last target token is predicted, never read: it is left out, as llm-attr does.
    seqs = [tokenizer.encode(p, add_special_tokens=True).ids + target[:-1] for p in prompts(request)]
    width = max(map(len, seqs))
    ids = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    # Logits at position p predict token p + 1, so target token j is read at prompt length - 1 + j.
    lengths = torch.tensor([len(s) for s in seqs])
    offsets = torch.arange(len(target)) - len(target)
    positions = lengths[:, None] + offsets[None, :]
    return ids.to(device), mask.to(device), positions.to(device), torch.tensor(target).to(device), sum(map(len, seqs))


def median_seconds(run, device, repeats):
    """The median time of `repeats` calls of `run` after one warm-up, each ended by a device
    synchronise; `run` returns a tensor that must be finite. Shared with captum_time.py."""
    def timed():
        start = time.perf_counter()
        out = run()
        if device == "cuda":
            torch.cuda.synchronize()
        assert torch.isfinite(out).all()
        return time.perf_counter() - start

    timed()
    return statistics.median(timed() for _ in range(repeats))


@torch.inference_mode()
def target_log_probs(model, ids, mask, positions, target):
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    rows = torch.arange(ids.shape[0], device=ids.device)[:, None]
    logits = model.lm_head(hidden[rows, positions]).float()
    return logits.log_softmax(-1).gather(-1, target.expand(ids.shape[0], -1)[..., None])[..., 0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--request", required=True)
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="bfloat16")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    request = json.load(open(args.request))
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).to(device).eval()
    tokenizer = Tokenizer.from_file(f"{args.model}/tokenizer.json")
    ids, mask, positions, target, tokens = batch(tokenizer, request, device)

    median = median_seconds(lambda: target_log_probs(model, ids, mask, positions, target), device, args.repeats)
    print(f"pytorch batched pass: {ids.shape[0]} prompts, {tokens} tokens, {args.dtype} on {device}: median {median:.4f}s")


if __name__ == "__main__":
    main()
