"""Any subset of `speech_to_image`'s outputs, over gRPC and HTTP, returns what the full request returns.

Triton prunes the ensemble steps a request does not need; its pruning miscounts some graphs
(see `s2i.pipeline.specs.ensemble_spec`). The generated ensemble is checked twice: offline, by
replaying Triton's pruning for every one of the 2^17 - 1 subsets, and against the real server.
"""

import itertools
import json
import random
import re
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from s2i import names
from s2i.model_repository.config import EnsembleStep, TensorSpec, parse_config
from s2i.pipeline.specs import check_prunable

# Few steps and tokens: the models are tiny and random; what is tested is which outputs come back.
REQUEST = {names.SEED: (np.int64, 3), names.NUM_INFERENCE_STEPS: (np.int32, 2), names.MAX_NEW_TOKENS: (np.int32, 4)}
DATATYPES = {np.int64: "INT64", np.int32: "INT32"}


@pytest.fixture(scope="module")
def ensemble_config(model_repository):
    return parse_config((model_repository.repository / names.SPEECH_TO_IMAGE / "config.pbtxt").read_text())


def triton_pruned_steps(config, requested: set[str]) -> set[int]:
    """The steps Triton 2.51's `EnsembleContext` prunes for ``requested`` (a replay of its algorithm)."""
    steps = config.ensemble_scheduling.step
    consumers: dict[str, set[int]] = {tensor.name: set() for tensor in (*config.input, *config.output)}
    producer: dict[str, int] = {}
    for index, step in enumerate(steps):
        for tensor in step.input_map.values():
            consumers.setdefault(tensor, set()).add(index)
        for tensor in step.output_map.values():
            consumers.setdefault(tensor, set())
            producer[tensor] = index
    ignored = {tensor.name for tensor in config.output} - requested
    remaining: dict[int, int] = {}
    pruned = set()
    while ignored:
        new_ignored = set()
        for tensor in sorted(ignored):
            # Triton looks the producer up with `operator[]`: an ensemble input maps to step 0.
            index = producer.get(tensor, 0)
            remaining[index] = remaining.get(index, len(steps[index].output_map)) - 1
            if remaining[index] == 0:
                pruned.add(index)
                for source in steps[index].input_map.values():
                    consumers[source].discard(index)
                    if not consumers[source]:
                        new_ignored.add(source)
        ignored = new_ignored
    return pruned


def needed_steps(config, requested: set[str]) -> set[int]:
    """The steps that must run to produce ``requested``."""
    steps = config.ensemble_scheduling.step
    producer = {tensor: index for index, step in enumerate(steps) for tensor in step.output_map.values()}
    needed, frontier = set(), [producer[name] for name in requested]
    while frontier:
        index = frontier.pop()
        if index not in needed:
            needed.add(index)
            frontier.extend(producer[t] for t in steps[index].input_map.values() if t in producer)
    return needed


def test_ensemble_keeps_every_needed_step_when_any_subset_of_outputs_is_requested(ensemble_config):
    outputs = [tensor.name for tensor in ensemble_config.output]
    assert len(outputs) == 17
    for size in range(1, len(outputs) + 1):
        for subset in itertools.combinations(outputs, size):
            requested = set(subset)
            assert not needed_steps(ensemble_config, requested) & triton_pruned_steps(ensemble_config, requested), (
                subset
            )


def test_ensemble_prunes_the_steps_nobody_needs_when_only_the_transcript_is_requested(ensemble_config):
    steps = [step.model_name for step in ensemble_config.ensemble_scheduling.step]
    pruned = {steps[index] for index in triton_pruned_steps(ensemble_config, {names.TRANSCRIPT})}
    assert pruned == {names.EMOTION_CLASSIFIER, names.PROMPT_COMPOSER, names.DIFFUSION, names.POSTPROCESS}


def test_check_prunable_refuses_an_ensemble_when_an_output_is_also_a_step_input():
    tensor = TensorSpec("text", "BYTES", (1,))
    steps = (
        EnsembleStep("second", {"text": "text"}, {"out": "out"}),
        EnsembleStep("first", {"audio": "audio"}, {"text": "text"}),
    )
    with pytest.raises(ValueError, match=r"\['text'\] are both outputs and step inputs"):
        check_prunable((TensorSpec("audio", "FP32", (-1,)),), (tensor, TensorSpec("out", "BYTES", (1,))), steps)


