"""Whisper inference on exported stage graphs: log-mel features, encoder, greedy decoding with KV cache.

The loop follows ``WhisperForConditionalGeneration.generate`` for short-form,
greedy, no-timestamp decoding, so token ids match it on the same weights:

* the decoder prompt is ``<|startoftranscript|> <|lang|> <|task|> <|notimestamps|>``;
* ``suppress_tokens`` are masked at every step, ``begin_suppress_tokens`` at the
  first generated token;
* decoding stops at ``<|endoftext|>`` (kept in the output, as ``generate`` does)
  or after ``max_new_tokens`` / the model's ``max_target_positions``.

Stage graphs are reached through a :data:`StageRunner`, so the same code runs
inside Triton (BLS calls to stage models) and in tests (ONNX Runtime sessions).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from s2i import names
from s2i.errors import InvalidInputError, RequestCancelledError, check_finite, shown
from s2i.stages.runner import Cancelled, StageRunner

TASKS = ("translate", "transcribe")
DEFAULT_TASK = "translate"
DEFAULT_LANGUAGE = "hi"
DEFAULT_MAX_NEW_TOKENS = 128


def past_names(num_layers: int, *, prefix: str, include_encoder: bool) -> list[str]:
    """KV-cache tensor names as Optimum's exporter writes them (``present.0.decoder.key``, …)."""
    parts = ("decoder", "encoder") if include_encoder else ("decoder",)
    return [
        f"{prefix}.{layer}.{part}.{kind}" for layer in range(num_layers) for part in parts for kind in ("key", "value")
    ]


@dataclasses.dataclass(frozen=True)
class DecodingRules:
    """The parts of a checkpoint's generation settings greedy decoding obeys."""

    decoder_start_token_id: int
    eos_token_id: int
    no_timestamps_token_id: int
    suppress_tokens: tuple[int, ...]
    begin_suppress_tokens: tuple[int, ...]
    lang_to_id: Mapping[str, int]
    task_to_id: Mapping[str, int]
    max_target_positions: int

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: Path) -> DecodingRules:
        """Read the rules of a Whisper checkpoint, in the current or an older transformers layout.

        Current checkpoints keep them in ``generation_config.json``. Fine-tunes saved by
        older transformers versions keep them in ``config.json`` (no generation config)
        or only as ``forced_decoder_ids`` (no ``lang_to_id``/``task_to_id``); their
        language, task and ``<|notimestamps|>`` ids then come from the tokenizer.

        Raises:
            ValueError: Naming what is missing, when the checkpoint cannot translate or transcribe
                multilingual speech (an English-only tokenizer, no tokenizer files).
        """
        checkpoint_dir = Path(checkpoint_dir)
        config = json.loads((checkpoint_dir / "config.json").read_text())
        generation_file = checkpoint_dir / "generation_config.json"
        generation = json.loads(generation_file.read_text()) if generation_file.is_file() else {}

        def setting(key: str, default=None):
            # generation_config.json wins; config.json held the same keys before it existed.
            value = generation.get(key)
            return config.get(key, default) if value is None else value

        if all(key in generation for key in ("lang_to_id", "task_to_id", "no_timestamps_token_id")):
            lang_to_id, task_to_id = dict(generation["lang_to_id"]), dict(generation["task_to_id"])
            no_timestamps = int(generation["no_timestamps_token_id"])
        else:
            lang_to_id, task_to_id, no_timestamps = _prompt_ids_from_tokenizer(checkpoint_dir)
        eos = setting("eos_token_id")
        start = setting("decoder_start_token_id")
        missing = [key for key, value in (("eos_token_id", eos), ("decoder_start_token_id", start)) if value is None]
        if missing:
            raise ValueError(f"`{checkpoint_dir}` sets none of {missing} in config.json or generation_config.json.")
        return cls(
            decoder_start_token_id=int(start),
            eos_token_id=int(eos[0] if isinstance(eos, list) else eos),
            no_timestamps_token_id=no_timestamps,
            suppress_tokens=tuple(setting("suppress_tokens") or ()),
            begin_suppress_tokens=tuple(setting("begin_suppress_tokens") or ()),
            lang_to_id=lang_to_id,
            task_to_id=task_to_id,
            max_target_positions=int(config["max_target_positions"]),
        )

    def prompt(self, language: str, task: str) -> list[int]:
        """The forced decoder prompt for ``language`` (``"hi"``) and ``task``."""
        if task not in TASKS:
            raise InvalidInputError(names.TASK, f"must be one of {list(TASKS)}, got {shown(task)}.")
        language_token = f"<|{language}|>"
        if language_token not in self.lang_to_id:
            codes = sorted(token.strip("<|>") for token in self.lang_to_id)
            raise InvalidInputError(
                names.LANGUAGE, f"{shown(language)} is not a language of this model; use one of {codes}."
            )
        return [
            self.decoder_start_token_id,
            self.lang_to_id[language_token],
            self.task_to_id[task],
            self.no_timestamps_token_id,
        ]

    def max_new_tokens_limit(self, prompt_length: int = 4) -> int:
        """The most tokens a request may ask for: the decoder's positions minus the prompt."""
        return self.max_target_positions - prompt_length

    def default_max_new_tokens(self, prompt_length: int = 4) -> int:
        """The limit of a request that names none: :data:`DEFAULT_MAX_NEW_TOKENS`, clamped to the checkpoint.

        A checkpoint with few decoder positions would otherwise refuse every
        request without ``max_new_tokens``; ``generate`` stops at the limit too.
        """
        return min(DEFAULT_MAX_NEW_TOKENS, self.max_new_tokens_limit(prompt_length))


