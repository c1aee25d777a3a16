"""Engine manifests and compatibility checks (CPU); engine builds on a GPU (marked `gpu`)."""

import json

import numpy as np
import pytest

from s2i.conversion.tensorrt import (
    EngineError,
    EngineManifest,
    GpuInfo,
    check_engine_compatible,
    check_repository_engines,
    sha256_file,
)


def manifest(**overrides):
    values = dict(
        model_name="whisper_encoder",
        tensorrt_version="10.5.0",
        gpu_name="NVIDIA H100 80GB HBM3",
        compute_capability="9.0",
        precision="fp16",
        profiles={"input_features": ((1, 80, 3000), (8, 80, 3000), (16, 80, 3000))},
        build_flags=("FP16",),
        workspace_bytes=1 << 30,
        onnx_sha256="a" * 64,
        engine_sha256="b" * 64,
    )
    values.update(overrides)
    return EngineManifest(**values)


def test_engine_manifest_round_trips_through_json(tmp_path):
    path = tmp_path / "engine_manifest.json"
    manifest().write(path)
    assert EngineManifest.read(path) == manifest()
    assert json.loads(path.read_text())["compute_capability"] == "9.0"


def test_check_engine_compatible_accepts_the_building_gpu_and_version():
    check_engine_compatible(manifest(), GpuInfo("10.5.0", "NVIDIA H100 PCIe", "9.0"))


@pytest.mark.parametrize(
    ("runtime", "match"),
    [
        (GpuInfo("10.3.0", "NVIDIA H100 80GB HBM3", "9.0"), "TensorRT 10.5.0 built it, this runtime has 10.3.0"),
        (GpuInfo("10.5.0", "NVIDIA A100-SXM4-80GB", "8.0"), r"compute capability 9.0 .* this GPU is 8.0"),
    ],
)
def test_check_engine_compatible_refuses_with_rebuild_hint_when_mismatched(runtime, match):
    with pytest.raises(EngineError, match=match) as error:
        check_engine_compatible(manifest(), runtime)
    assert "s2i convert --target tensorrt" in str(error.value)


def test_check_repository_engines_refuses_an_engine_whose_hash_changed(tmp_path):
    version_dir = tmp_path / "whisper_encoder" / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "model.plan").write_bytes(b"engine bytes")
    manifest(engine_sha256=sha256_file(version_dir / "model.plan")).write(version_dir / "engine_manifest.json")
    runtime = GpuInfo("10.5.0", "H100", "9.0")
    assert check_repository_engines(tmp_path, runtime) == ["whisper_encoder"]
    (version_dir / "model.plan").write_bytes(b"tampered")
    with pytest.raises(EngineError, match="does not match its manifest's hash"):
        check_repository_engines(tmp_path, runtime)


def _gpu_available() -> bool:
    try:
        import tensorrt  # noqa: F401
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_available(), reason="needs an NVIDIA GPU and the `tensorrt` package")
def test_tensorrt_encoder_engine_matches_onnxruntime(checkpoints, model_repository, tmp_path):
    import tensorrt as trt
    import torch

    from s2i.conversion.tensorrt import build_engine
    from s2i.model_repository.onnx_stage import OnnxStage
    from s2i.stages.whisper.specs import whisper_components

    encoder = whisper_components(json.loads((checkpoints["whisper"] / "config.json").read_text()))[0]
    onnx_path = model_repository.repository / "whisper_encoder" / "1" / "model.onnx"
    built = build_engine(encoder, onnx_path, tmp_path, max_batch_size=4, opt_batch_size=2, precision="fp32")
    features = np.random.default_rng(0).standard_normal((2, 80, 3000), dtype=np.float32)
    expected = OnnxStage(onnx_path).run({"input_features": features})["last_hidden_state"]
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine((tmp_path / "model.plan").read_bytes())
    context = engine.create_execution_context()
    context.set_input_shape("input_features", features.shape)
    inputs = torch.from_numpy(features).cuda()
    outputs = torch.empty(expected.shape, dtype=torch.float32, device="cuda")
    context.set_tensor_address("input_features", inputs.data_ptr())
    context.set_tensor_address("last_hidden_state", outputs.data_ptr())
    context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    assert np.max(np.abs(outputs.cpu().numpy() - expected)) < 1e-3
    assert built.compute_capability == "{}.{}".format(*torch.cuda.get_device_capability(0))
