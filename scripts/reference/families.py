"""The tiny random decoder families: tokenizer, config (classic or transformers-5 form),
tokenizer_config.json and generation_config.json for each.

`classic` configs are written by hand the way older checkpoints have them (`rope_theta`,
`rope_scaling`, `torch_dtype`); `v5` configs are what transformers 5 saves
(`rope_parameters`, `dtype`, `layer_types`).
"""
import toks

LLAMA3_CHAT = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")
LLAMA2_CHAT = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = '' %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 %}{% set content = system_message + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")
MISTRAL_CHAT = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")
QWEN2_CHAT = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
QWEN3_CHAT = (
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}")
PHI3_CHAT = (
    "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
    "{{'<|system|>\\n' + message['content'] + '<|end|>\\n'}}{% elif message['role'] == 'user' %}"
    "{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}")
GEMMA2_CHAT = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}")


def _tok_llama3():
    return toks.byte_level(1024, ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                  "<|end_header_id|>", "<|eot_id|>"],
                           split=toks.LLAMA3_SPLIT, bos="<|begin_of_text|>", ignore_merges=True)


def _tok_qwen(extra_added=()):
    t = toks.byte_level(1024, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], split=toks.QWEN2_SPLIT,
                        nfc=True)
    if extra_added:
        t.add_tokens(list(extra_added))  # added but not special, as Qwen3's <think>
    return t


