"""The real CLIP tokenizer, built offline from open_clip's bundled BPE merges.

``open_clip.tokenizer.default_bpe()`` is OpenAI CLIP's ``bpe_simple_vocab_16e6.txt.gz``. CLIP's vocabulary is
derived from it deterministically: the 256 byte symbols of GPT-2's byte-level alphabet (``bytes_to_unicode``),
the same 256 with the end-of-word marker ``</w>``, one token per merge (the first 49152 - 256 - 2 merges), then
``<|startoftext|>`` and ``<|endoftext|>`` -- 49408 tokens, ids identical to ``open_clip.tokenize``. We write that
as the ``vocab.json`` + ``merges.txt`` pair a :class:`transformers.CLIPTokenizer` loads, so the lab's
StableDiffusionPipeline ships a standard tokenizer folder and needs no hub download.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

from ..utils import write_text

VOCAB_SIZE = 49408
N_MERGES = 49152 - 256 - 2
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


@lru_cache()
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable unicode character map: printable latin-1 bytes map to themselves and
    come first, the other bytes follow, mapped to code points from 256 up."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    out: dict[int, str] = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + n)
            n += 1
    return out  # insertion order (printable bytes first) is the vocabulary order


def clip_vocab_and_merges(bpe_path: str | Path | None = None) -> tuple[dict[str, int], list[str]]:
    """CLIP's token -> id map and its ordered merge list, from the gzip'd merges file."""
    if bpe_path is None:
        from open_clip.tokenizer import default_bpe

        bpe_path = default_bpe()
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = lines[1: N_MERGES + 1]  # line 0 is the "#version" header
    pairs = [tuple(m.split()) for m in merges]
    if any(len(p) != 2 for p in pairs) or len(pairs) != N_MERGES:
        raise ValueError(f"{bpe_path}: not a CLIP BPE merges file")
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(p) for p in pairs] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"built {len(vocab)} tokens, expected {VOCAB_SIZE}")
    return vocab, [" ".join(p) for p in pairs]


def write_clip_tokenizer_files(out_dir: str | Path, bpe_path: str | Path | None = None) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` (the format of openai/clip-vit-* repositories) into ``out_dir``."""
    out = Path(out_dir)
    vocab, merges = clip_vocab_and_merges(bpe_path)
    write_text(out / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    write_text(out / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    return out


def build_clip_tokenizer(work_dir: str | Path, model_max_length: int = 77):
    """A :class:`transformers.CLIPTokenizer` with CLIP's real vocabulary (padding with ``<|endoftext|>`` as in
    Stable Diffusion 1.x)."""
    from transformers import CLIPTokenizer

    d = write_clip_tokenizer_files(work_dir)
    return CLIPTokenizer(vocab=str(d / "vocab.json"), merges=str(d / "merges.txt"), model_max_length=model_max_length,
                         bos_token=BOS, eos_token=EOS, unk_token=EOS, pad_token=EOS)
