"""Context attribution references (issue 22), run by hand with the torch environment:

    PY=/work/torchenv/bin/python
    $PY scripts/reference/context_attr.py loo       # tests/fixtures/{smollm2,llama,gemma2}/context_loo.json
    $PY scripts/reference/context_attr.py cite      # tests/fixtures/smollm2/context_cite.json
    $PY scripts/reference/context_attr.py bench     # the context-cite package's own time (prints JSON)

`loo`: leave-one-out over the sentences of a context. The ablated prompts are built here by the
rule llm-attr documents (src/input/split.rs): a removed sentence goes with one whitespace run,
between two kept sentences the run with the most line breaks (the later on a tie) is kept.
Each value is transformers' log p(target | full prompt) - log p(target | ablated prompt), per
token and summed (f32 forward, log-softmax in f64, as common.target_logprobs).

`cite`: needs tests/fixtures/smollm2/context_cite_masks.json, the masks llm-attr draws for the
request there (written by `cargo test --test context_parity -- --ignored write_masks`). For each
mask the ablated prompt is scored by transformers, the response computed with the context-cite
package's own functions (`_compute_logit_probs`, `aggregate_logit_probs`) and fitted with its
`LassoRegression` (alpha 0.01), for the whole target and for each target token.

`bench`: the same 64 masks' ablated prompts of the bench context scored and fitted by the package's
own pipeline (`get_masks_and_logit_probs` with its DataLoader batches, then `LassoRegression`),
timed on this CPU.
"""
import json
import os
import sys
import time

import numpy as np
import torch


ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIX = os.path.join(ROOT, "tests", "fixtures")
GGUF = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")

# Written for these fixtures; plain sentences, so any sentence splitter cuts them alike.
PARAGRAPHS = [
    ["The lighthouse on Gull Rock was built in 1871 from granite quarried on the mainland.",
     "Its first keeper was a retired sailor named Tobias Wren.",
     "He kept the lamp burning for thirty-two winters without a single failure."],
    ["In 1903 a storm tore the iron gallery from the tower.",
     "The keeper's daughter, Ada Wren, repaired it with help from the village blacksmith.",
     "She later became the first woman to hold the keeper's post on that coast."],
    ["The light was automated in 1958.",
     "Today the tower houses a small museum about the Wren family.",
     "Visitors reach it by a ferry that leaves the harbour twice a day."],
]
TEMPLATE = "Context:\n{context}\n\nQuestion: Who repaired the lighthouse after the storm?\nAnswer:"
TARGET = " Ada Wren, the keeper's daughter."


def context_parts(paragraphs):
    segs, gaps = [], []
    for p, para in enumerate(paragraphs):
        for s, sent in enumerate(para):
            gaps.append("" if not segs else ("\n\n" if s == 0 else " "))
            segs.append(sent)
    return segs, gaps


def render(segs, gaps, keep):
    out, last = "", None
    for i, s in enumerate(segs):
        if not keep[i]:
            continue
        if last is not None:
            j = max(range(last + 1, i + 1), key=lambda j: (gaps[j].count("\n"), j))
            out += gaps[j]
        out += s
        last = i
    return out


def dump(obj, *path):
    with open(os.path.join(*path), "w") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")


def target_logprobs(model, prompt_ids, target_ids):
    """log p of each target token given the prompt and the earlier target tokens (as
    common.target_logprobs, which needs Captum to import)."""
    seq = torch.tensor([prompt_ids + target_ids])
    with torch.no_grad():
        lp = torch.log_softmax(model(seq).logits[0].double(), -1)
    return [lp[len(prompt_ids) - 1 + k, t].item() for k, t in enumerate(target_ids)]


