"""A random model at Llama-3.2-1B's shape, for the load/scoring benchmark (never committed).

Hugging Face layout: config.json (classic form, as the real Llama-3.2-1B ships it), bf16 weights
in two shards with model.safetensors.index.json, tied head, the tiny llama tokenizer (its ids
are all below 1024, a small corner of the 128256-row embedding), tokenizer_config.json and
generation_config.json. About 2.5 GB.
"""
import json
import os

import torch
from safetensors.torch import save_file

from common import dump
from families import FAMILIES

HIDDEN, INTER, LAYERS, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 2048, 8192, 16, 32, 8, 64, 128256


def shapes():
    yield "model.embed_tokens.weight", (VOCAB, HIDDEN)
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (HIDDEN,)
        yield p + "self_attn.q_proj.weight", (HEADS * HEAD_DIM, HIDDEN)
        yield p + "self_attn.k_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN)
        yield p + "self_attn.v_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN)
        yield p + "self_attn.o_proj.weight", (HIDDEN, HEADS * HEAD_DIM)
        yield p + "post_attention_layernorm.weight", (HIDDEN,)
        yield p + "mlp.gate_proj.weight", (INTER, HIDDEN)
        yield p + "mlp.up_proj.weight", (INTER, HIDDEN)
        yield p + "mlp.down_proj.weight", (HIDDEN, INTER)
    yield "model.norm.weight", (HIDDEN,)


def config(tok):
    return {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": tok.token_to_id("<|begin_of_text|>"),
        "eos_token_id": [tok.token_to_id("<|end_of_text|>"), tok.token_to_id("<|eot_id|>")],
        "head_dim": HEAD_DIM, "hidden_act": "silu", "hidden_size": HIDDEN, "initializer_range": 0.02,
        "intermediate_size": INTER, "max_position_embeddings": 131072, "mlp_bias": False,
        "model_type": "llama", "num_attention_heads": HEADS, "num_hidden_layers": LAYERS,
        "num_key_value_heads": KV_HEADS, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.45.0.dev0", "use_cache": True, "vocab_size": VOCAB}


def check_layout(out):
    """transformers (on the meta device, no memory) expects exactly these names and shapes."""
    from transformers import AutoConfig, AutoModelForCausalLM
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out))
    want = {k: tuple(v.shape) for k, v in m.state_dict().items() if k != "lm_head.weight"}
    assert want == dict(shapes()), set(want.items()) ^ set(shapes())


def write(out):
    os.makedirs(out, exist_ok=True)
    spec = FAMILIES["llama"]
    tok = spec["tokenizer"]()
    tok.save(os.path.join(out, "tokenizer.json"))
    dump(spec["tokenizer_config"](tok), out, "tokenizer_config.json")
    dump(spec["generation_config"](tok), out, "generation_config.json")
    dump(config(tok), out, "config.json")
    check_layout(out)
    g = torch.Generator().manual_seed(0)
    names = list(shapes())
    half = len(names) // 2
    weight_map, total = {}, 0
    for n, part in enumerate((names[:half], names[half:]), start=1):
        fname = f"model-{n:05d}-of-00002.safetensors"
        tensors = {}
        for name, shape in part:
            t = torch.randn(shape, generator=g) * 0.02
            if name.endswith("norm.weight"):
                t = 1.0 + t
            tensors[name] = t.to(torch.bfloat16)
            weight_map[name] = fname
            total += tensors[name].numel() * 2
        save_file(tensors, os.path.join(out, fname), metadata={"format": "pt"})
        del tensors
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    print(f"wrote {out}: {total / 1e9:.2f} GB of bf16 weights in 2 shards", flush=True)
