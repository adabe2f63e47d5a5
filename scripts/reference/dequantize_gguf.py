"""Dequantizes a GGUF (e.g. SmolLM2-135M-Instruct.Q4_1.gguf) into a transformers directory
(f32 safetensors, tokenizer.json, the GGUF's chat template), for engines that load such a
directory (vLLM). As tests/fixtures/smollm2 was made: transformers' GGUF loader, with SmolLM2's
digit splitting put back into the tokenizer (transformers' GGUF tokenizer drops it).

    python scripts/reference/dequantize_gguf.py MODEL.gguf OUT_DIR

Needs torch, transformers, gguf and accelerate."""
import os
import sys

import torch
from gguf import GGUFReader
from tokenizers import pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer


def main(gguf_path, out):
    d, f = os.path.split(os.path.abspath(gguf_path))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    if "smollm2" in f.lower():
        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ])
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    fields = GGUFReader(gguf_path).fields
    if "tokenizer.chat_template" in fields:
        tok.chat_template = fields["tokenizer.chat_template"].contents()
    # The weights are plain f32 tensors now; the GGUF "quantizer" only blocks saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    model.save_pretrained(out)
    tok.save_pretrained(out)
    print(f"wrote {sorted(os.listdir(out))} to {out}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