def load(fam):
    """As smollm2_chat.load_smollm2 and tiny_families.load load them (those modules need Captum)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if fam == "smollm2":
        from tokenizers import pre_tokenizers
        d, f = os.path.split(GGUF)
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ])
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
        return model, tok
    d = os.path.join(FIX, fam)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    return model, AutoTokenizer.from_pretrained(d)


def loo(fam):
    model, tok = load(fam)
    segs, gaps = context_parts(PARAGRAPHS)
    n = len(segs)
    target_ids = tok.encode(TARGET, add_special_tokens=False)

    def lps(keep):
        prompt = TEMPLATE.replace("{context}", render(segs, gaps, keep))
        return target_logprobs(model, tok.encode(prompt), target_ids)

    full = lps([True] * n)
    rows = []
    for i in range(n):
        keep = [k != i for k in range(n)]
        rows.append([a - b for a, b in zip(full, lps(keep))])
    out = {
        "template": TEMPLATE, "context": render(segs, gaps, [True] * n), "split": "sentence",
        "target": TARGET, "segments": segs, "target_ids": target_ids, "full_logprobs": full,
        "ablated_example": TEMPLATE.replace("{context}", render(segs, gaps, [k != 2 for k in range(n)])),
        "seq_attr": [sum(r) for r in rows],
        "token_attr": [[rows[i][t] for i in range(n)] for t in range(len(target_ids))],
    }
    dump(out, FIX, fam, "context_loo.json")
    print(fam, [round(v, 4) for v in out["seq_attr"]], flush=True)


def logit_probs(model, prompts, response_ids):
    """The context-cite package's per-token logit-probabilities of the response after each prompt."""
    from context_cite.utils import _compute_logit_probs
    out = []
    for ids in prompts:
        seq = torch.tensor([ids + response_ids])
        with torch.no_grad():
            logits = model(seq).logits[:, len(ids) - 1:-1]
        out.append(_compute_logit_probs(logits, torch.tensor([response_ids]))[0].numpy())
    return np.array(out, dtype=np.float32)


def fit(masks, lp):
    from context_cite.solver import LassoRegression
    from context_cite.utils import aggregate_logit_probs
    solver = LassoRegression()
    t = lp.shape[1]
    seq, _ = solver.fit(masks, aggregate_logit_probs(lp), t)
    tokens = [solver.fit(masks, aggregate_logit_probs(lp[:, k:k + 1]), 1)[0].tolist() for k in range(t)]
    return seq.tolist(), tokens


def cite():
    spec = json.load(open(os.path.join(FIX, "smollm2", "context_cite_masks.json")))
    model, tok = load("smollm2")
    value = spec["values"]["context"]
    segs = spec["segments"]
    pre_gaps = gaps_of(value, segs)
    masks = np.array(spec["masks"], dtype=bool)
    target_ids = tok.encode(spec["target"], add_special_tokens=False)
    prompts = [tok.encode(spec["template"].replace("{context}", render(segs, pre_gaps, m))) for m in masks]
    lp = logit_probs(model, prompts, target_ids)
    seq, tokens = fit(masks, lp)
    import context_cite
    out = dict(spec, target_ids=target_ids, logit_probs=lp.tolist(), seq_attr=seq, token_attr=tokens,
               package=f"context-cite {getattr(context_cite, '__version__', '')}".strip())
    dump(out, FIX, "smollm2", "context_cite.json")
    print("context_cite", [round(v, 4) for v in seq], flush=True)


def gaps_of(value, segs):
    gaps, at = [], 0
    for s in segs:
        start = value.index(s, at)
        gaps.append(value[at:start] if gaps else "")
        at = start + len(s)
    return gaps


def bench():
    """The package's own pipeline on the bench's masks: scoring in its DataLoader batches, then
    the Lasso, timed."""
    from context_cite.solver import LassoRegression
    from context_cite.utils import aggregate_logit_probs, get_masks_and_logit_probs
    spec = json.load(open(sys.argv[2]))
    model, tok = load("smollm2")
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    segs, value = spec["segments"], spec["values"]["context"]
    gaps = gaps_of(value, segs)
    masks = np.array(spec["masks"], dtype=bool)
    response_ids = spec["target_ids"]
    prompt_of = {m.tobytes(): tok.encode(spec["template"].replace("{context}", render(segs, gaps, m)))
                 for m in masks}
    import context_cite.utils as u
    rows = iter(masks)
    u._create_mask = lambda num_sources, alpha, seed: next(rows)  # llm-attr's masks, in order
    started = time.time()
    got_masks, lp = get_masks_and_logit_probs(model, tok, len(masks), len(segs),
                                              lambda mask: prompt_of[mask.tobytes()], response_ids,
                                              0.5, int(os.environ.get("BATCH", "1")))
    scored = time.time() - started
    weights, _ = LassoRegression().fit(got_masks, aggregate_logit_probs(lp), len(response_ids))
    total = time.time() - started
    print(json.dumps({"package_seconds": total, "scoring_seconds": scored, "masks": len(masks),
                      "segments": len(segs), "top": int(np.argmax(weights))}))


if __name__ == "__main__":
    step = sys.argv[1] if len(sys.argv) > 1 else "loo"
    if step == "loo":
        for fam in (sys.argv[2].split(",") if len(sys.argv) > 2 else ["smollm2", "llama", "gemma2"]):
            loo(fam)
    elif step == "cite":
        cite()
    elif step == "bench":
        bench()
