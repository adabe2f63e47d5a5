"""A Llama-architecture model with random weights at a real model's shape, for timing llm-attr
where no model can be downloaded (scripts/gpu-check.sh). Only the shapes matter for time.

    python3 scripts/random_model.py --shape llama-8b --dtype bfloat16 --out /dev/shm/llama-8b

Writes a Hugging Face model directory: config.json, model.safetensors (matrices N(0, 0.02²),
norm weights 1), and the tiny llama fixture's tokenizer files (tests/fixtures/llama: every word
of the seed templates is one token, all ids below 1024, so they fit any of these vocabularies).
Needs torch and safetensors; uses the GPU when torch sees one (an 8B model takes seconds there).
"""
import argparse
import json
import os
import shutil

import torch
from safetensors.torch import save_file

# hidden, intermediate, layers, heads, kv heads, head dim, vocab, tied head, rope theta,
# context, Llama 3 rope scaling factor (None: none)
SHAPES = {
    "smollm2-135m": (576, 1536, 30, 9, 3, 64, 49152, True, 100000.0, 8192, None),
    "llama-1b": (2048, 8192, 16, 32, 8, 64, 128256, True, 500000.0, 131072, 32.0),
    "llama-8b": (4096, 14336, 32, 32, 8, 128, 128256, False, 500000.0, 131072, 8.0),
    # For testing this script and gpu-check.sh on a CPU.
    "mini": (64, 128, 2, 4, 2, 16, 1024, True, 10000.0, 512, None),
}

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZER = os.path.join(HERE, "..", "tests", "fixtures", "llama")


def tensors(shape):
    hidden, inter, layers, heads, kv, hd, vocab, tied = shape[:8]
    yield "model.embed_tokens.weight", (vocab, hidden)
    for i in range(layers):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (hidden,)
        yield p + "self_attn.q_proj.weight", (heads * hd, hidden)
        yield p + "self_attn.k_proj.weight", (kv * hd, hidden)
        yield p + "self_attn.v_proj.weight", (kv * hd, hidden)
        yield p + "self_attn.o_proj.weight", (hidden, heads * hd)
        yield p + "post_attention_layernorm.weight", (hidden,)
        yield p + "mlp.gate_proj.weight", (inter, hidden)
        yield p + "mlp.up_proj.weight", (inter, hidden)
        yield p + "mlp.down_proj.weight", (hidden, inter)
    yield "model.norm.weight", (hidden,)
    if not tied:
        yield "lm_head.weight", (vocab, hidden)


def config(shape, dtype):
    hidden, inter, layers, heads, kv, hd, vocab, tied, theta, context, factor = shape
    tok = json.load(open(os.path.join(TOKENIZER, "config.json")))
    c = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": hd,
        "vocab_size": vocab, "tie_word_embeddings": tied, "rope_theta": theta,
        "max_position_embeddings": context, "rms_norm_eps": 1e-5, "attention_bias": False,
        "mlp_bias": False, "torch_dtype": str(dtype).removeprefix("torch."),
        "bos_token_id": tok.get("bos_token_id"), "eos_token_id": tok.get("eos_token_id"),
    }
    if factor:
        c["rope_scaling"] = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    return c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="bfloat16")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    shape, dtype = SHAPES[args.shape], getattr(torch, args.dtype)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(device=dev).manual_seed(0)
    weights = {}
    for name, dims in tensors(shape):
        if len(dims) == 1:
            t = torch.ones(dims, dtype=dtype, device=dev)
        else:
            t = torch.empty(dims, dtype=dtype, device=dev).normal_(0.0, 0.02, generator=gen)
        weights[name] = t.cpu()
    os.makedirs(args.out, exist_ok=True)
    save_file(weights, os.path.join(args.out, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config(shape, dtype), f, indent=1)
    for name in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]:
        shutil.copy(os.path.join(TOKENIZER, name), args.out)
    n = sum(t.numel() for t in weights.values())
    print(f"{args.out}: {args.shape}, {n / 1e9:.2f}B parameters, {args.dtype}, made on {dev}")


if __name__ == "__main__":
    main()
