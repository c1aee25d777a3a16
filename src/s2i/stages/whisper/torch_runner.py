"""Whisper's three stage graphs run by transformers' ``WhisperForConditionalGeneration`` (``python-torch``).

Same tensors as Optimum's ONNX graphs (:func:`s2i.stages.whisper.specs.whisper_components`):

* ``whisper_encoder``: ``input_features`` -> ``last_hidden_state``;
* ``whisper_decoder``: ``input_ids`` + ``encoder_hidden_states`` -> ``logits`` and
  ``present.<layer>.{decoder,encoder}.{key,value}``;
* ``whisper_decoder_with_past``: ``input_ids`` + ``past_key_values.*`` (self- and
  cross-attention) -> ``logits`` and ``present.<layer>.decoder.*``.

The cache tensors are transformers' own layout (``[batch, heads, positions, head_dim]``),
which is the layout Optimum exports, so the loop in :mod:`s2i.stages.whisper.decoding`
hands them from step to step unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from s2i import names
from s2i.errors import InvalidInputError
from s2i.stages.torch_runner import TorchOptions, TorchStage, check_token_ids
from s2i.stages.whisper.decoding import past_names


def load_whisper(checkpoint: Path):
    """The checkpoint's ``WhisperForConditionalGeneration`` with SDPA attention, on the CPU in float32."""
    from transformers import WhisperForConditionalGeneration

    return WhisperForConditionalGeneration.from_pretrained(checkpoint, attn_implementation="sdpa")


def _layer_tensors(cache, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys, values) of one layer of a transformers ``DynamicCache`` (4.56+ layers, or older lists)."""
    if hasattr(cache, "layers"):
        return cache.layers[layer].keys, cache.layers[layer].values
    return cache.key_cache[layer], cache.value_cache[layer]


class _WhisperDecoderBase(TorchStage):
    """The decoder and the LM head, and the KV cache converted to and from Optimum's tensor names."""

    def load_model(self, checkpoint: Path):
        """The checkpoint's library model (see :meth:`TorchStage.load_model`)."""
        return load_whisper(checkpoint)

    def adopt(self, model) -> None:
        """Keep what the graph runs, on the stage's device and dtype."""
        self.decoder = self.module(model.model.decoder)
        self.proj_out = self.module(model.proj_out)
        config = model.config
        self.num_layers = int(config.decoder_layers)
        self.d_model = int(config.d_model)
        self.vocab_size = int(config.vocab_size)
        self.max_positions = int(config.max_target_positions)
        self.input_names, self.output_names = self.tensor_names()

    def tensor_names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(inputs, outputs) of the graph."""
        raise NotImplementedError

    def step(self, input_ids: torch.Tensor, encoder_hidden_states: torch.Tensor, cache) -> dict[str, torch.Tensor]:
        """Run the decoder on ``input_ids`` with ``cache``; logits and the updated cache by name."""
        hidden = self.decoder(
            input_ids=input_ids,
            encoder_hidden_states=encoder_hidden_states,
            past_key_values=cache,
            use_cache=True,
            return_dict=True,
        ).last_hidden_state
        outputs = {names.LOGITS: self.proj_out(hidden)}
        for layer in range(self.num_layers):
            parts = [("decoder", cache.self_attention_cache)]
            if names.ENCODER_HIDDEN_STATES in self.input_names:
                parts.append(("encoder", cache.cross_attention_cache))
            for part, part_cache in parts:
                keys, values = _layer_tensors(part_cache, layer)
                outputs[f"present.{layer}.{part}.key"] = keys
                outputs[f"present.{layer}.{part}.value"] = values
        return outputs

    def check_ids(self, inputs, past_length: int = 0) -> None:
        """Token ids in the vocabulary, and no more positions than the decoder has."""
        ids = np.asarray(inputs[names.INPUT_IDS])
        check_token_ids(ids, names.INPUT_IDS, self.vocab_size)
        if past_length + ids.shape[-1] > self.max_positions:
            raise InvalidInputError(
                names.INPUT_IDS,
                f"{past_length} cached + {ids.shape[-1]} new positions exceed this decoder's {self.max_positions}.",
            )


class WhisperEncoderRunner(TorchStage):
    """``whisper_encoder``: log-mel features ``[batch, n_mels, 3000]`` -> ``last_hidden_state``."""

    input_names = (names.INPUT_FEATURES,)
    output_names = (names.LAST_HIDDEN_STATE,)

    def load_model(self, checkpoint: Path):
        """The checkpoint's library model (see :meth:`TorchStage.load_model`)."""
        return load_whisper(checkpoint)

    def adopt(self, model) -> None:
        """Keep what the graph runs, on the stage's device and dtype."""
        # Only the encoder stays: the decoder's weights are freed with the rest of the model.
        self.encoder = self.module(model.model.encoder)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The graph's outputs from on-device inputs."""
        hidden = self.encoder(inputs[names.INPUT_FEATURES], return_dict=True).last_hidden_state
        return {names.LAST_HIDDEN_STATE: hidden}


