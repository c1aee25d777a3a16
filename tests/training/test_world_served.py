"""The trained shape-world model served by a real tritonserver draws what the in-process pipeline draws.

Runs on the cache ``make demo-trained-diffusion`` builds (trained checkpoint and its
converted model repository); skipped where that cache is absent (CI builds no
trained models: the build takes minutes).
"""

import os
from pathlib import Path

import numpy as np
import pytest

from s2i.pipeline.prompt import StyleTemplates, compose_prompt
from s2i.training.world import Scene
from s2i.training.world_detector import detect
from tests.conftest import ROOT, started_server

WORLD_DIR = Path(os.environ.get("S2I_WORLD_DIR", ROOT / "build" / "demo-trained" / "diffusion"))
REPOSITORY = WORLD_DIR / "model_repository"
CHECKPOINT = WORLD_DIR / "trained"
# Held-out captions (their colour-shape pairs never trained), at the pipeline's defaults but fewer steps.
SCENES = [
    Scene("red", "triangle", 1, "happy"),
    Scene("blue", "diamond", 2, "sad"),
    Scene("yellow", "circle", 3, "calm"),
]
STEPS = 20

pytestmark = pytest.mark.skipif(
    not (REPOSITORY / ".complete").is_file(),
    reason=f"no trained world model in {WORLD_DIR} (make demo-trained-diffusion)",
)


@pytest.fixture(scope="module")
def world_client():
    from s2i.client import Client

    with started_server(REPOSITORY, "tritonserver-world") as server, Client(server.grpc_url, timeout_s=120) as client:
        yield client


def test_served_world_images_equal_the_in_process_pipeline_when_captions_are_held_out(world_client):
    from s2i.stages.diffusion.reference import DiffusionReference

    reference = DiffusionReference(CHECKPOINT)
    templates = StyleTemplates.load()
    for seed, scene in enumerate(SCENES):
        composed = compose_prompt(scene.text, scene.emotion, templates)
        options = dict(negative_prompt=composed.negative_prompt, num_inference_steps=STEPS, seed=seed)
        served = world_client.text_to_image(composed.prompt, **options).image
        expected = reference.generate(composed.prompt, **options)
        assert served.shape == expected.shape == (32, 32, 3)
        assert int(np.abs(served.astype(np.int16) - expected.astype(np.int16)).max()) <= 1
        assert detect(served) == detect(expected)


def test_served_world_model_keeps_serving_when_a_request_is_bad(world_client):
    from s2i.client import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="height"):
        world_client.text_to_image("a red circle", height=30, num_inference_steps=2, seed=0)
    image = world_client.text_to_image("a red circle", num_inference_steps=2, seed=0).image
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
