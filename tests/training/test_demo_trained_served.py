"""The main job on the trained models (``make demo-trained``) served by tritonserver equals the in-process pipeline.

Runs on the repository ``make demo-trained-job`` converts from the fine-tuned Whisper,
the trained emotion classifier and the trained shape-world model (folders under
``S2I_TRAINED_DIR``, default ``build/demo-trained``); skipped where that cache is
absent (CI builds no trained models: the build takes about 45 minutes).
"""

import os
from pathlib import Path

import numpy as np
import pytest

from s2i.pipeline.steps import decode_png
from s2i.speech import speak
from tests.conftest import ROOT, started_server

TRAINED_DIR = Path(os.environ.get("S2I_TRAINED_DIR", ROOT / "build" / "demo-trained"))
CHECKPOINTS = {
    "whisper": TRAINED_DIR / "whisper-hindi",
    "emotion": TRAINED_DIR / "emotion" / "classifier",
    "diffusion": TRAINED_DIR / "diffusion" / "trained",
}
REPOSITORY = TRAINED_DIR / "serve" / "model_repository"
# Held-out scenes (purple squares and blue diamonds never trained either model), spoken strongly with an emotion.
CLIPS = [("तीन बैंगनी वर्ग", "angry"), ("दो नीले हीरे", "sad")]
OPTIONS = dict(num_inference_steps=20, return_transcript=True, max_new_tokens=48)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not REPOSITORY.is_dir() or not all(path.is_dir() for path in CHECKPOINTS.values()),
        reason=f"no trained models and repository in {TRAINED_DIR} (make demo-trained-job)",
    ),
]


@pytest.fixture(scope="module")
def trained_client():
    from s2i.client import Client

    with (
        started_server(REPOSITORY, "tritonserver-demo-trained") as server,
        Client(server.grpc_url, timeout_s=300) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def reference():
    from s2i.pipeline.reference import ReferencePipeline

    return ReferencePipeline(CHECKPOINTS)


@pytest.mark.parametrize(("sentence", "emotion"), CLIPS)
def test_trained_main_job_equals_the_in_process_pipeline_when_served(
    trained_client, reference, tmp_path, sentence, emotion
):
    wav = speak(sentence, tmp_path / "clip.wav", emotion=emotion, strong=True).read_bytes()
    served = trained_client.speech_to_image(wav, seed=5, **OPTIONS)
    expected = reference.run(wav, seed=5, **OPTIONS)
    assert served.text == expected.text and served.transcript == expected.transcript
    assert served.detected_emotion == expected.detected_emotion and served.emotion == expected.emotion
    assert served.prompt == expected.prompt and served.negative_prompt == expected.negative_prompt
    for label, probability in expected.emotion_scores.items():
        assert served.emotion_scores[label] == pytest.approx(probability, abs=1e-4)
    served_pixels, expected_pixels = decode_png(served.png).astype(int), decode_png(expected.png).astype(int)
    assert served_pixels.shape == expected_pixels.shape == (32, 32, 3)
    assert np.abs(served_pixels - expected_pixels).max() <= 1
    # The fine-tuned Whisper answers in English (the untrained base rambles in romanised Hindi).
    letters = [c for c in served.text if c.isalpha()]
    assert letters and all(c.isascii() for c in letters), served.text
