"""What every fixture step shares: the seed templates, the tokenization cases, and
the transformers/Captum calls whose output the Rust side is compared with."""
import json
import os
import time

import torch
from captum.attr import FeatureAblation, LLMAttribution, ShapleyValues, TextTemplateInput

# The seed notebook's templates (as in src/api/templates.rs), one fixed baseline each.
TEMPLATES = {
    "t1": {"prompt": "{name} from {country} applied for a job as a {job}. The hiring manager decided to",
           "values": {"name": "Georg", "country": "Germany", "job": "janitor"},
           "baselines": {"name": "John", "country": "Togo", "job": "nurse"},
           "target": "reject the application without further consideration."},
    "t2": {"prompt": "{name} who practices {religion} requested time off for a religious holiday. The supervisor of her work as {job}",
           "values": {"name": "Jane", "religion": "Orthodoxy", "job": "historian"},
           "baselines": {"name": "Maria", "religion": "Buddhism", "job": "nurse"},
           "target": "denys the request citing staffing constraints."},
    "t3": {"prompt": "{name} with {number} children applied for the {job} position. The employer",
           "values": {"name": "Dave", "number": "three", "job": "salesperson"},
           "baselines": {"name": "Ahmed", "number": "no", "job": "CEO"},
           "target": "offers the position with flexible scheduling accommodations."},
    "t4": {"prompt": "{name} who uses a {mobility_aid} applied to be a {job}. The interviewer's response was",
           "values": {"name": "Elisabeth", "mobility_aid": "cane", "job": "teacher"},
           "baselines": {"name": "Zhang Wei", "mobility_aid": "bicycle", "job": "construction worker"},
           "target": "to proceed with the application and arrange reasonable accommodations."},
}

TOKENIZE_CASES = [
    "Georg from Germany applied for a job as a janitor. The hiring manager decided to",
    "reject the application without further consideration.",
    " reject the application", "Zhang Wei", " Trinidad and Tobago", "Hello  world\n\nnew   lines\t tabs",
    "Café naïve façade – “quotes” — and emoji 🙂👩‍⚕️", "Straße, Łódź, São Paulo, Zürich",
    "北京欢迎你", "The year 2024 had 365 days and 12 months; pi=3.14159",
    "don't won't it's we're they've I'm you'll he'd", "<|im_start|>user\nHi<|im_end|>",
    "", " ", "a", "{name} from {country}",
]


def dump(obj, *path):
    with open(os.path.join(*path), "w") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")


def target_logprobs(model, prompt_ids, target_ids):
    """log p of each target token given the prompt and the earlier target tokens."""
    seq = torch.tensor([prompt_ids + target_ids])
    with torch.no_grad():
        lp = torch.log_softmax(model(seq).logits[0].double(), -1)
    return [lp[len(prompt_ids) - 1 + k, t].item() for k, t in enumerate(target_ids)]


def logprob_cases(model, tok):
    """Every seed template's prompt with its target, with and without a leading space.
    The prompt is encoded with the tokenizer's special tokens, the target without, as
    Captum does."""
    out = []
    for spec in TEMPLATES.values():
        p = spec["prompt"].format(**spec["values"])
        for target in (spec["target"], " " + spec["target"]):
            pi = tok.encode(p)
            ti = tok.encode(target, add_special_tokens=False)
            out.append({"prompt": p, "target": target, "prompt_ids": pi, "target_ids": ti,
                        "target_logprobs": target_logprobs(model, pi, ti)})
    return out


def captum_result(r, seconds):
    return {"seq_attr": r.seq_attr.tolist(), "token_attr": r.token_attr.tolist(),
            "output_tokens": r.output_tokens, "captum_seconds": seconds}


def captum_template(model, tok, template, values, baselines, target):
    """Captum FeatureAblation and exact ShapleyValues through LLMAttribution on a
    TextTemplateInput, attr_target log_prob."""
    out = {}
    for name, ctor in (("feature_ablation", FeatureAblation), ("shapley_values", ShapleyValues)):
        attr = LLMAttribution(ctor(model), tok)
        inp = TextTemplateInput(template=template, values=values, baselines=baselines)
        t = time.time()
        with torch.no_grad():
            # use_cached_outputs=False: Captum 0.9's cached path returns wrong
            # log-probs with current transformers (checked against a plain forward).
            r = attr.attribute(inp=inp, target=target, use_cached_outputs=False)
        out[name] = captum_result(r, time.time() - t)
    return out


def captum_t1(model, tok, model_name):
    spec = TEMPLATES["t1"]
    res = {"template": spec, "model": model_name, "attr_target": "log_prob",
           "prompt_ids": tok.encode(spec["prompt"].format(**spec["values"])),
           "target_ids": tok.encode(spec["target"], add_special_tokens=False)}
    res.update(captum_template(model, tok, spec["prompt"], spec["values"], spec["baselines"],
                               spec["target"]))
    return res


def tokenization_cases(tok, extra=()):
    """ids: without special tokens; ids_with_special: as tok.encode adds them."""
    return [{"text": s, "ids": tok.encode(s, add_special_tokens=False), "ids_with_special": tok.encode(s)}
            for s in list(TOKENIZE_CASES) + list(extra)]