def _prompt_ids_from_tokenizer(checkpoint_dir: Path) -> tuple[dict[str, int], dict[str, int], int]:
    """``lang_to_id``, ``task_to_id`` and ``<|notimestamps|>`` from a multilingual Whisper tokenizer.

    Every multilingual Whisper vocabulary puts the language tokens between
    ``<|startoftranscript|>`` and ``<|translate|>`` (99 of them, 100 from v3 on).
    """
    from transformers import WhisperTokenizerFast

    tokenizer_files = ("tokenizer.json", "vocab.json")
    if not any((checkpoint_dir / name).is_file() for name in tokenizer_files):
        raise ValueError(
            f"`{checkpoint_dir}` has neither `lang_to_id`/`task_to_id` in generation_config.json nor a tokenizer "
            f"({' or '.join(tokenizer_files)}) to derive the language and task tokens from."
        )
    tokenizer = WhisperTokenizerFast.from_pretrained(checkpoint_dir)
    vocabulary = tokenizer.get_vocab()
    needed = ("<|startoftranscript|>", "<|translate|>", "<|transcribe|>", "<|notimestamps|>")
    missing = [token for token in needed if token not in vocabulary]
    if missing:
        raise ValueError(
            f"The tokenizer of `{checkpoint_dir}` lacks {missing}: it is not a multilingual Whisper checkpoint "
            "(English-only models cannot translate Hindi)."
        )
    first, last = vocabulary["<|startoftranscript|>"] + 1, vocabulary["<|translate|>"]
    lang_to_id = {token: index for index in range(first, last) if (token := tokenizer.convert_ids_to_tokens(index))}
    task_to_id = {"translate": vocabulary["<|translate|>"], "transcribe": vocabulary["<|transcribe|>"]}
    return lang_to_id, task_to_id, vocabulary["<|notimestamps|>"]


def greedy_decode(
    encoder_hidden_states: np.ndarray,
    prompts: np.ndarray,
    max_new_tokens: Sequence[int],
    rules: DecodingRules,
    run_stage: StageRunner,
    num_layers: int,
    cancelled: Cancelled | None = None,
) -> list[list[int]]:
    """Decode a batch greedily, reusing the KV cache between steps.

    Args:
        encoder_hidden_states: ``[batch, frames, d_model]`` from the encoder.
        prompts: ``[batch, prompt_length]`` forced decoder prompts (same length for all).
        max_new_tokens: Per-sequence limit of generated tokens.
        rules: Token rules of the checkpoint.
        run_stage: Runs ``whisper_decoder`` / ``whisper_decoder_with_past``.
        num_layers: Decoder layers (number of KV-cache pairs).
        cancelled: Asked at every step for each unfinished sequence; a cancelled one stops there
            (its ids so far are returned; the caller answers it as cancelled).

    Returns:
        The generated ids of each sequence, ending with ``<|endoftext|>`` when it was produced.
    """
    batch = prompts.shape[0]
    present_all = past_names(num_layers, prefix="present", include_encoder=True)
    present_decoder = past_names(num_layers, prefix="present", include_encoder=False)
    outputs = run_stage(
        names.WHISPER_DECODER,
        {names.INPUT_IDS: prompts.astype(np.int64), names.ENCODER_HIDDEN_STATES: encoder_hidden_states},
        [names.LOGITS, *present_all],
    )
    past = {name.replace("present", "past_key_values", 1): outputs[name] for name in present_all}
    suppress = np.asarray(rules.suppress_tokens, dtype=np.int64)
    begin_suppress = np.asarray(rules.begin_suppress_tokens, dtype=np.int64)
    limits = np.minimum(np.asarray(max_new_tokens), rules.max_target_positions - prompts.shape[1])
    generated: list[list[int]] = [[] for _ in range(batch)]
    finished = np.zeros(batch, dtype=bool)
    step = 0
    while True:
        scores = np.array(outputs[names.LOGITS][:, -1, :], dtype=np.float32)
        scores[:, suppress] = -np.inf
        if step == 0:
            scores[:, begin_suppress] = -np.inf
        next_tokens = scores.argmax(axis=-1)
        for index in np.flatnonzero(~finished):
            generated[index].append(int(next_tokens[index]))
        finished |= next_tokens == rules.eos_token_id
        step += 1
        finished |= step >= limits
        if cancelled is not None:
            for index in np.flatnonzero(~finished):
                finished[index] = cancelled(int(index))
        if finished.all():
            return generated
        # Finished sequences keep feeding <|endoftext|> (the pad token), as generate does.
        next_tokens = np.where(finished, rules.eos_token_id, next_tokens)
        outputs = run_stage(
            names.WHISPER_DECODER_WITH_PAST,
            {names.INPUT_IDS: next_tokens[:, None].astype(np.int64), **past},
            [names.LOGITS, *present_decoder],
        )
        for name in present_decoder:
            past[name.replace("present", "past_key_values", 1)] = outputs[name]


