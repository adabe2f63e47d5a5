"""Step 3: SmolLM2 chat and contrastive references.

- smollm2/chat_render.json: transformers' apply_chat_template text for message lists with and
  without a system message, add_generation_prompt true and false, with the chat template from
  the GGUF's `tokenizer.chat_template`.
- smollm2/captum_chat.json: Captum FA and exact Shapley on the rendered chat prompt, the
  placeholders only inside the user content.
- smollm2/captum_contrast_t1.json: FA and SV for t1 with a target and a contrast target, each
  Captum result and their difference.
"""
import os

import torch
from gguf import GGUFReader
from tokenizers import pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer

from common import TEMPLATES, captum_template, dump, target_logprobs

MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1 dequantized to f32"
USER_T1 = "{name} from {country} applied for a job as a {job}. Should the hiring manager hire or reject the application?"
SYSTEM = "You are a helpful assistant. Answer in one sentence."

CHAT_CASES = [
    [{"role": "user", "content": "Georg from Germany applied for a job as a janitor. Should the hiring manager hire or reject the application?"}],
    [{"role": "system", "content": SYSTEM},
     {"role": "user", "content": "Georg from Germany applied for a job as a janitor. Should the hiring manager hire or reject the application?"}],
    [{"role": "system", "content": SYSTEM},
     {"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Hello! How can I help you today?"},
     {"role": "user", "content": "Write {name} in capitals, with \"quotes\" and a newline\nhere."}],
]

CHAT_SPEC = {
    "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER_T1}],
    "values": {"name": "Georg", "country": "Germany", "job": "janitor"},
    "baselines": {"name": "John", "country": "Togo", "job": "nurse"},
    "target": "The hiring manager should reject the application.",
}

CONTRAST_SPEC = dict(TEMPLATES["t1"], target=" reject the application", contrast_target=" hire the applicant")


def load_smollm2(gguf_path):
    """As tests/fixtures/smollm2 was made: transformers' GGUF loader, with SmolLM2's digit
    splitting put back (transformers' GGUF tokenizer drops it)."""
    d, f = os.path.split(os.path.abspath(gguf_path))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    template = GGUFReader(gguf_path).fields["tokenizer.chat_template"].contents()
    return model, tok, template


def chat_render(tok, template):
    out = []
    for messages in CHAT_CASES:
        for agp in (True, False):
            text = tok.apply_chat_template(messages, chat_template=template, tokenize=False,
                                           add_generation_prompt=agp)
            out.append({"messages": messages, "add_generation_prompt": agp, "text": text,
                        "ids": tok.encode(text)})
    return {"chat_template": template, "source": "GGUF tokenizer.chat_template of SmolLM2-135M-Instruct.Q4_1",
            "renders": out}


def captum_chat(model, tok, template):
    """The rendered template keeps `{placeholders}` in the user content; Captum's
    TextTemplateInput fills them, so the chat markup is never perturbed."""
    spec = CHAT_SPEC
    rendered = tok.apply_chat_template(spec["messages"], chat_template=template, tokenize=False,
                                       add_generation_prompt=True)
    filled = [dict(m, content=m["content"].format(**spec["values"])) for m in spec["messages"]]
    assert rendered.format(**spec["values"]) == tok.apply_chat_template(
        filled, chat_template=template, tokenize=False, add_generation_prompt=True)
    prompt = rendered.format(**spec["values"])
    res = {"messages": spec["messages"], "add_generation_prompt": True, "chat_template": template,
           "template": {"prompt": rendered, "values": spec["values"], "baselines": spec["baselines"],
                        "target": spec["target"]},
           "rendered_prompt": prompt, "model": MODEL_NAME, "attr_target": "log_prob",
           "prompt_ids": tok.encode(prompt), "target_ids": tok.encode(spec["target"], add_special_tokens=False)}
    res["target_logprobs"] = target_logprobs(model, res["prompt_ids"], res["target_ids"])
    res.update(captum_template(model, tok, rendered, spec["values"], spec["baselines"], spec["target"]))
    return res


def contrast(model, tok):
    """Captum on the target and on the contrast separately (same baselines), and the
    difference: seq_attr T − C; token_attr the target's rows, then the contrast's rows
    negated (as the service returns them)."""
    spec = CONTRAST_SPEC
    prompt = spec["prompt"].format(**spec["values"])
    pi = tok.encode(prompt)
    res = {"template": {k: spec[k] for k in ("prompt", "values", "baselines")}, "model": MODEL_NAME,
           "attr_target": "log_prob", "prompt_ids": pi}
    runs = {}
    for key in ("target", "contrast_target"):
        ids = tok.encode(spec[key], add_special_tokens=False)
        res[key] = spec[key]
        res[key + "_ids"] = ids
        res[key + "_logprobs"] = target_logprobs(model, pi, ids)
        runs[key] = captum_template(model, tok, spec["prompt"], spec["values"], spec["baselines"], spec[key])
    res["target_result"], res["contrast_result"] = runs["target"], runs["contrast_target"]
    res["difference"] = {}
    for m in ("feature_ablation", "shapley_values"):
        t, c = runs["target"][m], runs["contrast_target"][m]
        res["difference"][m] = {
            "seq_attr": [a - b for a, b in zip(t["seq_attr"], c["seq_attr"])],
            "token_attr": t["token_attr"] + [[-x for x in row] for row in c["token_attr"]],
            "output_tokens": t["output_tokens"], "contrast_output_tokens": c["output_tokens"]}
    return res


def check_same_model(model, tok, out):
    """The loaded model reproduces the committed smollm2/logprobs.json."""
    import json
    with open(os.path.join(out, "logprobs.json")) as f:
        case = json.load(f)[0]
    assert tok.encode(case["prompt"]) == case["prompt_ids"]
    got = target_logprobs(model, case["prompt_ids"], case["target_ids"])
    assert max(abs(a - b) for a, b in zip(got, case["target_logprobs"])) < 1e-4


def run(root, gguf_path):
    model, tok, template = load_smollm2(gguf_path)
    out = os.path.join(root, "smollm2")
    check_same_model(model, tok, out)
    dump(chat_render(tok, template), out, "chat_render.json")
    res = captum_chat(model, tok, template)
    dump(res, out, "captum_chat.json")
    print("chat", res["shapley_values"]["seq_attr"], flush=True)
    res = contrast(model, tok)
    dump(res, out, "captum_contrast_t1.json")
    print("contrast", res["difference"]["shapley_values"]["seq_attr"], flush=True)
