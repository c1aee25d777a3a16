"""Deterministic, randomly initialised Whisper checkpoints in the Hugging Face layout.

They are real ``WhisperForConditionalGeneration`` checkpoints (config,
safetensors, generation config, feature extractor, tokenizer) that take exactly
the path a fine-tuned ``openai/whisper-*`` checkpoint takes; only the weights
are random and the dimensions small.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from s2i.stages.whisper.tokenizer_files import NUM_LANGUAGES, build_whisper_tokenizer, non_speech_tokens, special_tokens

LOGGER = logging.getLogger(__name__)

MAX_TARGET_POSITIONS = 448


@dataclasses.dataclass(frozen=True)
class WhisperSize:
    """Architecture of a generated checkpoint."""

    d_model: int
    encoder_layers: int
    decoder_layers: int
    attention_heads: int
    ffn_dim: int
    num_mel_bins: int = 80


# `tiny` keeps tests fast; `base` has openai/whisper-base's dimensions so CPU
# timings reflect real compute.
WHISPER_SIZES = {
    "tiny": WhisperSize(d_model=64, encoder_layers=2, decoder_layers=2, attention_heads=4, ffn_dim=128),
    "base": WhisperSize(d_model=512, encoder_layers=6, decoder_layers=6, attention_heads=8, ffn_dim=2048),
    "small": WhisperSize(d_model=768, encoder_layers=12, decoder_layers=12, attention_heads=12, ffn_dim=3072),
}


def whisper_generation_config(
    tokenizer,
    suppress_timestamps: bool = True,
    max_target_positions: int = MAX_TARGET_POSITIONS,
    num_languages: int = NUM_LANGUAGES,
):
    """The generation config released multilingual checkpoints carry, from the tokenizer's ids.

    Args:
        tokenizer: The multilingual Whisper tokenizer.
        suppress_timestamps: Also suppress the timestamp tokens (see below).
        max_target_positions: The decoder's positions (``max_length``, as released checkpoints set it).
        num_languages: 99 (v1/v2 checkpoints) or 100 (v3, with Cantonese).
    """
    from transformers import GenerationConfig

    ids = tokenizer.convert_tokens_to_ids
    # special_tokens(): <|endoftext|>, <|startoftranscript|>, the languages, then 6 task/control tokens.
    lang_to_id = {token: ids(token) for token in special_tokens(num_languages)[2:-6]}
    eot = ids("<|endoftext|>")
    suppress = non_speech_tokens(tokenizer) + [
        ids(token) for token in ("<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>")
    ]
    if suppress_timestamps:
        # A trained model never emits timestamps after <|notimestamps|>; a random one
        # does, and a pair of them makes `generate` re-decode from that time (its
        # long-form "seek"), which single-window serving does not do.
        suppress += list(range(ids("<|0.00|>"), len(tokenizer)))
    return GenerationConfig(
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        decoder_start_token_id=ids("<|startoftranscript|>"),
        max_length=max_target_positions,
        begin_suppress_tokens=[tokenizer.encode(" ", add_special_tokens=False)[0], eot],
        suppress_tokens=sorted(set(suppress)),
        lang_to_id=lang_to_id,
        task_to_id={"translate": ids("<|translate|>"), "transcribe": ids("<|transcribe|>")},
        no_timestamps_token_id=ids("<|notimestamps|>"),
        prev_sot_token_id=ids("<|startofprev|>"),
        is_multilingual=True,
        max_initial_timestamp_index=50,
        return_timestamps=False,
    )


def build_tiny_whisper(
    output_dir: Path,
    size: str = "tiny",
    seed: int = 0,
    init_std: float = 0.02,
    *,
    max_target_positions: int = MAX_TARGET_POSITIONS,
    dims: WhisperSize | None = None,
    num_languages: int = NUM_LANGUAGES,
) -> Path:
    """Write a random ``WhisperForConditionalGeneration`` checkpoint into ``output_dir``.

    Args:
        output_dir: Destination folder (created).
        size: A key of :data:`WHISPER_SIZES`.
        seed: Seed of the weight initialisation; the same seed gives the same bytes.
        init_std: Standard deviation of the random weights.
        max_target_positions: Decoder positions (448 in every released checkpoint; fewer
            to test limits derived from the checkpoint).
        dims: Dimensions instead of the preset ``size``'s (a released family's ratios, scaled down).
        num_languages: 99 (v1/v2: 51865 tokens) or 100 (large-v3 and its turbo/distil: 51866 tokens).

    Returns:
        ``output_dir``.
    """
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    if dims is None and size not in WHISPER_SIZES:
        raise ValueError(f"`size` must be one of {sorted(WHISPER_SIZES)}, got {size!r}.")
    dims = dims or WHISPER_SIZES[size]
    output_dir = Path(output_dir)
    tokenizer = build_whisper_tokenizer(output_dir, num_languages)
    generation_config = whisper_generation_config(
        tokenizer, max_target_positions=max_target_positions, num_languages=num_languages
    )
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=dims.num_mel_bins,
        d_model=dims.d_model,
        encoder_layers=dims.encoder_layers,
        decoder_layers=dims.decoder_layers,
        encoder_attention_heads=dims.attention_heads,
        decoder_attention_heads=dims.attention_heads,
        encoder_ffn_dim=dims.ffn_dim,
        decoder_ffn_dim=dims.ffn_dim,
        max_source_positions=1500,
        max_target_positions=max_target_positions,
        pad_token_id=generation_config.pad_token_id,
        bos_token_id=generation_config.bos_token_id,
        eos_token_id=generation_config.eos_token_id,
        decoder_start_token_id=generation_config.decoder_start_token_id,
        init_std=init_std,
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = generation_config
    model.save_pretrained(output_dir, safe_serialization=True)
    WhisperFeatureExtractor(feature_size=dims.num_mel_bins).save_pretrained(output_dir)
    LOGGER.info("Wrote %s Whisper checkpoint to %s", size, output_dir)
    return output_dir
