"""Step 2: GGUF twins of two tiny families, written with gguf-py the way llama.cpp's
convert_hf_to_gguf.py writes them:

- qwen2/model.gguf: architecture `qwen2`, byte-level BPE vocabulary (`tokenizer.ggml.model =
  gpt2`, `pre = qwen2`, merges), token list padded with `[PAD{i}]` (type UNUSED) up to the
  config's vocab_size, tied head (no `output.weight`). No Q/K permutation (NEOX rope).
- mistral/model.gguf: architecture `llama` (convert maps MistralForCausalLM to it), SentencePiece
  vocabulary (`tokenizer.ggml.model = llama`, tokens, scores, token types), Q and K rows permuted
  as LlamaModel.permute does for llama.cpp's interleaved rope.

2-D tensors are F16, 1-D tensors (norms, biases) F32. Each twin's log-probs are computed from the
weights read back out of the GGUF and must match the safetensors twin within 1e-4.
"""
import os
import re

import gguf
import numpy as np
import torch
from gguf import GGUFReader, GGUFWriter

from common import dump, logprob_cases
from tiny_families import load

ARCH = {"qwen2": gguf.MODEL_ARCH.QWEN2, "llama": gguf.MODEL_ARCH.LLAMA}


def permute(w, n_head, n_head_kv):
    """convert_hf_to_gguf.py's LlamaModel.permute: HF's rotate-half layout of each head's
    rows to llama.cpp's interleaved pairs."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w, n_head):
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hparams(w, cfg, arch):
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    if arch == "llama":
        w.add_vocab_size(cfg.vocab_size)
        w.add_rope_dimension_count(head_dim)
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)


def bpe_vocab(w, tok, cfg):
    """_set_vocab_gpt2: the token list padded to the config's vocab_size, added special
    tokens CONTROL, the rest NORMAL; merges, special ids and the chat template from
    SpecialVocab."""
    rev = {i: t for t, i in tok.get_vocab().items()}
    added = {t.content: t for t in tok.added_tokens_decoder.values()}
    tokens, types = [], []
    for i in range(cfg.vocab_size):
        if i not in rev:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif rev[i] in added:
            tokens.append(rev[i])
            types.append(gguf.TokenType.CONTROL if added[rev[i]].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(rev[i])
            types.append(gguf.TokenType.NORMAL)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)


def spm_vocab(w, tok):
    """As _set_vocab_sentencepiece would from a tokenizer.model: <unk> UNKNOWN, special
    tokens CONTROL, <0xNN> BYTE, the rest NORMAL. Scores 0 for special and byte tokens and
    minus the merge rank for learnt pieces (their ids are in merge order), so llama.cpp's
    SentencePiece merging (highest score first) reproduces the BPE merges."""
    rev = {i: t for t, i in tok.get_vocab().items()}
    specials = {i for i, t in tok.added_tokens_decoder.items() if t.special}
    first_learnt = 1 + max(i for i, t in rev.items() if i in specials or re.fullmatch(r"<0x[0-9A-F]{2}>", t))
    tokens, scores, types = [], [], []
    for i in range(len(rev)):
        t = rev[i]
        tokens.append(t)
        if t == tok.unk_token:
            types.append(gguf.TokenType.UNKNOWN)
        elif i in specials:
            types.append(gguf.TokenType.CONTROL)
        elif re.fullmatch(r"<0x[0-9A-F]{2}>", t):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
        scores.append(-float(i - first_learnt) if i >= first_learnt else 0.0)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_add_space_prefix(True)


def write_gguf(fam_dir, arch, name):
    model, tok = load(fam_dir)
    cfg = model.config
    path = os.path.join(fam_dir, "model.gguf")
    w = GGUFWriter(path, arch)
    w.add_name(name)
    hparams(w, cfg, arch)
    if arch == "qwen2":
        bpe_vocab(w, tok, cfg)
    else:
        spm_vocab(w, tok)
    gguf.SpecialVocab(fam_dir, load_merges=(arch == "qwen2")).add_to_gguf(w)
    names = gguf.get_tensor_name_map(ARCH[arch], cfg.num_hidden_layers)
    for hf_name, t in model.state_dict().items():
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        t = t.float()
        if arch == "llama" and re.search(r"\.q_proj\.(weight|bias)$", hf_name):
            t = permute(t, cfg.num_attention_heads, cfg.num_attention_heads)
        if arch == "llama" and re.search(r"\.k_proj\.(weight|bias)$", hf_name):
            t = permute(t, cfg.num_attention_heads, cfg.num_key_value_heads)
        gname = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert gname, hf_name
        data = t.numpy().astype(np.float16 if t.dim() == 2 else np.float32)
        w.add_tensor(gname, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, model, tok


def read_back(path, model, arch):
    """The HF model with every weight replaced by the GGUF's (F16 upcast, Q/K permutation
    undone): proves the twin holds the same numbers, independently of any GGUF loader."""
    cfg = model.config
    names = gguf.get_tensor_name_map(ARCH[arch], cfg.num_hidden_layers)
    by_gguf = {t.name: t for t in GGUFReader(path).tensors}
    sd = {}
    for hf_name, ref in model.state_dict().items():
        gname = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
            gname = names.get_name("model.embed_tokens.weight", try_suffixes=(".weight",))
        t = torch.from_numpy(np.array(by_gguf[gname].data, dtype=np.float32)).reshape(ref.shape)
        if arch == "llama" and re.search(r"\.q_proj\.(weight|bias)$", hf_name):
            t = unpermute(t, cfg.num_attention_heads)
        if arch == "llama" and re.search(r"\.k_proj\.(weight|bias)$", hf_name):
            t = unpermute(t, cfg.num_key_value_heads)
        sd[hf_name] = t
    model.load_state_dict(sd)
    return model


def spm_encode(text, tokens, scores, types, add_space_prefix=True):
    """llama.cpp's SentencePiece tokenizer (llm_tokenizer_spm), enough to check the
    vocabulary: control tokens matched first, spaces to ▁, a ▁ prefix, then repeatedly
    merge the adjacent pair whose concatenation is the highest-scoring token (leftmost on
    ties); pieces not in the vocabulary fall back to <0xNN> byte tokens."""
    ids = {t: i for i, t in enumerate(tokens)}
    control = sorted((t for t, ty in zip(tokens, types) if ty == gguf.TokenType.CONTROL), key=len, reverse=True)
    pattern = "(" + "|".join(re.escape(c) for c in control) + ")" if control else None
    parts = re.split(pattern, text) if pattern else [text]
    out, first = [], True
    for k, part in enumerate(parts):
        if k % 2 == 1:
            out.append(ids[part])
            continue
        if not part:
            continue
        s = part.replace(" ", "▁")
        if add_space_prefix and first:
            s = "▁" + s
        first = False
        syms = list(s)
        while True:
            best = None
            for j in range(len(syms) - 1):
                cand = syms[j] + syms[j + 1]
                if cand in ids and (best is None or scores[ids[cand]] > best[0]):
                    best = (scores[ids[cand]], j)
            if best is None:
                break
            j = best[1]
            syms[j:j + 2] = [syms[j] + syms[j + 1]]
        for sym in syms:
            if sym in ids:
                out.append(ids[sym])
            else:
                out.extend(ids[f"<0x{b:02X}>"] for b in sym.encode("utf-8"))
    return out


def check_spm(path, tok):
    """The GGUF's SentencePiece vocabulary tokenizes like tokenizer.json (cases without
    special tokens, whose text holds no leading control token; llama.cpp adds the ▁
    prefix only at the start of the text)."""
    r = GGUFReader(path)
    f = r.fields
    tokens = [bytes(f["tokenizer.ggml.tokens"].parts[i]).decode() for i in f["tokenizer.ggml.tokens"].data]
    scores = [float(f["tokenizer.ggml.scores"].parts[i][0]) for i in f["tokenizer.ggml.scores"].data]
    types = [int(f["tokenizer.ggml.token_type"].parts[i][0]) for i in f["tokenizer.ggml.token_type"].data]
    from common import TEMPLATES, TOKENIZE_CASES
    texts = [t for t in TOKENIZE_CASES if t.strip()] + [s["target"] for s in TEMPLATES.values()]
    bad = [(t, spm_encode(t, tokens, scores, types), tok.encode(t, add_special_tokens=False))
           for t in texts]
    return [b for b in bad if b[1] != b[2]]


def transformers_gguf(path, ref_dir, cases_tok):
    """transformers' own GGUF loader (it undoes the Q/K permutation itself) on the file
    alone: its tokenizer must match tokenizer.json and its log-probs the safetensors twin's."""
    import shutil
    import tempfile
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from common import TOKENIZE_CASES
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(path, tmp)
        tg = AutoTokenizer.from_pretrained(tmp, gguf_file="model.gguf")
        mg = AutoModelForCausalLM.from_pretrained(tmp, gguf_file="model.gguf", dtype=torch.float32,
                                                  attn_implementation="eager").eval()
    bad = [t for t in TOKENIZE_CASES for sp in (False, True)
           if tg.encode(t, add_special_tokens=sp) != cases_tok.encode(t, add_special_tokens=sp)]
    return mg, bad


