"""Step 1: a tiny random model of every decoder family, with transformers' log-probs,
greedy ids and Captum's FeatureAblation / ShapleyValues on the seed template t1."""
import json
import os
import shutil
import tempfile

import torch
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, CONFIG_MAPPING

from common import TEMPLATES, captum_t1, dump, logprob_cases, tokenization_cases
from families import FAMILIES


def randomize(model, std, gemma_norms):
    """Weights large enough that attributions are clearly non-zero; norm scales and
    biases random too, so a missing norm weight or bias shows in the numbers."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_(0.3 * noise if gemma_norms else 1.0 + 0.3 * noise)
            elif name.endswith("bias"):
                p.copy_(0.3 * noise)
            else:
                p.copy_(std * noise)


def write_model_dir(name, spec, out):
    """Tokenizer files, config.json, bf16 model.safetensors and generation_config.json."""
    os.makedirs(out, exist_ok=True)
    tok = spec["tokenizer"]()
    tok.save(os.path.join(out, "tokenizer.json"))
    dump(spec["tokenizer_config"](tok), out, "tokenizer_config.json")
    cfg = spec["config"](tok)
    if spec["form"] == "classic":
        dump(cfg, out, "config.json")
        config = AutoConfig.from_pretrained(out)
    else:
        cfg = dict(cfg)
        config = CONFIG_MAPPING[cfg.pop("model_type")](**cfg)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    randomize(model, spec["init_std"], gemma_norms=config.model_type.startswith("gemma"))
    model = model.to(torch.bfloat16)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        shutil.copy(os.path.join(tmp, "model.safetensors"), out)
        if spec["form"] == "v5":
            shutil.copy(os.path.join(tmp, "config.json"), out)
    dump(spec["generation_config"](tok), out, "generation_config.json")


def load(out):
    """As a transformers user loads it: f32 (bf16 weights upcast exactly), eager attention."""
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    return model, AutoTokenizer.from_pretrained(out)


def check_tokenizer(out, tok, cases):
    """transformers' tokenizer must agree with the plain tokenizer.json, which is what the
    Rust side reads; a disagreement is reported, not hidden."""
    raw = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    bad = []
    for c in cases:
        for special in (False, True):
            a = tok.encode(c["text"], add_special_tokens=special)
            b = raw.encode(c["text"], add_special_tokens=special).ids
            if a != b:
                bad.append({"text": c["text"], "special": special, "transformers": a, "tokenizers": b})
    return bad


def greedy(model, tok, prompt, n=12):
    """model.generate's greedy ids, checked against greedy decoding by full forwards
    (no KV cache), which is the definition the Rust side implements. Plain argmax: the
    sampling settings of generation_config.json (repetition_penalty too) are turned off."""
    ids = tok.encode(prompt)
    with torch.no_grad():
        g = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, temperature=None,
                           top_p=None, top_k=None,
                           repetition_penalty=None)[0][len(ids):].tolist()
        seq, plain = list(ids), []
        eos = model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos])
        for _ in range(n):
            nxt = int(model(torch.tensor([seq])).logits[0, -1].argmax())
            plain.append(nxt)
            seq.append(nxt)
            if nxt in eos:
                break
    assert g == plain, (prompt, g, plain)
    return {"prompt": prompt, "prompt_ids": ids, "greedy_ids": g, "greedy_text": tok.decode(g),
            "stopped_at_eos": len(g) < n or g[-1] in eos}


def run(root, names=None):
    report = {}
    for name, spec in FAMILIES.items():
        if names and name not in names:
            continue
        out = os.path.join(root, name)
        write_model_dir(name, spec, out)
        model, tok = load(out)
        cases = tokenization_cases(tok, extra=[spec["chat_case"]])
        mismatch = check_tokenizer(out, tok, cases)
        dump(cases, out, "tokenization.json")
        dump(logprob_cases(model, tok), out, "logprobs.json")
        dump([greedy(model, tok, s["prompt"].format(**s["values"])) for s in TEMPLATES.values()],
             out, "generation.json")
        res = captum_t1(model, tok, f"tiny random {name} ({spec['form']} config, bf16 weights, computed in f32)")
        dump(res, out, "captum_t1.json")
        report[name] = {"tokenizer_mismatches": mismatch,
                        "fa_seq": res["feature_ablation"]["seq_attr"],
                        "sv_seq": res["shapley_values"]["seq_attr"]}
        print(name, json.dumps(report[name]), flush=True)
    return report


CHAT_MESSAGES = [
    [{"role": "user", "content": "Georg from Germany applied for a job as a janitor. Should the hiring manager hire him?"}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Georg from Germany applied for a job as a janitor. Should the hiring manager hire him?"}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "  Say {name} with spaces around.  "}],
    [{"role": "user", "content": "Hi!"}, {"role": "user", "content": "Hi again!"}],
]


def chat_renders(out):
    """transformers' apply_chat_template with the directory's tokenizer_config.json
    chat_template; a template that raises (raise_exception) is recorded with its message."""
    tok = AutoTokenizer.from_pretrained(out)
    renders = []
    for messages in CHAT_MESSAGES:
        for agp in (True, False):
            r = {"messages": messages, "add_generation_prompt": agp}
            try:
                r["text"] = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=agp)
                r["ids"] = tok.encode(r["text"], add_special_tokens=False)
            except Exception as e:  # jinja2's TemplateError from raise_exception
                r["error"] = str(e)
            renders.append(r)
    return {"chat_template": tok.chat_template, "renders": renders}


def run_chat(root, names=None):
    for name in FAMILIES:
        if not names or name in names:
            dump(chat_renders(os.path.join(root, name)), root, name, "chat_render.json")


def write_sharded(root, src="qwen3", dst="qwen3-sharded"):
    """The same weights as `src`, split into two shards with model.safetensors.index.json
    (as transformers writes them), plus src's config and tokenizer files; src's reference
    data applies unchanged."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    s, d = os.path.join(root, src), os.path.join(root, dst)
    os.makedirs(d, exist_ok=True)
    for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(s, f), d)
    with safe_open(os.path.join(s, "model.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    names = sorted(tensors)
    half = len(names) // 2
    weight_map, total = {}, 0
    for n, part in enumerate((names[:half], names[half:]), start=1):
        fname = f"model-{n:05d}-of-00002.safetensors"
        save_file({k: tensors[k] for k in part}, os.path.join(d, fname), metadata={"format": "pt"})
        for k in part:
            weight_map[k] = fname
            total += tensors[k].numel() * tensors[k].element_size()
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        f.write("\n")
    a, _ = load(s)
    b, _ = load(d)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)
