import os
from pathlib import Path

import numpy as np
import pytest

from s2i.model_repository.onnx_stage import OnnxStage, intra_op_threads_for

STAGE_GRAPHS = {
    "whisper_encoder",
    "whisper_decoder",
    "whisper_decoder_with_past",
    "emotion_classifier_graph",
    "text_encoder",
    "unet",
    "vae_decoder",
}


def cpu_list(text: str) -> set[int]:
    cpus = set()
    for part in text.strip().split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def thread_affinities(pid: int) -> dict[int, set[int]]:
    """Thread id -> CPUs it may run on, from /proc (Linux)."""
    affinities = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                affinities[int(task.name)] = cpu_list(line.split(":", 1)[1])
    return affinities


def stub_processes(server_pid: int) -> dict[str, int]:
    """Model name -> pid of the Python-backend stub the server started for it."""
    stubs = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == server_pid and cmdline and cmdline[0].endswith(b"triton_python_backend_stub"):
            # argv[1] is the model's `model.py` path: <repository>/<model>/<version>/model.py.
            stubs[Path(cmdline[1].decode()).parents[1].name] = int(entry.name)
    return stubs


@pytest.fixture(scope="module")
def encoder(model_repository):
    return OnnxStage(model_repository.repository / "whisper_encoder" / "1" / "model.onnx")


def test_run_requests_returns_the_same_as_separate_runs_when_batched(encoder):
    rng = np.random.default_rng(0)
    requests = [{"input_features": rng.standard_normal((1, 80, 3000), dtype=np.float32)} for _ in range(3)]
    batched = encoder.run_requests(requests)
    for request, result in zip(requests, batched, strict=True):
        alone = encoder.run(request)["last_hidden_state"]
        assert result["last_hidden_state"].shape == (1, 1500, 64)
        np.testing.assert_allclose(result["last_hidden_state"], alone, atol=1e-5)


def test_run_requests_keeps_order_when_shapes_differ(model_repository):
    decoder = OnnxStage(model_repository.repository / "whisper_decoder" / "1" / "model.onnx")
    rng = np.random.default_rng(1)
    hidden = rng.standard_normal((1, 1500, 64), dtype=np.float32)
    requests = [
        {"input_ids": np.array([[50258, 50276, 50358, 50363]]), "encoder_hidden_states": hidden},
        {"input_ids": np.array([[50258]]), "encoder_hidden_states": hidden},
        {"input_ids": np.array([[50258, 50276, 50359, 50363]]), "encoder_hidden_states": hidden},
    ]
    results = decoder.run_requests(requests, ["logits"])
    assert [r["logits"].shape[1] for r in results] == [4, 1, 4]
    np.testing.assert_allclose(results[1]["logits"], decoder.run(requests[1], ["logits"])["logits"], atol=1e-5)


@pytest.mark.parametrize(
    ("requested", "instances", "cores", "expected"),
    [(0, 1, 2, 2), (0, 2, 2, 1), (0, 3, 2, 1), (0, 1, 16, 16), (0, 4, 16, 4), (3, 1, 2, 3)],
)
def test_intra_op_threads_for_shares_cores_among_instances_when_not_requested(requested, instances, cores, expected):
    assert intra_op_threads_for(requested, instances, cores) == expected


def test_onnx_stage_threads_are_not_pinned_when_the_session_runs(encoder):
    encoder.run({"input_features": np.zeros((1, 80, 3000), np.float32)})
    allowed = os.sched_getaffinity(0)
    assert encoder.intra_op_threads == len(allowed)
    for thread_id, cpus in thread_affinities(os.getpid()).items():
        assert cpus == allowed, f"thread {thread_id} is pinned to {sorted(cpus)} of {sorted(allowed)}"


def test_served_stage_graph_threads_use_every_core_when_the_server_runs(triton_server, client, hindi_clips):
    # One pipeline call so every stage graph has run (ONNX Runtime starts its pool at session creation).
    client.translate(hindi_clips[0].wav_bytes, max_new_tokens=2)
    stubs = stub_processes(triton_server.pid)
    graph_stubs = {name: pid for name, pid in stubs.items() if name in STAGE_GRAPHS}
    assert set(graph_stubs) == STAGE_GRAPHS, sorted(stubs)
    server_cpus = thread_affinities(triton_server.pid)[triton_server.pid]
    for name, pid in graph_stubs.items():
        affinities = thread_affinities(pid)
        assert len(affinities) > 1, f"`{name}` stub has a single thread"
        for thread_id, cpus in affinities.items():
            assert cpus == server_cpus, f"`{name}` thread {thread_id} is pinned to {sorted(cpus)}"


def unet_rows(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``rows`` different UNet inputs of the tiny checkpoint (4 latent channels, 64x64 pixels, CLIP width 32)."""
    rng = np.random.default_rng(seed)
    return {
        "sample": rng.standard_normal((rows, 4, 8, 8), dtype=np.float32),
        "timestep": np.linspace(1, 901, rows, dtype=np.float32)[:, None],
        "encoder_hidden_states": rng.standard_normal((rows, 77, 32), dtype=np.float32),
    }


def test_onnx_stage_run_gives_every_row_of_the_whole_batch_when_it_runs_in_slices(model_repository):
    graph = model_repository.repository / "unet" / "1" / "model.onnx"
    inputs = unet_rows(10)
    whole = OnnxStage(graph).run(inputs)["out_sample"]
    sliced = OnnxStage(graph, max_rows_per_call=4).run(inputs)["out_sample"]
    assert sliced.shape == whole.shape == (10, 4, 8, 8)
    np.testing.assert_allclose(sliced, whole, atol=1e-5)
    # Rows differ, so a slice mix-up (a repeated or shifted slice) would show.
    assert len({row.tobytes() for row in sliced}) == 10


def test_onnx_stage_raises_naming_the_field_when_max_rows_per_call_is_negative(model_repository):
    with pytest.raises(ValueError, match=r"`max_rows_per_call` must be 0 \(no limit\) or positive, got -1"):
        OnnxStage(model_repository.repository / "unet" / "1" / "model.onnx", max_rows_per_call=-1)


def test_served_unet_answers_a_batch_larger_than_its_slices_with_the_rows_of_one_call_when_the_server_runs(
    triton_server, model_repository
):
    import tritonclient.grpc as grpcclient

    from s2i.model_repository.config import parse_config

    config = parse_config((model_repository.repository / "unet" / "config.pbtxt").read_text())
    assert config.parameters["max_rows_per_call"].string_value == "4"
    assert config.max_batch_size == 16
    inputs = unet_rows(10, seed=1)
    expected = OnnxStage(model_repository.repository / "unet" / "1" / "model.onnx").run(inputs)["out_sample"]
    with grpcclient.InferenceServerClient(triton_server.grpc_url) as raw:
        tensors = []
        for name, value in inputs.items():
            tensor = grpcclient.InferInput(name, list(value.shape), "FP32")
            tensor.set_data_from_numpy(value)
            tensors.append(tensor)
        served = raw.infer("unet", tensors).as_numpy("out_sample")
        # A bad batch next (wrong channel count) is refused and the model still answers after it.
        wrong = grpcclient.InferInput("sample", [2, 3, 8, 8], "FP32")
        wrong.set_data_from_numpy(np.zeros((2, 3, 8, 8), np.float32))
        with pytest.raises(Exception, match="sample"):
            raw.infer("unet", [wrong, *tensors[1:]])
        again = raw.infer("unet", tensors).as_numpy("out_sample")
    assert served.shape == (10, 4, 8, 8)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    np.testing.assert_allclose(again, served, atol=1e-6)
