"""A real multilingual Whisper tokenizer built from the ``openai-whisper`` package's assets.

No hub access: the byte-level BPE ranks (``multilingual.tiktoken``) and the
language table ship in the ``openai-whisper`` wheel. They are turned into the
Hugging Face ``WhisperTokenizer`` layout (``vocab.json`` + ``merges.txt`` +
special tokens) with the same ids as the released checkpoints (51865 tokens:
50257 BPE tokens, ``<|endoftext|>`` = 50257, ``<|startoftranscript|>`` = 50258,
99 languages, ``<|translate|>`` = 50358, ``<|transcribe|>`` = 50359, …,
``<|notimestamps|>`` = 50363, then 1501 timestamps).
"""

from __future__ import annotations

import ast
import base64
import json
from functools import lru_cache
from pathlib import Path

from s2i.stages.bpe import bytes_to_unicode, package_folder

# Whisper v1/v2 checkpoints know 99 languages; v3 adds Cantonese (51866 tokens).
NUM_LANGUAGES = 99
NUM_TIMESTAMPS = 1501


def openai_whisper_assets() -> Path:
    """Folder of the ``openai-whisper`` package's assets, found without importing it.

    Importing ``whisper`` pulls numba and friends; only its data files are needed.
    """
    return package_folder("whisper", "openai-whisper", "its tokenizer assets") / "assets"


@lru_cache(maxsize=1)
def whisper_languages() -> dict[str, str]:
    """The ordered ``code -> name`` language table of ``whisper/tokenizer.py``."""
    source = (openai_whisper_assets().parent / "tokenizer.py").read_text(encoding="utf-8")
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "LANGUAGES" for target in node.targets
        ):
            return ast.literal_eval(node.value)
    raise RuntimeError("`LANGUAGES` not found in openai-whisper's tokenizer.py")


def special_tokens(num_languages: int = NUM_LANGUAGES) -> list[str]:
    """Special tokens in id order, as ``whisper.tokenizer.get_encoding`` appends them."""
    languages = list(whisper_languages())[:num_languages]
    return [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *[f"<|{code}|>" for code in languages],
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
    ]


def timestamp_tokens() -> list[str]:
    """``<|0.00|>`` … ``<|30.00|>``: plain added tokens after the special tokens."""
    return [f"<|{i * 0.02:.2f}|>" for i in range(NUM_TIMESTAMPS)]


def load_bpe_ranks(path: Path) -> dict[bytes, int]:
    """Read a ``.tiktoken`` file: one ``base64(token) rank`` per line."""
    ranks = {}
    for line in path.read_text(encoding="ascii").splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def bpe_vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Turn tiktoken ranks into HF ``vocab.json`` entries and ordered merges.

    tiktoken merges the adjacent pair whose *merged* token has the lowest rank;
    listing every split of each token ordered by the merged rank gives HF's BPE
    the same behaviour.
    """
    byte_encoder = bytes_to_unicode()

    def to_str(token: bytes) -> str:
        return "".join(byte_encoder[b] for b in token)

    vocab = {to_str(token): rank for token, rank in ranks.items()}
    merges: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for index in range(1, len(token)):
            left, right = token[:index], token[index:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    return vocab, [(to_str(left), to_str(right)) for *_, left, right in merges]


def build_whisper_tokenizer(output_dir: Path, num_languages: int = NUM_LANGUAGES):
    """Write a multilingual ``WhisperTokenizer`` (slow and fast files) into ``output_dir``.

    Returns:
        The loaded ``WhisperTokenizerFast``.
    """
    from transformers import WhisperTokenizer, WhisperTokenizerFast

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    vocab, merges = bpe_vocab_and_merges(load_bpe_ranks(openai_whisper_assets() / "multilingual.tiktoken"))
    staging = output_dir / "_bpe"
    staging.mkdir(exist_ok=True)
    (staging / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (staging / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(f"{left} {right}" for left, right in merges) + "\n", encoding="utf-8"
    )
    specials = special_tokens(num_languages)
    slow = WhisperTokenizer(
        vocab_file=str(staging / "vocab.json"),
        merges_file=str(staging / "merges.txt"),
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=1024,
    )
    slow.add_special_tokens({"additional_special_tokens": specials})
    slow.add_tokens(timestamp_tokens())
    slow.save_pretrained(output_dir)
    for path in staging.iterdir():
        path.unlink()
    staging.rmdir()
    fast = WhisperTokenizerFast.from_pretrained(output_dir)
    fast.save_pretrained(output_dir)
    return fast


def non_speech_tokens(tokenizer) -> list[int]:
    """Token ids Whisper suppresses so it does not invent speaker tags or music symbols.

    The same rule as ``whisper.tokenizer.Tokenizer.non_speech_tokens``.
    """
    symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
    symbols += [
        "<<",
        ">>",
        "<<<",
        ">>>",
        "--",
        "---",
        "-(",
        "-[",
        "('",
        '("',
        "((",
        "))",
        "(((",
        ")))",
        "[[",
        "]]",
        "{{",
        "}}",
        "♪♪",
        "♪♪♪",
    ]
    miscellaneous = set("♩♪♫♬♭♮♯")

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    result = {encode(" -")[0], encode(" '")[0]}
    for symbol in symbols + sorted(miscellaneous):
        for tokens in (encode(symbol), encode(" " + symbol)):
            if len(tokens) == 1 or symbol in miscellaneous:
                result.add(tokens[0])
    return sorted(result)
