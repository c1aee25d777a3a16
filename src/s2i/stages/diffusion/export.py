"""Export a diffusers Stable Diffusion checkpoint with Optimum and validate every served graph against PyTorch.

Optimum's UNet export takes one scalar ``timestep`` for the whole batch, so two
requests at different steps could not share a call. The UNet is exported with
:class:`BatchedTimestepUNetOnnxConfig` (one timestep per row) and its input is
then given a trailing axis, ``[batch, 1]``, because Triton requires at least one
dimension after the batch axis.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from s2i import names
from s2i.conversion.validation import GraphError, check_errors, export_once, graph_error, optimum_export
from s2i.model_repository.components import OnnxComponent
from s2i.model_repository.onnx_stage import OnnxStage
from s2i.stages.base import StageExport
from s2i.stages.diffusion.sampling import guidance_scale_embedding
from s2i.stages.diffusion.specs import diffusion_components, read_configs

LOGGER = logging.getLogger(__name__)

OPTIMUM_TASK = "text-to-image"
# Prompts of the validation: a short one, and one long enough to be truncated.
VALIDATION_PROMPTS = ("a photo of an astronaut riding a horse", "a very long prompt " * 30)


def batched_timestep_unet_config(unet_config):
    """Optimum's UNet export config with one ``timestep`` per batch row instead of one scalar."""
    from optimum.exporters.onnx.model_configs import UNetOnnxConfig
    from optimum.utils.input_generators import DummyTimestepInputGenerator

    class PerRowTimestepGenerator(DummyTimestepInputGenerator):
        def generate(self, input_name: str, framework: str = "pt", int_dtype: str = "int64", float_dtype="fp32"):
            if input_name == "timestep":
                return self.random_float_tensor(
                    [self.batch_size], max_value=self.vocab_size, framework=framework, dtype=float_dtype
                )
            return super().generate(input_name, framework, int_dtype, float_dtype)

    class BatchedTimestepUNetOnnxConfig(UNetOnnxConfig):
        DUMMY_INPUT_GENERATOR_CLASSES = tuple(
            PerRowTimestepGenerator if cls is DummyTimestepInputGenerator else cls
            for cls in UNetOnnxConfig.DUMMY_INPUT_GENERATOR_CLASSES
        )

        @property
        def inputs(self):
            inputs = super().inputs
            inputs[names.TIMESTEP] = {0: "batch_size"}
            return inputs

    return BatchedTimestepUNetOnnxConfig(unet_config, task="semantic-segmentation")


def add_timestep_axis(onnx_path: Path) -> None:
    """Make the UNet's ``timestep`` input ``[batch, 1]`` (reshaped to ``[batch]`` inside the graph)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    graph = model.graph
    (timestep,) = [node for node in graph.input if node.name == names.TIMESTEP]
    dims = timestep.type.tensor_type.shape.dim
    if len(dims) == 2:
        return
    inner = f"{names.TIMESTEP}_per_row"
    for node in graph.node:
        node.input[:] = [inner if name == names.TIMESTEP else name for name in node.input]
    shape = helper.make_tensor(f"{inner}_shape", TensorProto.INT64, [1], [-1])
    graph.initializer.append(shape)
    graph.node.insert(0, helper.make_node("Reshape", [names.TIMESTEP, shape.name], [inner], name="timestep_flatten"))
    batch = dims[0].dim_param or "batch_size"
    graph.input.remove(timestep)
    graph.input.insert(
        1, helper.make_tensor_value_info(names.TIMESTEP, timestep.type.tensor_type.elem_type, [batch, 1])
    )
    onnx.save(model, str(onnx_path))


def _unet_config(checkpoint: Path):
    """The UNet's config with the class defaults filled in, readable by attribute as Optimum expects."""
    import inspect

    from diffusers import UNet2DConditionModel
    from diffusers.configuration_utils import FrozenDict

    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(UNet2DConditionModel.__init__).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    return FrozenDict({**defaults, **UNet2DConditionModel.load_config(checkpoint / "unet")})