class WhisperDecoderRunner(_WhisperDecoderBase):
    """``whisper_decoder``: the prompt's step; returns every position's logits and the whole cache."""

    def tensor_names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(inputs, outputs) of the graph, for this checkpoint's layer count."""
        present = past_names(self.num_layers, prefix="present", include_encoder=True)
        return (names.INPUT_IDS, names.ENCODER_HIDDEN_STATES), (names.LOGITS, *present)

    def check(self, inputs) -> None:
        """Refuse inputs the module cannot run on, naming the field."""
        self.check_ids(inputs)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The graph's outputs from on-device inputs."""
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        return self.step(inputs[names.INPUT_IDS], inputs[names.ENCODER_HIDDEN_STATES], cache)


class WhisperDecoderWithPastRunner(_WhisperDecoderBase):
    """``whisper_decoder_with_past``: one token per sequence on the cache of the steps before."""

    def tensor_names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(inputs, outputs) of the graph, for this checkpoint's layer count."""
        past = past_names(self.num_layers, prefix="past_key_values", include_encoder=True)
        present = past_names(self.num_layers, prefix="present", include_encoder=False)
        return (names.INPUT_IDS, *past), (names.LOGITS, *present)

    def check(self, inputs) -> None:
        """Refuse inputs the module cannot run on, naming the field."""
        first = inputs["past_key_values.0.decoder.key"]
        lengths = {np.shape(inputs[name])[2] for name in self.input_names if ".decoder." in name}
        if len(lengths) != 1:
            raise InvalidInputError(
                "past_key_values.0.decoder.key", f"cache layers differ in length: {sorted(lengths)}."
            )
        self.check_ids(inputs, past_length=np.shape(first)[2])

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The graph's outputs from on-device inputs."""
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        own, cross = DynamicCache(), DynamicCache()
        for layer in range(self.num_layers):
            prefix = f"past_key_values.{layer}"
            own.update(inputs[f"{prefix}.decoder.key"], inputs[f"{prefix}.decoder.value"], layer)
            cross.update(inputs[f"{prefix}.encoder.key"], inputs[f"{prefix}.encoder.value"], layer)
        cache = EncoderDecoderCache(own, cross)
        ids = inputs[names.INPUT_IDS]
        # Cross-attention reads its keys and values from the cache; the decoder only needs to
        # see that encoder states exist, so one position stands in for the 1500.
        stand_in = torch.zeros(ids.shape[0], 1, self.d_model, device=ids.device, dtype=self.dtype)
        return self.step(ids, stand_in, cache)


class InProcessTorchDecoder:
    """``whisper_decoder`` and ``whisper_decoder_with_past`` in the ``whisper`` loop's process (``python-torch``).

    :meth:`run_stage` is a :data:`~s2i.stages.runner.StageRunner` for the two decoder graphs,
    with the contract of :class:`s2i.stages.whisper.runtime.InProcessDecoder`: ``present.*``
    come back as torch tensors left on the runner's device and go into the next step as they
    are; ``logits`` come back as a float32 numpy array of the last position only. One copy
    of the weights serves both graphs.
    """

    def __init__(self, checkpoint: Path, options: TorchOptions) -> None:
        model = load_whisper(checkpoint)
        self.runners: dict[str, _WhisperDecoderBase] = {
            names.WHISPER_DECODER: WhisperDecoderRunner(model=model, options=options),
            names.WHISPER_DECODER_WITH_PAST: WhisperDecoderWithPastRunner(model=model, options=options),
        }

    def run_stage(self, model_name: str, inputs, output_names) -> dict[str, object]:
        """Run one decoder step with the cache kept on the device."""
        runner = self.runners[model_name]
        runner.check(inputs)
        outputs = runner.run_torch(inputs)
        result: dict[str, object] = {name: outputs[name] for name in output_names if name != names.LOGITS}
        if names.LOGITS in output_names:
            result[names.LOGITS] = outputs[names.LOGITS][:, -1:, :].float().cpu().numpy()
        return result
