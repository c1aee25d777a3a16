"""The Whisper stage as conversion and the tiny builder see it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from s2i import names
from s2i.conversion.repository import (
    PYTHON_ONNXRUNTIME,
    PYTHON_TORCH,
    TARGETS,
    TORCH_OPTION_DEFAULTS,
    RepositoryModel,
    device_of,
    external_data_files,
    torch_checkpoint_files,
)
from s2i.model_repository.components import OnnxComponent
from s2i.model_repository.config import ModelSpec
from s2i.model_repository.deployment import CPU, policy
from s2i.stages.base import Stage, StageExport, UnsupportedCheckpointError
from s2i.stages.whisper.decoding import DEFAULT_LANGUAGE, DecodingRules
from s2i.stages.whisper.runtime import (
    DECODER_DIR_PARAMETER,
    DECODER_FILES,
    DECODER_THREADS_PARAMETER,
    TORCH_DECODER_DEVICE_PARAMETER,
    TORCH_DECODER_PARAMETER,
)
from s2i.stages.whisper.specs import whisper_components, whisper_model_spec

# A larger init spread than transformers' 0.02 makes a random decoder's argmax
# vary from step to step, so parity tests compare varied token sequences
# instead of one repeated token.
TINY_INIT_STD = 0.3


class WhisperStage(Stage):
    """Hindi speech -> English text."""

    name = "whisper"
    order = 10
    bls_model = "whisper"
    targets = TARGETS
    # Model shape, features; the tokenizer comes as tokenizer.json or as vocab/merges files.
    required_assets = ("config.json", "preprocessor_config.json")
    optional_assets = (
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "merges.txt",
        "normalizer.json",
    )

    def check_checkpoint(self, checkpoint: Path) -> None:
        """A multilingual ``WhisperForConditionalGeneration`` with equal encoder/decoder head counts.

        Generation settings may be in any layout transformers has saved
        (:meth:`DecodingRules.from_checkpoint`).
        """
        super().check_checkpoint(checkpoint)
        config = json.loads((Path(checkpoint) / "config.json").read_text())
        if config.get("model_type") != "whisper":
            raise UnsupportedCheckpointError(
                f"`{checkpoint}` has `model_type` {config.get('model_type')!r}; the whisper stage supports "
                "Whisper checkpoints (`model_type` 'whisper': openai/whisper-*, distil-whisper, their fine-tunes)."
            )
        heads = (config.get("encoder_attention_heads"), config.get("decoder_attention_heads"))
        if heads[0] != heads[1]:
            # Optimum's exporter sizes the cross-attention cache with one head count for both.
            raise UnsupportedCheckpointError(
                f"`{checkpoint}` has {heads[0]} encoder and {heads[1]} decoder attention heads "
                "(`encoder_attention_heads` != `decoder_attention_heads`); the ONNX export supports Whisper "
                "checkpoints whose encoder and decoder have the same head count, as every released one does."
            )
        try:
            rules = DecodingRules.from_checkpoint(checkpoint)
        except (ValueError, KeyError) as error:
            raise UnsupportedCheckpointError(f"Whisper checkpoint refused: {error}") from error
        if f"<|{DEFAULT_LANGUAGE}|>" not in rules.lang_to_id:
            raise UnsupportedCheckpointError(
                f"`{checkpoint}` has no `<|{DEFAULT_LANGUAGE}|>` language token; the whisper stage serves "
                "multilingual Whisper checkpoints that know Hindi."
            )

    def build_tiny(self, output_dir: Path, size: str) -> Path:
        """A random multilingual Whisper checkpoint with the real tokenizer."""
        from s2i.stages.whisper.checkpoint import build_tiny_whisper

        # Real-size presets keep transformers' own init: a wide spread in 512-wide layers
        # drives activations far past what a trained model produces (and past fp32 export tolerance).
        init_std = TINY_INIT_STD if size == "tiny" else 0.02
        return build_tiny_whisper(output_dir, size=size, seed=0, init_std=init_std)

    def reference(self, checkpoint: Path):
        """``WhisperForConditionalGeneration.generate`` in-process (transformers)."""
        from s2i.stages.whisper.reference import WhisperReference

        return WhisperReference(checkpoint)

    def export(self, checkpoint: Path, onnx_dir: Path) -> StageExport:
        """Encoder, decoder and decoder-with-past graphs, validated."""
        from s2i.stages.whisper.export import export_whisper

        return export_whisper(checkpoint, onnx_dir)

    def describe(self, checkpoint: Path) -> list[OnnxComponent]:
        """Encoder, decoder and decoder-with-past, from ``config.json``."""
        return whisper_components(json.loads((Path(checkpoint) / "config.json").read_text()))

    def bls_spec(self, checkpoint: Path, exported: StageExport, device: str) -> ModelSpec:
        """The ``whisper`` loop model, for the encoder's mel-bin count."""
        return whisper_model_spec(exported.components[0].inputs[0].dims[0], device)

    def repository_models(self, checkpoint: Path, exported: StageExport, target: str) -> list[RepositoryModel]:
        """As every stage's, plus the decoder inside the loop model on the two Python targets.

        ``python-onnxruntime`` gets the decoder graphs, ``python-torch`` the checkpoint. The loop
        then runs the decoder in its own process with the KV cache kept where it is computed
        (:mod:`s2i.stages.whisper.runtime`). The decoder stage models stay in the repository: the
        native targets' loop and direct callers use them.
        """
        models = super().repository_models(checkpoint, exported, target)
        if target == PYTHON_ONNXRUNTIME:
            files: dict[str, Path] = {}
            for file in DECODER_FILES.values():
                graph = Path(exported.onnx_dir) / file
                files[f"decoder/{file}"] = graph
                files.update({f"decoder/{path.name}": path for path in external_data_files(graph)})
            parameters = {
                DECODER_DIR_PARAMETER: "decoder",
                DECODER_THREADS_PARAMETER: str(policy(names.WHISPER, CPU).intra_op_threads),
            }
        elif target == PYTHON_TORCH:
            files = {
                f"decoder_checkpoint/{relative}": path for relative, path in torch_checkpoint_files(checkpoint).items()
            }
            parameters = {
                TORCH_DECODER_PARAMETER: "decoder_checkpoint",
                TORCH_DECODER_DEVICE_PARAMETER: device_of(PYTHON_TORCH),
                **TORCH_OPTION_DEFAULTS,
            }
        else:
            return models
        *stage_models, loop = models
        spec = dataclasses.replace(loop.spec, parameters={**loop.spec.parameters, **parameters})
        return [*stage_models, dataclasses.replace(loop, spec=spec, files={**loop.files, **files})]