def max_diff(a, b):
    return max(abs(x - y) for r, g in zip(a, b) for x, y in zip(r["target_logprobs"], g["target_logprobs"]))


def run(root):
    report = {}
    for fam, arch in (("qwen2", "qwen2"), ("mistral", "llama")):
        d = os.path.join(root, fam)
        path, model, tok = write_gguf(d, arch, f"tiny random {fam}")
        ref = logprob_cases(model, tok)
        tmodel, tok_mismatch = transformers_gguf(path, d, tok)
        t_diff = max_diff(ref, logprob_cases(tmodel, tok))
        got = logprob_cases(read_back(path, model, arch), tok)
        diff = max_diff(ref, got)
        assert diff < 1e-4 and t_diff < 1e-4 and not tok_mismatch, (fam, diff, t_diff, tok_mismatch)
        dump(got, d, "gguf_logprobs.json")
        r = GGUFReader(path)
        check = {
            "file": "model.gguf", "architecture": arch,
            "tensor_types": sorted({f"{t.name}: {t.tensor_type.name}" for t in r.tensors}),
            "max_abs_diff_vs_safetensors": diff,
            "transformers_gguf_loader_max_abs_diff": t_diff,
            "transformers_gguf_tokenizer_matches_tokenizer_json": not tok_mismatch,
        }
        if arch == "llama":
            # llama.cpp's SentencePiece tokenizer always adds the ▁ prefix, so text that
            # already starts with a space gets an extra "▁" token; transformers (tokenizer.json's
            # Metaspace prepend_scheme "first", and its GGUF loader) does not.
            check["llama_cpp_spm_differences"] = [
                {"text": t, "llama_cpp": a, "transformers": b} for t, a, b in check_spm(path, tok)]
        dump(check, d, "gguf_check.json")
        report[fam] = {"bytes": os.path.getsize(path), "max_abs_diff": diff, "transformers_gguf": t_diff}
        print(fam, report[fam], flush=True)
    return report
