import numpy as np
import pytest

from s2i.model_repository.onnx_stage import OnnxStage


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
