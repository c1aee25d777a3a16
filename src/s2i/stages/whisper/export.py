"""Export a Whisper checkpoint to ONNX with Optimum and validate every graph against PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

from s2i import names
from s2i.conversion.validation import GraphError, check_errors, export_once, graph_error, optimum_export, worst_error
from s2i.model_repository.components import OnnxComponent
from s2i.model_repository.onnx_stage import OnnxStage
from s2i.stages.base import StageExport
from s2i.stages.whisper.decoding import DecodingRules, past_names
from s2i.stages.whisper.specs import whisper_components

OPTIMUM_TASK = "automatic-speech-recognition-with-past"
# Optimum traces with 16 dummy tokens (past and new ones); a decoder with fewer
# positions than past + new tokens cannot trace, so those are halved to fit.
TRACE_SEQUENCE_LENGTH = 16


def export_whisper(checkpoint: Path, onnx_dir: Path, *, validate: bool = True) -> StageExport:
    """Export encoder, decoder and decoder-with-past graphs of ``checkpoint`` into ``onnx_dir``.

    Graphs are written once: an ``onnx_dir`` that already holds them for the
    same ``config.json`` is reused (delete it to force a new export).
    """
    checkpoint, onnx_dir = Path(checkpoint), Path(onnx_dir)
    config = json.loads((checkpoint / "config.json").read_text())
    components = whisper_components(config)

    def export() -> None:
        optimum_export(
            checkpoint,
            onnx_dir,
            OPTIMUM_TASK,
            sequence_length=max(1, min(TRACE_SEQUENCE_LENGTH, int(config["max_target_positions"]) // 2 - 1)),
        )

    export_once(onnx_dir, config, components, export)
    diffs = validate_whisper_export(checkpoint, onnx_dir, components) if validate else {}
    return StageExport.validated(onnx_dir, components, diffs)


def validate_whisper_export(checkpoint: Path, onnx_dir: Path, components: list[OnnxComponent]) -> dict[str, GraphError]:
    """Run each graph and the PyTorch model on the same inputs; return each graph's errors.

    Raises:
        ValidationError: A graph's difference exceeds its component's ``atol`` and ``rtol``.
    """
    import torch
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(checkpoint).eval()
    rules = DecodingRules.from_checkpoint(checkpoint)
    layers = model.config.decoder_layers
    by_name = {component.model_name: component for component in components}
    stages = {name: OnnxStage(onnx_dir / component.onnx_file) for name, component in by_name.items()}
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, model.config.num_mel_bins, 3000, generator=generator)
    prompt = torch.tensor([rules.prompt("hi", "translate"), rules.prompt("hi", "transcribe")])
    next_token = torch.tensor([[440], [1000]])
    with torch.no_grad():
        encoder_out = model.model.encoder(features)
        first = model(encoder_outputs=encoder_out, decoder_input_ids=prompt, use_cache=True)
        # The cache object grows in place on the next call: keep a copy of this step's.
        first_cache = [[t.clone() for t in layer] for layer in first.past_key_values.to_legacy_cache()]
        second = model(
            encoder_outputs=encoder_out,
            decoder_input_ids=next_token,
            past_key_values=first.past_key_values,
            use_cache=True,
        )
    second_cache = second.past_key_values.to_legacy_cache()

    def cache_tensor(cache, name: str):
        _, layer, part, kind = name.split(".")
        return cache[int(layer)][(0 if part == "decoder" else 2) + (0 if kind == "key" else 1)]

    diffs: dict[str, GraphError] = {}
    encoder = stages[names.WHISPER_ENCODER].run({names.INPUT_FEATURES: features.numpy()})
    diffs[names.WHISPER_ENCODER] = graph_error(encoder_out.last_hidden_state, encoder[names.LAST_HIDDEN_STATE])

    decoder = stages[names.WHISPER_DECODER].run(
        {names.INPUT_IDS: prompt.numpy(), names.ENCODER_HIDDEN_STATES: encoder_out.last_hidden_state.numpy()}
    )
    present_all = past_names(layers, prefix="present", include_encoder=True)
    diffs[names.WHISPER_DECODER] = worst_error(
        [graph_error(first.logits, decoder[names.LOGITS])]
        + [graph_error(cache_tensor(first_cache, name), decoder[name]) for name in present_all]
    )

    past = {name.replace("present", "past_key_values"): cache_tensor(first_cache, name).numpy() for name in present_all}
    with_past = stages[names.WHISPER_DECODER_WITH_PAST].run({names.INPUT_IDS: next_token.numpy(), **past})
    diffs[names.WHISPER_DECODER_WITH_PAST] = worst_error(
        [graph_error(second.logits, with_past[names.LOGITS])]
        + [
            graph_error(cache_tensor(second_cache, name), with_past[name])
            for name in past_names(layers, prefix="present", include_encoder=False)
        ]
    )
    return check_errors(diffs, components)