def export_diffusion(checkpoint: Path, onnx_dir: Path, *, validate: bool = True) -> StageExport:
    """Export text encoder, UNet and VAE decoder of ``checkpoint`` into ``onnx_dir``.

    Graphs are written once: an ``onnx_dir`` that already holds them for the
    same configs is reused (delete it to force a new export).
    """
    checkpoint, onnx_dir = Path(checkpoint), Path(onnx_dir)
    configs = read_configs(checkpoint)
    components = diffusion_components(configs)

    def export() -> None:
        optimum_export(
            checkpoint,
            onnx_dir,
            OPTIMUM_TASK,
            custom_onnx_configs={"unet": batched_timestep_unet_config(_unet_config(checkpoint))},
        )
        add_timestep_axis(onnx_dir / "unet" / "model.onnx")

    export_once(onnx_dir, configs, components, export)
    diffs = validate_diffusion_export(checkpoint, onnx_dir, components) if validate else {}
    return StageExport.validated(onnx_dir, components, diffs)


def validate_diffusion_export(
    checkpoint: Path, onnx_dir: Path, components: list[OnnxComponent]
) -> dict[str, GraphError]:
    """Run each graph and its PyTorch module on the same inputs; return each graph's errors.

    The UNet is checked on two rows at different timesteps (what batched
    requests send); the VAE decoder on non-square latents.

    Raises:
        ValidationError: A graph's difference exceeds its component's ``atol`` and ``rtol``.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    by_name = {component.model_name: component for component in components}
    stages = {name: OnnxStage(onnx_dir / component.onnx_file) for name, component in by_name.items()}
    tokenizer = CLIPTokenizer.from_pretrained(checkpoint / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(checkpoint / "text_encoder").eval()
    unet = UNet2DConditionModel.from_pretrained(checkpoint / "unet").eval()
    vae = AutoencoderKL.from_pretrained(checkpoint / "vae").eval()
    ids = tokenizer(
        list(VALIDATION_PROMPTS), padding="max_length", max_length=tokenizer.model_max_length, truncation=True
    ).input_ids
    ids = torch.tensor(ids, dtype=torch.int64)
    generator = torch.Generator().manual_seed(0)
    vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
    levels = 2 ** (len(unet.config.block_out_channels) - 1)
    height, width = 2 * levels, 3 * levels
    sample = torch.randn(2, unet.config.in_channels, height, width, generator=generator)
    timestep = torch.tensor([981.0, 1.0])
    latents = torch.randn(2, vae.config.latent_channels, height, width, generator=generator)
    unet_extra: dict[str, torch.Tensor] = {}
    if unet.config.time_cond_proj_dim is not None:
        # Two requests' embeddings: guidance 8.5 and 1.0 (w = guidance - 1).
        unet_extra[names.TIMESTEP_COND] = torch.from_numpy(
            np.concatenate([guidance_scale_embedding(w, unet.config.time_cond_proj_dim) for w in (7.5, 0.0)])
        )
    with torch.no_grad():
        hidden = text_encoder(ids).last_hidden_state
        noise = unet(sample, timestep, encoder_hidden_states=hidden, **unet_extra).sample
        image = vae.decode(latents).sample
    LOGGER.debug("validation image %s from latents of %s (VAE scale %d)", list(image.shape), [height, width], vae_scale)
    diffs = {
        names.TEXT_ENCODER: graph_error(
            hidden, stages[names.TEXT_ENCODER].run({names.INPUT_IDS: ids.numpy()})[names.LAST_HIDDEN_STATE]
        ),
        names.UNET: graph_error(
            noise,
            stages[names.UNET].run(
                {
                    names.SAMPLE: sample.numpy(),
                    names.TIMESTEP: timestep.numpy()[:, None],
                    names.ENCODER_HIDDEN_STATES: hidden.numpy(),
                    **{name: value.numpy() for name, value in unet_extra.items()},
                }
            )[names.OUT_SAMPLE],
        ),
        names.VAE_DECODER: graph_error(
            image, stages[names.VAE_DECODER].run({names.LATENT_SAMPLE: latents.numpy()})[names.SAMPLE]
        ),
    }
    return check_errors(diffs, components)