def test_check_prunable_refuses_a_side_step_when_it_alone_reads_a_request_input():
    steps = (
        EnsembleStep("first", {"audio": "audio"}, {"a": "a"}),
        EnsembleStep("second", {"audio": "audio", "strength": "strength"}, {"b": "b"}),
    )
    inputs = (TensorSpec("audio", "FP32", (-1,)), TensorSpec("strength", "FP32", (1,), optional=True))
    outputs = (TensorSpec("a", "BYTES", (1,)), TensorSpec("b", "BYTES", (1,)))
    with pytest.raises(ValueError, match=r"no step on its path reads: \[\('second', 'strength'\)\]"):
        check_prunable(inputs, outputs, steps)


def test_check_prunable_accepts_a_side_step_when_the_first_steps_path_reads_its_inputs():
    steps = (
        EnsembleStep("first", {"audio": "audio"}, {"a": "a"}),
        EnsembleStep("second", {"audio": "audio"}, {"b": "b"}),
    )
    outputs = (TensorSpec("a", "BYTES", (1,)), TensorSpec("b", "BYTES", (1,)))
    check_prunable((TensorSpec("audio", "FP32", (-1,)),), outputs, steps)


def grpc_infer(url: str, wav: bytes, outputs: list[str] | None) -> dict[str, np.ndarray]:
    with grpcclient.InferenceServerClient(url) as raw:
        inputs = [grpcclient.InferInput(names.AUDIO_BYTES, [1, 1], "BYTES")]
        inputs[0].set_data_from_numpy(np.array([[wav]], dtype=np.object_))
        for name, (dtype, value) in REQUEST.items():
            inputs.append(grpcclient.InferInput(name, [1, 1], DATATYPES[dtype]))
            inputs[-1].set_data_from_numpy(np.array([[value]], dtype=dtype))
        requested = None if outputs is None else [grpcclient.InferRequestedOutput(name) for name in outputs]
        result = raw.infer(names.SPEECH_TO_IMAGE, inputs, outputs=requested, timeout=300)
        returned = [output.name for output in result.get_response().outputs]
        return {name: result.as_numpy(name) for name in returned}


