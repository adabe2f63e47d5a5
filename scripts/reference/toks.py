"""Tiny tokenizers trained with the `tokenizers` library, laid out like the real ones.

Byte-level BPE (Llama 3, Qwen 2/3, Phi-3 style): the 256 byte symbols and the merges
first, special tokens appended at the end of the vocabulary, as in the real files.
SentencePiece style (Llama 2/Mistral, Gemma): Metaspace pre-tokenizer, BPE with byte
fallback (`<0x00>`..`<0xFF>` tokens), special tokens at the start, BOS added by a
TemplateProcessing post-processor.
"""
import json

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

from corpus import corpus

# The pre-tokenizer regexes of the real tokenizer.json files.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
               r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def byte_level(vocab_size, specials, split=None, nfc=False, bos=None, ignore_merges=False):
    """split: a regex for a Split pre-tokenizer before ByteLevel(use_regex=False), as
    Llama 3 and Qwen do; None uses ByteLevel's own GPT-2 regex. bos: a special token
    the post-processor puts in front of every sequence."""
    tok = Tokenizer(BPE(ignore_merges=ignore_merges))
    if nfc:
        tok.normalizer = normalizers.NFC()
    if split:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True,
                                                     use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(vocab_size=vocab_size - len(specials), min_frequency=1, show_progress=False,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    tok.add_special_tokens(specials)
    post = [processors.ByteLevel(trim_offsets=False)]
    if bos:
        post.append(processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, tok.token_to_id(bos))]))
    tok.post_processor = processors.Sequence(post)
    return tok


def sentencepiece(vocab_size, specials, bos, prepend_scheme="first", extra_specials=()):
    """A SentencePiece-style BPE: `specials` take ids 0.., then the 256 byte-fallback
    tokens, then the learnt pieces; `extra_specials` (chat markup) are appended."""
    trainer_tok = Tokenizer(BPE())
    # split=True while training so no piece spans two words (SentencePiece's
    # split_by_whitespace); the saved tokenizer uses split=False like converted Llama files.
    # Digits and punctuation stand alone, as SentencePiece's split_digits and its
    # unicode-script splitting keep them.
    trainer_tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.Punctuation(behavior="isolated")])
    n_learnt = vocab_size - len(specials) - 256 - len(extra_specials)
    trainer = BpeTrainer(vocab_size=n_learnt, min_frequency=1, show_progress=False, limit_alphabet=200)
    trainer_tok.train_from_iterator(corpus(), trainer)
    learnt = json.loads(trainer_tok.to_str())["model"]
    vocab = {t: i for i, t in enumerate(specials)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for t, _ in sorted(learnt["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(t, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learnt["merges"]]
    unk = next(t for t in specials if "unk" in t)
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token=unk, byte_fallback=True, fuse_unk=True))
    tok.add_special_tokens(list(specials) + list(extra_specials))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend_scheme,
                                                 split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prepend_scheme != "never":
        steps.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(steps)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
        special_tokens=[(bos, tok.token_to_id(bos))])
    return tok
