"""Export validation: an absolute bound for small-valued tiny models, a normalised one that scales with real ones."""

import numpy as np
import pytest

from s2i.conversion.validation import (
    GraphError,
    ValidationError,
    check_errors,
    check_tolerances,
    export_once,
    graph_error,
    worst_error,
)
from s2i.model_repository.components import OnnxComponent
from s2i.model_repository.config import TensorSpec
from s2i.stages.diffusion.specs import RTOL as DIFFUSION_RTOL
from s2i.stages.emotion.specs import RTOL as EMOTION_RTOL
from s2i.stages.whisper.specs import ATOL as WHISPER_ATOL
from s2i.stages.whisper.specs import RTOL as WHISPER_RTOL


def _component(atol: float, rtol: float) -> OnnxComponent:
    tensor = TensorSpec("x", "FP32", (4,))
    return OnnxComponent("graph", "graph.onnx", (tensor,), (tensor,), atol=atol, rtol=rtol)


def test_graph_error_is_max_abs_diff_over_max_abs_reference():
    reference = np.array([[-40.0, 2.0], [10.0, 0.0]], np.float32)
    error = graph_error(reference, reference + np.array([[0.0, 2e-3], [0.0, -1e-3]], np.float32))
    assert error.max_abs_diff == pytest.approx(2e-3, rel=1e-3)
    assert error.normalised == pytest.approx(2e-3 / 40, rel=1e-3)


def test_graph_error_is_infinite_when_reference_is_zero_and_output_is_not():
    assert graph_error(np.zeros(3), np.ones(3)).normalised == float("inf")
    assert graph_error(np.zeros(3), np.zeros(3)).normalised == 0.0


def test_worst_error_takes_each_measures_maximum_when_a_graph_has_several_outputs():
    worst = worst_error([GraphError(1e-3, 1e-6), GraphError(1e-5, 1e-4)])
    assert worst == GraphError(1e-3, 1e-4)


def test_check_errors_passes_when_abs_diff_exceeds_atol_but_normalised_is_within_rtol():
    # A real deep encoder: 6e-4 per unit of a range of 50 -> 3e-3 absolute, 6e-5 of the range.
    reference = np.linspace(-50, 50, 101, dtype=np.float32)
    actual = reference + 3e-3
    error = graph_error(reference, actual)
    assert error.max_abs_diff > WHISPER_ATOL
    checked = check_errors({"graph": error}, [_component(WHISPER_ATOL, WHISPER_RTOL)])
    assert checked["graph"].max_abs_diff == pytest.approx(3e-3, rel=1e-2)
    assert checked["graph"].normalised == pytest.approx(6e-5, rel=1e-2)


def test_check_errors_raises_naming_both_measures_when_graph_is_wrong():
    reference = np.linspace(-50, 50, 101, dtype=np.float32)
    message = r"`graph` differs from PyTorch by 5\.000e-01, .* and by 1\.0+e-02 of its output range"
    with pytest.raises(ValidationError, match=message):
        check_errors({"graph": graph_error(reference, reference + 0.5)}, [_component(WHISPER_ATOL, WHISPER_RTOL)])


def test_check_tolerances_returns_max_abs_diffs_when_called_by_a_plugin_stage():
    checked = check_tolerances({"graph": 1e-6}, [_component(1e-4, 0.0)])
    assert checked == {"graph": 1e-6}


def test_check_errors_keeps_absolute_bound_for_small_values_when_rtol_is_zero():
    reference = np.full(4, 1e-3, np.float32)
    with pytest.raises(ValidationError):
        check_errors({"graph": graph_error(reference, reference * 3)}, [_component(1e-4, 0.0)])


def test_stage_rtols_are_stated_and_below_a_per_mille():
    assert 0 < EMOTION_RTOL <= WHISPER_RTOL == DIFFUSION_RTOL <= 1e-3


def test_convert_reports_normalised_errors_far_within_tolerances_when_models_are_tiny(model_repository):
    # The tiny graphs differ from PyTorch by float32 rounding only: both measures are tiny, so a
    # wrong graph (an error of a sizeable part of the range) cannot hide behind the normalised bound.
    assert set(model_repository.normalised_error) == set(model_repository.max_abs_diff)
    assert len(model_repository.normalised_error) == 7
    assert all(0 <= error < 1e-5 for error in model_repository.normalised_error.values()), (
        model_repository.normalised_error
    )


def _write_identity_graph(path, input_name: str) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", [input_name], ["y"])],
        "identity",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph), str(path))


def test_export_once_exports_again_when_the_cached_graph_no_longer_matches_its_description(tmp_path):
    def described(input_name: str) -> OnnxComponent:
        inputs, outputs = (TensorSpec(input_name, "FP32", (4,)),), (TensorSpec("y", "FP32", (4,)),)
        return OnnxComponent("graph", "graph.onnx", inputs, outputs, atol=1e-5)

    source = {"hidden_size": 4}
    exports = []

    def export(input_name: str):
        exports.append(input_name)
        _write_identity_graph(tmp_path / "graph.onnx", input_name)

    # An earlier version of the stage exported `samples` from the same checkpoint config; this one reads `features`.
    export_once(tmp_path, source, [described("samples")], lambda: export("samples"))
    export_once(tmp_path, source, [described("features")], lambda: export("features"))
    export_once(tmp_path, source, [described("features")], lambda: export("features"))
    # The stale export was replaced once, then reused.
    assert exports == ["samples", "features"]