def http_infer(url: str, samples: np.ndarray, rate: int, outputs: list[str]) -> dict[str, np.ndarray]:
    """A KServe v2 JSON request asking for ``outputs`` in the binary data extension."""
    body = {
        "inputs": [
            {"name": "audio_samples", "shape": [1, len(samples)], "datatype": "FP32", "data": samples.tolist()},
            {"name": "sample_rate_hz", "shape": [1, 1], "datatype": "INT32", "data": [rate]},
            *(
                {"name": name, "shape": [1, 1], "datatype": DATATYPES[dtype], "data": [value]}
                for name, (dtype, value) in REQUEST.items()
            ),
        ],
        "outputs": [{"name": name, "parameters": {"binary_data": True}} for name in outputs],
    }
    request = urllib.request.Request(
        f"http://{url}/v2/models/{names.SPEECH_TO_IMAGE}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        payload = response.read()
        header_length = int(response.headers["Inference-Header-Content-Length"])
    header, offset, values = json.loads(payload[:header_length]), header_length, {}
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        values[output["name"]] = decode_binary(payload[offset : offset + size], output["datatype"], output["shape"])
        offset += size
    return values


def decode_binary(data: bytes, datatype: str, shape: list[int]) -> np.ndarray:
    """A tensor from the binary data extension: raw little-endian, or 4-byte length + bytes per BYTES element."""
    if datatype != "BYTES":
        dtype = {"FP32": np.float32, "INT64": np.int64, "UINT8": np.uint8}[datatype]
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    elements, offset = [], 0
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 4], "little")
        elements.append(data[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return np.array(elements, dtype=np.object_).reshape(shape)


def assert_same_values(subset: dict[str, np.ndarray], full: dict[str, np.ndarray], requested: list[str]) -> None:
    assert sorted(subset) == sorted(requested)
    for name in requested:
        if name.endswith("_ms"):  # a time: differs run to run, but is there
            assert subset[name].shape == (1, 1) and subset[name][0, 0] > 0, name
        else:
            np.testing.assert_array_equal(subset[name], full[name], err_msg=name)


@pytest.fixture(scope="module")
def full_grpc(triton_server, hindi_clips):
    return grpc_infer(triton_server.grpc_url, hindi_clips[0].wav_bytes, None)


def test_pipeline_returns_each_single_output_equal_to_the_full_request_over_grpc(triton_server, hindi_clips, full_grpc):
    assert len(full_grpc) == 17
    for name in sorted(full_grpc):
        assert_same_values(grpc_infer(triton_server.grpc_url, hindi_clips[0].wav_bytes, [name]), full_grpc, [name])


def random_subsets(outputs: list[str], count: int, seed: int) -> list[list[str]]:
    chooser = random.Random(seed)
    return [chooser.sample(outputs, chooser.randint(2, len(outputs) - 1)) for _ in range(count)]


def test_pipeline_returns_random_output_subsets_equal_to_the_full_request_over_grpc(
    triton_server, hindi_clips, full_grpc
):
    for subset in random_subsets(sorted(full_grpc), 6, seed=15):
        assert_same_values(grpc_infer(triton_server.grpc_url, hindi_clips[0].wav_bytes, subset), full_grpc, subset)


def test_pipeline_returns_random_output_subsets_equal_to_the_full_request_over_http(triton_server, hindi_clips):
    clip = hindi_clips[2]
    samples = clip.samples[: clip.sample_rate_hz]  # one second keeps the JSON small
    every = sorted(tensor for tensor in names_of_outputs(triton_server))
    full = http_infer(triton_server.http_url, samples, clip.sample_rate_hz, every)
    assert len(full) == 17
    for subset in [[names.TEXT, names.EMOTION, names.PROMPT], *random_subsets(every, 4, seed=16)]:
        assert_same_values(http_infer(triton_server.http_url, samples, clip.sample_rate_hz, subset), full, subset)


def names_of_outputs(triton_server) -> list[str]:
    with urllib.request.urlopen(f"http://{triton_server.http_url}/v2/models/{names.SPEECH_TO_IMAGE}", timeout=30) as r:
        return [output["name"] for output in json.loads(r.read())["outputs"]]


def test_pipeline_refuses_a_client_batch_and_serves_the_next_request(triton_server, hindi_clips, full_grpc):
    with grpcclient.InferenceServerClient(triton_server.grpc_url) as raw:
        audio = grpcclient.InferInput(names.AUDIO_BYTES, [2, 1], "BYTES")
        audio.set_data_from_numpy(np.array([[hindi_clips[0].wav_bytes], [hindi_clips[1].wav_bytes]], dtype=np.object_))
        with pytest.raises(Exception, match="batch-size must be <= 1") as error:
            raw.infer(names.SPEECH_TO_IMAGE, [audio], timeout=60)
        assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    again = grpc_infer(triton_server.grpc_url, hindi_clips[0].wav_bytes, [names.PNG])
    assert again[names.PNG][0, 0] == full_grpc[names.PNG][0, 0]


def readme_http_example() -> str:
    """The README's HTTP example: the bash block that posts to `speech_to_image`."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.DOTALL)
    (block,) = [block for block in blocks if "/v2/models/speech_to_image/infer" in block]
    return block


def test_readme_http_example_returns_what_the_python_client_returns(triton_server, client):
    command = readme_http_example().replace("localhost:8000", triton_server.http_url)
    completed = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300, check=True)
    outputs = {output["name"]: output["data"] for output in json.loads(completed.stdout)["outputs"]}
    samples = (0.1 * np.sin(2 * np.pi * 220 * np.arange(16_000) / 16_000)).astype(np.float32)
    expected = client.speech_to_image(samples, 16_000, seed=7)
    assert outputs == {"text": [expected.text], "emotion": [expected.emotion], "prompt": [expected.prompt]}
