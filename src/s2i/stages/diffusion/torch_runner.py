"""Stable Diffusion's three stage graphs run by their transformers/diffusers modules (``python-torch``).

Same tensors as the ONNX graphs (:func:`s2i.stages.diffusion.specs.diffusion_components`):

* ``text_encoder``: ``input_ids`` -> ``last_hidden_state``, ``pooler_output`` (``CLIPTextModel``);
* ``unet``: ``sample``, ``timestep`` ``[batch, 1]`` (one per row), ``encoder_hidden_states``
  and, for LCM UNets, ``timestep_cond`` -> ``out_sample`` (``UNet2DConditionModel``);
* ``vae_decoder``: ``latent_sample`` -> ``sample`` (``AutoencoderKL.decode``, unscaled latents
  in, ``[-1, 1]`` pixels out, as Optimum's graph).

Each stage model gets its part of the checkpoint (``text_encoder/``, ``unet/``, ``vae/``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from s2i import names
from s2i.errors import InvalidInputError
from s2i.stages.torch_runner import TorchStage, check_token_ids


class TextEncoderRunner(TorchStage):
    """``CLIPTextModel`` with SDPA attention."""

    input_names = (names.INPUT_IDS,)
    output_names = (names.LAST_HIDDEN_STATE, names.POOLER_OUTPUT)

    def load_model(self, checkpoint: Path):
        """The checkpoint's library model (see :meth:`TorchStage.load_model`)."""
        from transformers import CLIPTextModel

        return CLIPTextModel.from_pretrained(checkpoint, attn_implementation="sdpa")

    def adopt(self, model) -> None:
        """Keep what the graph runs, on the stage's device and dtype."""
        self.encoder = self.module(model)
        self.vocab_size = int(self.encoder.config.vocab_size)

    def check(self, inputs) -> None:
        """Refuse inputs the module cannot run on, naming the field."""
        check_token_ids(np.asarray(inputs[names.INPUT_IDS]), names.INPUT_IDS, self.vocab_size)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The graph's outputs from on-device inputs."""
        output = self.encoder(input_ids=inputs[names.INPUT_IDS], return_dict=True)
        return {names.LAST_HIDDEN_STATE: output.last_hidden_state, names.POOLER_OUTPUT: output.pooler_output}


class UNetRunner(TorchStage):
    """``UNet2DConditionModel`` with one timestep per row (requests at different steps share a call)."""

    input_names = (names.SAMPLE, names.TIMESTEP, names.ENCODER_HIDDEN_STATES, names.TIMESTEP_COND)
    output_names = (names.OUT_SAMPLE,)

    def load_model(self, checkpoint: Path):
        """The checkpoint's library model (see :meth:`TorchStage.load_model`)."""
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel.from_pretrained(checkpoint, torch_dtype=self.dtype)

    def adopt(self, model) -> None:
        """Keep what the graph runs, on the stage's device and dtype."""
        self.unet = self.module(model)
        # The latent must halve evenly at every down block.
        self.multiple = 2 ** (len(model.config.block_out_channels) - 1)
        self.guided = model.config.time_cond_proj_dim is not None
        if not self.guided:
            self.input_names = self.input_names[:3]

    def check(self, inputs) -> None:
        """Refuse inputs the module cannot run on, naming the field."""
        height, width = np.shape(inputs[names.SAMPLE])[-2:]
        if height % self.multiple or width % self.multiple:
            raise InvalidInputError(
                names.SAMPLE,
                f"latent height and width must be multiples of {self.multiple} for this UNet, got {height}x{width}.",
            )

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The graph's outputs from on-device inputs."""
        extra = {"timestep_cond": inputs[names.TIMESTEP_COND]} if self.guided else {}
        noise = self.unet(
            inputs[names.SAMPLE],
            inputs[names.TIMESTEP].reshape(-1),
            encoder_hidden_states=inputs[names.ENCODER_HIDDEN_STATES],
            return_dict=True,
            **extra,
        ).sample
        return {names.OUT_SAMPLE: noise}


class VaeDecoderRunner(TorchStage):
    """``AutoencoderKL.decode``: latents (already divided by the scaling factor) -> pixels in ``[-1, 1]``."""

    input_names = (names.LATENT_SAMPLE,)
    output_names = (names.SAMPLE,)

    def load_model(self, checkpoint: Path):
        """The checkpoint's library model (see :meth:`TorchStage.load_model`)."""
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(checkpoint, torch_dtype=self.dtype)
        # Only decoding is served: the encoder's weights are dropped.
        vae.encoder = None
        vae.quant_conv = None
        return vae

    def adopt(self, model) -> None:
        """Keep what the graph runs, on the stage's device and dtype."""
        self.vae = self.module(model)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The graph's outputs from on-device inputs."""
        return {names.SAMPLE: self.vae.decode(inputs[names.LATENT_SAMPLE], return_dict=True).sample}
