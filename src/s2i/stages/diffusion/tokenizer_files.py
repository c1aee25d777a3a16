"""A real CLIP tokenizer built from the ``open-clip-torch`` package's BPE vocabulary.

No hub access: ``bpe_simple_vocab_16e6.txt.gz`` (the merges OpenAI's CLIP was
trained with) ships in the ``open-clip-torch`` wheel. It is turned into the
Hugging Face ``CLIPTokenizer`` layout (``vocab.json`` + ``merges.txt``) exactly
as ``openai/clip-vit-large-patch14`` (Stable Diffusion 1.x) carries it: 49408
tokens, ``<|startoftext|>`` = 49406, ``<|endoftext|>`` = 49407, 77 positions.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from s2i.stages.bpe import bytes_to_unicode, package_folder

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
# CLIP keeps the first 49152 - 256 - 2 merges: with 256 byte tokens, their 256
# end-of-word variants and 2 specials, the vocabulary has 49408 entries.
NUM_MERGES = 49152 - 256 - 2
VOCAB_SIZE = 49408
# CLIP's text transformer has 77 positions; prompts are padded/truncated to it.
MODEL_MAX_LENGTH = 77
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"


def clip_bpe_path() -> Path:
    """Path of ``bpe_simple_vocab_16e6.txt.gz`` in ``open-clip-torch``, found without importing it.

    Importing ``open_clip`` pulls torchvision and friends; only its data file is needed.
    """
    path = package_folder("open_clip", "open-clip-torch", "its CLIP BPE vocabulary") / BPE_FILE
    if not path.is_file():
        raise RuntimeError(f"`open-clip-torch` is installed but has no {BPE_FILE} at {path}.")
    return path


def clip_vocab_and_merges(bpe_path: Path | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary and merges, in the order ``clip.simple_tokenizer.SimpleTokenizer`` builds them."""
    with gzip.open(bpe_path or clip_bpe_path(), "rt", encoding="utf-8") as file:
        lines = file.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    byte_tokens = list(bytes_to_unicode().values())
    tokens = byte_tokens + [token + "</w>" for token in byte_tokens]
    tokens += ["".join(merge) for merge in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {token: index for index, token in enumerate(tokens)}, merges


def build_clip_tokenizer(output_dir: Path):
    """Write a ``CLIPTokenizer`` (Stable Diffusion 1.x layout) into ``output_dir``; return it loaded."""
    from transformers import CLIPTokenizer

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges()
    (output_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (output_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(f"{left} {right}" for left, right in merges) + "\n", encoding="utf-8"
    )
    tokenizer = CLIPTokenizer(
        vocab_file=str(output_dir / "vocab.json"),
        merges_file=str(output_dir / "merges.txt"),
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=MODEL_MAX_LENGTH,
    )
    tokenizer.save_pretrained(output_dir)
    return CLIPTokenizer.from_pretrained(output_dir)