def _tok_phi3():
    return toks.byte_level(1024, ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"])


def _tok_llama2():
    return toks.sentencepiece(1024, ["<unk>", "<s>", "</s>"], "<s>")


def _tok_mistral():
    return toks.sentencepiece(1024, ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"], "<s>")


def _tok_gemma():
    return toks.sentencepiece(1024, ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>",
                                     "<end_of_turn>"], "<bos>", prepend_scheme="never")


def _ids(tok, *names):
    return [tok.token_to_id(n) for n in names]


# Every family: tokenizer builder, config form, config (a function of the tokenizer),
# tokenizer_config.json fields, generation_config.json, what it tests.
FAMILIES = {
    "llama": dict(
        tokenizer=_tok_llama3, form="classic", init_std=0.15,
        tests="Llama 3 layout: byte-level BPE (ignore_merges) with BOS from the post-processor, "
              "rope_scaling llama3 (original_max_position_embeddings 64 so every frequency band "
              "is hit by short prompts), GQA 4/2, untied head, eos list",
        config=lambda t: {
            "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
            "bos_token_id": t.token_to_id("<|begin_of_text|>"),
            "eos_token_id": _ids(t, "<|end_of_text|>", "<|eot_id|>"),
            "head_dim": 16, "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02,
            "intermediate_size": 160, "max_position_embeddings": 1024, "mlp_bias": False,
            "model_type": "llama", "num_attention_heads": 4, "num_hidden_layers": 2,
            "num_key_value_heads": 2, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
            "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                             "original_max_position_embeddings": 64, "rope_type": "llama3"},
            "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
            "transformers_version": "4.45.0", "use_cache": True, "vocab_size": t.get_vocab_size()},
        tokenizer_config=lambda t: {
            "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "chat_template": LLAMA3_CHAT,
            "clean_up_tokenization_spaces": False, "model_max_length": 131072,
            "tokenizer_class": "PreTrainedTokenizerFast"},
        generation_config=lambda t: {
            "bos_token_id": t.token_to_id("<|begin_of_text|>"),
            "eos_token_id": _ids(t, "<|end_of_text|>", "<|eot_id|>"),
            "do_sample": True, "temperature": 0.6, "top_p": 0.9},
        chat_case="<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"),
    "llama-linear": dict(
        tokenizer=_tok_llama2, form="v5", init_std=0.15,
        tests="Llama 2 layout: SentencePiece-style BPE (Metaspace, byte fallback, BOS from the "
              "post-processor, add_bos_token), rope linear factor 4, multi-head (kv = heads), tied head",
        config=lambda t: dict(
            model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
            rms_norm_eps=1e-06, tie_word_embeddings=True, vocab_size=t.get_vocab_size(),
            bos_token_id=1, eos_token_id=2, pad_token_id=None,
            rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}),
        tokenizer_config=lambda t: {
            "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
            "unk_token": "<unk>", "pad_token": None, "chat_template": LLAMA2_CHAT, "legacy": False,
            "clean_up_tokenization_spaces": False, "model_max_length": 4096,
            "tokenizer_class": "LlamaTokenizer"},
        generation_config=lambda t: {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0},
        chat_case="[INST] Hi [/INST]"),
    "mistral": dict(
        tokenizer=_tok_mistral, form="classic", init_std=0.15,
        tests="Mistral: SentencePiece-style BPE with [INST] control tokens, GQA 4/2, "
              "rope_theta 1e6, sliding_window null",
        config=lambda t: {
            "architectures": ["MistralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1,
            "eos_token_id": 2, "head_dim": 16, "hidden_act": "silu", "hidden_size": 64,
            "initializer_range": 0.02, "intermediate_size": 160, "max_position_embeddings": 32768,
            "model_type": "mistral", "num_attention_heads": 4, "num_hidden_layers": 2,
            "num_key_value_heads": 2, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
            "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
            "transformers_version": "4.42.0", "use_cache": True, "vocab_size": t.get_vocab_size()},
        tokenizer_config=lambda t: {
            "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
            "unk_token": "<unk>", "pad_token": None, "chat_template": MISTRAL_CHAT, "legacy": False,
            "clean_up_tokenization_spaces": False, "model_max_length": 32768,
            "tokenizer_class": "LlamaTokenizer"},
        generation_config=lambda t: {"bos_token_id": 1, "eos_token_id": 2},
        chat_case="[INST] Hi [/INST]"),
    "qwen2": dict(
        tokenizer=_tok_qwen, form="v5", init_std=0.15,
        tests="Qwen2: q/k/v bias, NFC byte-level BPE without BOS, tied head, config vocab_size "
              "padded past the tokenizer's (as Qwen pads), rope_theta 1e6",
        config=lambda t: dict(
            model_type="qwen2", hidden_size=64, intermediate_size=160, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768,
            rms_norm_eps=1e-06, tie_word_embeddings=True, vocab_size=(t.get_vocab_size() + 63) // 64 * 64 + 64,
            bos_token_id=t.token_to_id("<|endoftext|>"), eos_token_id=t.token_to_id("<|im_end|>"),
            use_sliding_window=False, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
        tokenizer_config=lambda t: {
            "add_bos_token": False, "add_prefix_space": False, "bos_token": None, "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>", "errors": "replace", "chat_template": QWEN2_CHAT,
            "clean_up_tokenization_spaces": False, "model_max_length": 32768, "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer"},
        generation_config=lambda t: {
            "bos_token_id": t.token_to_id("<|endoftext|>"),
            "eos_token_id": _ids(t, "<|im_end|>", "<|endoftext|>"),
            "pad_token_id": t.token_to_id("<|endoftext|>"), "do_sample": True, "temperature": 0.7,
            "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05},
        chat_case="<|im_start|>user\nHi<|im_end|>"),
    "qwen3": dict(
        tokenizer=lambda: _tok_qwen(("<think>", "</think>")), form="v5", init_std=0.15,
        tests="Qwen3: per-head q/k RMSNorm, head_dim 32 != hidden/heads, 3 layers, untied head, "
              "added non-special tokens <think> </think>",
        config=lambda t: dict(
            model_type="qwen3", hidden_size=64, intermediate_size=128, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=40960,
            rms_norm_eps=1e-06, tie_word_embeddings=False, vocab_size=t.get_vocab_size(),
            bos_token_id=t.token_to_id("<|endoftext|>"), eos_token_id=t.token_to_id("<|im_end|>"),
            attention_bias=False, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
        tokenizer_config=lambda t: {
            "add_bos_token": False, "add_prefix_space": False, "bos_token": None, "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>", "errors": "replace", "chat_template": QWEN3_CHAT,
            "clean_up_tokenization_spaces": False, "model_max_length": 131072, "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer"},
        generation_config=lambda t: {
            "bos_token_id": t.token_to_id("<|endoftext|>"),
            "eos_token_id": _ids(t, "<|im_end|>", "<|endoftext|>"),
            "pad_token_id": t.token_to_id("<|endoftext|>"), "do_sample": True, "temperature": 0.6,
            "top_p": 0.95, "top_k": 20},
        chat_case="<|im_start|>user\nHi<|im_end|><think>\n</think>"),
    "phi3": dict(
        tokenizer=_tok_phi3, form="v5", init_std=0.15,
        tests="Phi-3: fused qkv_proj (GQA 4/2) and gate_up_proj, GPT-2-regex byte-level BPE "
              "without BOS, untied head",
        config=lambda t: dict(
            model_type="phi3", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
            original_max_position_embeddings=4096, rms_norm_eps=1e-05, tie_word_embeddings=False,
            vocab_size=t.get_vocab_size(), bos_token_id=t.token_to_id("<|endoftext|>"),
            eos_token_id=t.token_to_id("<|endoftext|>"), pad_token_id=t.token_to_id("<|endoftext|>"),
            sliding_window=None, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
        tokenizer_config=lambda t: {
            "add_bos_token": False, "add_eos_token": False, "bos_token": "<|endoftext|>",
            "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
            "chat_template": PHI3_CHAT, "clean_up_tokenization_spaces": False,
            "model_max_length": 4096, "tokenizer_class": "GPT2Tokenizer"},
        generation_config=lambda t: {
            "bos_token_id": t.token_to_id("<|endoftext|>"),
            "eos_token_id": _ids(t, "<|end|>", "<|endoftext|>"),
            "pad_token_id": t.token_to_id("<|endoftext|>")},
        chat_case="<|user|>\nHi<|end|>\n<|assistant|>\n"),
    "gemma2": dict(
        tokenizer=_tok_gemma, form="classic", init_std=0.15,
        tests="Gemma 2: embeddings x sqrt(hidden), RMSNorm (1 + w), gelu_pytorch_tanh, pre and post "
              "norms, attention and final soft-capping that bite, query_pre_attn_scalar 24 != head_dim 32, "
              "sliding_window 6 on layers 0 and 2 (shorter than every prompt), tied head, "
              "SentencePiece-style BPE without a prefix space, BOS from the post-processor",
        config=lambda t: {
            "architectures": ["Gemma2ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
            "attn_logit_softcapping": 5.0, "bos_token_id": 2, "cache_implementation": "hybrid",
            "eos_token_id": _ids(t, "<eos>", "<end_of_turn>"), "final_logit_softcapping": 4.0,
            "head_dim": 32, "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh",
            "hidden_size": 64, "initializer_range": 0.02, "intermediate_size": 128,
            "max_position_embeddings": 8192, "model_type": "gemma2", "num_attention_heads": 4,
            "num_hidden_layers": 4, "num_key_value_heads": 2, "pad_token_id": 0,
            "query_pre_attn_scalar": 24, "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
            "sliding_window": 6, "torch_dtype": "bfloat16", "transformers_version": "4.42.4",
            "use_cache": True, "vocab_size": t.get_vocab_size()},
        tokenizer_config=lambda t: {
            "add_bos_token": True, "add_eos_token": False, "bos_token": "<bos>", "eos_token": "<eos>",
            "pad_token": "<pad>", "unk_token": "<unk>", "chat_template": GEMMA2_CHAT,
            "clean_up_tokenization_spaces": False, "model_max_length": 8192, "spaces_between_special_tokens": False,
            "tokenizer_class": "GemmaTokenizer"},
        generation_config=lambda t: {
            "bos_token_id": 2, "eos_token_id": _ids(t, "<eos>", "<end_of_turn>"), "pad_token_id": 0,
            "cache_implementation": "hybrid"},
        chat_case="<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"),
}
