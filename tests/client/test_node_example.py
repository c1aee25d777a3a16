"""The Node example (client/examples/node) against the real server: the values the Python client gets.

It installs its pinned @grpc/grpc-js and @grpc/proto-loader with `npm ci`, and loads Triton's gRPC
descriptors that `s2i contract --descriptor-set` writes from the installed tritonclient.
"""

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from s2i.contract import descriptor_set

EXAMPLE = Path(__file__).resolve().parents[2] / "client" / "examples" / "node"
OPTIONS = dict(seed=5, num_inference_steps=3, max_new_tokens=8)


@pytest.fixture(scope="module")
def node_example(tmp_path_factory) -> tuple[str, Path]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("`node` and `npm` are needed; scripts/install-system-deps.sh installs them")
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=EXAMPLE, check=True, timeout=600, capture_output=True)
    descriptors = tmp_path_factory.mktemp("node") / "triton.pb"
    descriptors.write_bytes(descriptor_set())
    return node, descriptors


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_node_example_gets_the_python_clients_values_from_the_pipeline_and_the_stream(
    triton_server, client, hindi_clips, node_example, tmp_path
):
    node, descriptors = node_example
    clip = hindi_clips[1]
    audio = tmp_path / "clip.wav"
    audio.write_bytes(clip.wav_bytes)
    command = [node, "speech_to_image.js", "--url", triton_server.grpc_url, "--descriptors", str(descriptors)]
    command += ["--audio", str(audio), "--seed", "5", "--steps", "3", "--max-new-tokens", "8", "--preview-every", "1"]
    completed = subprocess.run(command, cwd=EXAMPLE, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr
    answer = json.loads(completed.stdout)

    expected = client.speech_to_image(clip.wav_bytes, **OPTIONS)
    pipeline = answer["pipeline"]
    assert pipeline["text"] == expected.text and pipeline["prompt"] == expected.prompt
    assert (pipeline["emotion"], pipeline["emotion_label"]) == (expected.emotion, expected.detected_emotion)
    assert pipeline["emotion_probabilities"] == pytest.approx(list(expected.emotion_scores.values()), abs=1e-6)
    assert pipeline["image_seed"] == "5"
    assert pipeline["png_sha256"] == sha256(expected.png)

    events = [message["event"] for message in answer["stream"]]
    assert events[0] == "text" and events[-1] == "image" and set(events[1:-1]) == {"preview"}
    assert all(message["text"] == expected.text for message in answer["stream"])
    assert answer["stream"][-1]["png_sha256"] == sha256(expected.png)
    assert [message["step"] for message in answer["stream"]] == sorted(m["step"] for m in answer["stream"])