@dataclasses.dataclass(frozen=True)
class TranscriptionRequest:
    """One clip and what to do with it.

    Attributes:
        samples: Checked 16 kHz mono samples, or ``None`` when ``features`` are given.
        max_new_tokens: Limit of generated tokens, or ``None`` for the checkpoint's default
            (:meth:`DecodingRules.default_max_new_tokens`).
        features: Log-mel features ``[n_mels, 3000]`` computed elsewhere (the pipeline's
            ``preprocess``), or ``None`` to compute them from ``samples``.
    """

    samples: np.ndarray | None
    task: str = DEFAULT_TASK
    language: str = DEFAULT_LANGUAGE
    max_new_tokens: int | None = None
    features: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Transcription:
    """What Whisper made of one clip."""

    token_ids: list[int]
    text: str


class WhisperRunner:
    """Features, encoder and decoding for a batch of clips, on any :data:`StageRunner`."""

    def __init__(self, checkpoint_dir: Path, run_stage: StageRunner) -> None:
        from transformers import WhisperFeatureExtractor, WhisperTokenizerFast

        checkpoint_dir = Path(checkpoint_dir)
        self.rules = DecodingRules.from_checkpoint(checkpoint_dir)
        config = json.loads((checkpoint_dir / "config.json").read_text())
        self.num_layers = int(config["decoder_layers"])
        self.feature_extractor = WhisperFeatureExtractor.from_pretrained(checkpoint_dir)
        self.tokenizer = WhisperTokenizerFast.from_pretrained(checkpoint_dir)
        self.run_stage = run_stage

    def check(self, request: TranscriptionRequest) -> list[int]:
        """Validate a request's options (and features, when given); return its decoder prompt."""
        if request.features is not None:
            expected = (self.feature_extractor.feature_size, self.feature_extractor.nb_max_frames)
            if request.features.shape != expected or request.features.dtype != np.float32:
                raise InvalidInputError(
                    names.INPUT_FEATURES,
                    f"must be float32 of shape {list(expected)} (log-mel, padded to 30 s), "
                    f"got {request.features.dtype} {list(request.features.shape)}.",
                )
            check_finite(request.features, names.INPUT_FEATURES)
        limit = self.rules.max_new_tokens_limit()
        if request.max_new_tokens is not None and not 1 <= request.max_new_tokens <= limit:
            raise InvalidInputError(
                names.MAX_NEW_TOKENS,
                f"must be between 1 and {limit} (this model's {self.rules.max_target_positions} decoder positions "
                f"minus the 4-token prompt), got {request.max_new_tokens}.",
            )
        return self.rules.prompt(request.language, request.task)

    def max_new_tokens(self, request: TranscriptionRequest) -> int:
        """The request's token limit: its own, or the checkpoint's default."""
        if request.max_new_tokens is None:
            return self.rules.default_max_new_tokens()
        return request.max_new_tokens

    def features(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """Log-mel features ``[batch, n_mels, 3000]``, padded to Whisper's 30 s window."""
        return self.feature_extractor(
            list(clips), sampling_rate=self.feature_extractor.sampling_rate, return_tensors="np"
        ).input_features.astype(np.float32)

    def encode(self, features: np.ndarray) -> np.ndarray:
        """Run the encoder stage."""
        outputs = self.run_stage(names.WHISPER_ENCODER, {names.INPUT_FEATURES: features}, [names.LAST_HIDDEN_STATE])
        return outputs[names.LAST_HIDDEN_STATE]

    def transcribe(
        self, requests: Sequence[TranscriptionRequest], cancelled: Cancelled | None = None
    ) -> list[Transcription | RequestCancelledError]:
        """Transcribe or translate a batch of checked requests.

        Args:
            requests: The requests.
            cancelled: Asked per request at every decoding step; a cancelled request's result is a
                :class:`~s2i.audio.RequestCancelledError` (the others are unaffected).
        """
        prompts = np.asarray([self.check(request) for request in requests], dtype=np.int64)
        to_compute = [request.samples for request in requests if request.features is None]
        computed = iter(self.features(to_compute) if to_compute else [])
        features = np.stack(
            [request.features if request.features is not None else next(computed) for request in requests]
        )
        hidden = self.encode(features)
        token_ids = greedy_decode(
            hidden,
            prompts,
            [self.max_new_tokens(request) for request in requests],
            self.rules,
            self.run_stage,
            self.num_layers,
            cancelled,
        )
        return [
            RequestCancelledError()
            if cancelled is not None and cancelled(index)
            else Transcription(token_ids=ids, text=self.tokenizer.decode(ids, skip_special_tokens=True).strip())
            for index, ids in enumerate(token_ids)
        ]
