"""The pipeline DAG is the one description: the ensemble, the stream and the reference follow it.

No server: the ensemble is built from the models' descriptions, the stream runs on a recording
stage runner, the reference runs registered stages' recording references, and a toy step added
to the DAG alone reaches the ensemble and the stream.
"""

import dataclasses
import types

import numpy as np
import pytest

from s2i import names
from s2i.model_repository.config import ModelSpec, TensorSpec
from s2i.pipeline import dag
from s2i.pipeline.dag import PIPELINE, REQUEST, Output, Pipeline, PipelineOutput, Step
from s2i.pipeline.reference import ReferencePipeline
from s2i.pipeline.specs import (
    ensemble_spec,
    internal,
    postprocess_spec,
    preprocess_spec,
    prompt_composer_spec,
    stream_spec,
)
from s2i.pipeline.streaming import LEFT_OUT, StreamRequest, run_stream
from s2i.stages import registry
from s2i.stages.base import Stage
from s2i.stages.diffusion.specs import diffusion_model_spec
from s2i.stages.emotion.config import EmotionConfig
from s2i.stages.emotion.specs import emotion_model_spec
from s2i.stages.whisper.specs import whisper_model_spec

MEL_BINS = 80
# A toy step between the image and its PNG: it reads `diffusion`'s image, and `postprocess` reads its own.
WATERMARK = "watermark"


def step_specs() -> dict[str, ModelSpec]:
    return {
        names.PREPROCESS: preprocess_spec(MEL_BINS),
        names.WHISPER: whisper_model_spec(MEL_BINS),
        names.EMOTION_CLASSIFIER: emotion_model_spec(EmotionConfig(num_mel_bins=MEL_BINS)),
        names.PROMPT_COMPOSER: prompt_composer_spec(),
        names.DIFFUSION: diffusion_model_spec(),
        names.POSTPROCESS: postprocess_spec(),
    }


def watermark_spec() -> ModelSpec:
    return ModelSpec(
        name=WATERMARK,
        inputs=(TensorSpec(names.IMAGE, "UINT8", (-1, -1, 3)), TensorSpec("strength", "FP32", (1,), optional=True)),
        outputs=(TensorSpec(names.IMAGE, "UINT8", (-1, -1, 3)), TensorSpec(names.COMPUTE_MS, "FP32", (1,))),
        max_batch_size=8,
    )


def with_watermark(pipeline: Pipeline) -> Pipeline:
    """``pipeline`` with the toy step: an edit of the DAG and nothing else."""
    steps = list(pipeline.steps)
    image = Output(names.DIFFUSION, names.IMAGE)
    steps.insert(-1, Step(WATERMARK, "watermark_ms", {names.IMAGE: image, "strength": REQUEST}))
    steps[-1] = dataclasses.replace(steps[-1], inputs={names.IMAGE: Output(WATERMARK, names.IMAGE)})
    return Pipeline(tuple(steps), pipeline.outputs)


def source_name(source) -> str:
    return internal(source.step, source.tensor)


@pytest.mark.parametrize("pipeline", [PIPELINE, with_watermark(PIPELINE)], ids=["pipeline", "with-toy-step"])
def test_ensemble_follows_the_dag_when_built_from_the_descriptions(pipeline):
    specs = {**step_specs(), WATERMARK: watermark_spec()}
    ensemble = ensemble_spec(None, specs, pipeline)
    steps = {step.model_name: step for step in ensemble.ensemble_steps}
    assert list(steps) == [pipeline.steps[-1].model, *(step.model for step in pipeline.steps[:-1])]
    for step in pipeline.steps:
        wired = {name: source_name(source) for name, source in step.inputs.items() if source is not REQUEST}
        assert {name: steps[step.model].input_map[name] for name in wired} == wired
        for name in step.request_inputs():
            assert steps[step.model].input_map[name] == name
        assert steps[step.model].output_map[names.COMPUTE_MS] == step.timing
    expected_outputs = [output.name for output in pipeline.outputs] + [step.timing for step in pipeline.steps]
    assert [tensor.name for tensor in ensemble.outputs] == expected_outputs
    # The request feeds what the steps name, and every other `diffusion` input (its options).
    fed = pipeline.step(names.DIFFUSION).inputs
    options = [tensor.name for tensor in specs[names.DIFFUSION].inputs if tensor.name not in fed]
    expected_inputs = []
    for step in pipeline.steps:
        expected_inputs += [*step.request_inputs(), *(options if step.request_options else ())]
    assert [tensor.name for tensor in ensemble.inputs] == expected_inputs
    assert all(tensor.optional for tensor in ensemble.inputs)


def test_ensemble_takes_a_new_diffusion_option_when_its_model_declares_one():
    specs = step_specs()
    diffusion = specs[names.DIFFUSION]
    specs[names.DIFFUSION] = dataclasses.replace(
        diffusion, inputs=(*diffusion.inputs, TensorSpec("eta", "FP32", (1,), optional=True))
    )
    ensemble = ensemble_spec(None, specs)
    assert ensemble.inputs[-1] == TensorSpec("eta", "FP32", (1,), optional=True)
    diffusion_step = next(step for step in ensemble.ensemble_steps if step.model_name == names.DIFFUSION)
    assert diffusion_step.input_map["eta"] == "eta"


def test_pipeline_refuses_a_step_when_it_reads_a_later_step():
    first, second, *rest = PIPELINE.steps
    with pytest.raises(ValueError, match="does not run before it"):
        Pipeline((second, first, *rest), PIPELINE.outputs)


def test_pipeline_refuses_an_output_when_a_later_step_reads_that_tensor():
    with pytest.raises(ValueError, match="which a later step reads"):
        features = PipelineOutput("features", names.PREPROCESS, names.INPUT_FEATURES)
        Pipeline(PIPELINE.steps, (*PIPELINE.outputs, features))


def test_timing_names_are_the_ones_in_names():
    assert PIPELINE.timings == {
        names.PREPROCESS: names.PREPROCESS_MS,
        names.WHISPER: names.WHISPER_MS,
        names.EMOTION_CLASSIFIER: names.EMOTION_MS,
        names.PROMPT_COMPOSER: names.PROMPT_MS,
        names.DIFFUSION: names.DIFFUSION_MS,
        names.POSTPROCESS: names.POSTPROCESS_MS,
    }
    assert dag.PIPELINE is PIPELINE


def text(value: str) -> np.ndarray:
    return np.array([[value.encode("utf-8")]], dtype=np.object_)


class RecordingStages:
    """A stage runner answering every requested tensor with a value named after model and tensor."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict, list]] = []

    def __call__(self, model_name, inputs, output_names):
        self.calls.append((model_name, dict(inputs), list(output_names)))
        if model_name == WATERMARK:
            return {names.IMAGE: inputs[names.IMAGE] + 1, names.COMPUTE_MS: np.array([[1.0]], dtype=np.float32)}
        return {
            name: np.array([[1.0]], dtype=np.float32) if name == names.COMPUTE_MS else text(f"{model_name}.{name}")
            for name in output_names
        }


class FakeDiffusion:
    """The denoising loop of the stream: 4 steps, an 8x8 grey image."""

    def check(self, _request):
        return types.SimpleNamespace(num_inference_steps=4)

    def decode(self, _latents):
        return np.zeros((1, 8, 8, 3), dtype=np.uint8)

    def generate(self, requests, on_step, cancelled):
        self.requests = requests
        for step in range(1, 5):
            on_step(0, step, 4, None)
        return [types.SimpleNamespace(image=np.full((8, 8, 3), 100, dtype=np.uint8), seed=42)]


def stream(pipeline: Pipeline, inputs: dict) -> tuple[RecordingStages, FakeDiffusion, list[dict]]:
    stages, diffusion, messages = RecordingStages(), FakeDiffusion(), []
    request = StreamRequest(inputs=inputs, preview_every=2)
    run_stream(request, stages, diffusion, messages.append, clock=lambda: 0.0, pipeline=pipeline)
    return stages, diffusion, messages


@pytest.mark.parametrize("pipeline", [PIPELINE, with_watermark(PIPELINE)], ids=["pipeline", "with-toy-step"])
def test_stream_follows_the_dag_when_run_on_recorded_stages(pipeline):
    inputs = {
        names.AUDIO_BYTES: np.array([[b"RIFF"]], dtype=np.object_),
        names.RETURN_TRANSCRIPT: np.array([[True]]),
        names.STYLE_TEMPLATE: text("painting"),
        names.SEED: np.array([[7]], dtype=np.int64),
        "strength": np.array([[0.5]], dtype=np.float32),
    }
    stages, diffusion, messages = stream(pipeline, inputs)
    remote = [step for step in pipeline.steps if step.model not in (names.DIFFUSION, names.POSTPROCESS)]
    assert [model for model, _, _ in stages.calls] == [step.model for step in remote]
    for (model, sent, requested), step in zip(stages.calls, remote, strict=True):
        assert requested == list(pipeline.requested(model))
        for name, source in step.inputs.items():
            if source is REQUEST:
                assert (name in sent) == (name in inputs)
            elif source.step != names.DIFFUSION:
                assert sent[name] == text(f"{source.step}.{source.tensor}")
    # The diffusion step got the composer's prompts and the request's options, none of the other steps'.
    assert diffusion.requests[0].seed == 7
    assert [message["event"][0, 0] for message in messages] == [b"text", b"preview", b"image"]
    ensemble = ensemble_spec(None, {**step_specs(), WATERMARK: watermark_spec()}, pipeline)
    assert set(messages[-1]) - {names.EVENT, names.STEP} == {
        tensor.name for tensor in ensemble.outputs if tensor.name not in LEFT_OUT
    }
    assert messages[-1][names.TEXT] == text(f"{names.PROMPT_COMPOSER}.{names.TEXT}")
    assert messages[-1][names.IMAGE_SEED][0, 0] == 42


def test_stream_sends_a_new_diffusion_option_to_the_loop_when_the_request_holds_it():
    audio = np.array([[b"RIFF"]], dtype=np.object_)
    _, diffusion, _ = stream(PIPELINE, {names.AUDIO_BYTES: audio, names.HEIGHT: np.array([[32]], dtype=np.int32)})
    assert diffusion.requests[0].height == 32


class FakeStage(Stage):
    """A registered stage whose reference records each call and answers ``outputs``."""

    def __init__(self, name: str, outputs: dict) -> None:
        self.name, self.bls_model, self.outputs, self.calls = name, name, outputs, []

    def reference(self, checkpoint):
        return types.SimpleNamespace(step=lambda inputs, request: self.calls.append((inputs, request)) or self.outputs)

    def build_tiny(self, output_dir, size):
        raise NotImplementedError

    def export(self, checkpoint, onnx_dir):
        raise NotImplementedError

    def bls_spec(self, checkpoint, exported, device):
        raise NotImplementedError


@pytest.fixture()
def fake_stages():
    stages = [FakeStage("listen", {"heard": "words", "noise": 0.5}), FakeStage("draw", {"picture": "cat"})]
    for stage in stages:
        registry.register(stage)
    yield stages
    for stage in stages:
        registry.unregister(stage.name)


def test_reference_runs_the_registered_stages_steps_as_the_dag_wires_them(fake_stages, tmp_path):
    listen, draw = fake_stages
    pipeline = Pipeline(
        steps=(
            Step("listen", "listen_ms", {"level": REQUEST}),
            Step("draw", "draw_ms", {"caption": Output("listen", "heard")}, request_options=True),
        ),
        outputs=(PipelineOutput("picture", "draw"), PipelineOutput("noise", "listen")),
    )
    reference = ReferencePipeline({"listen": tmp_path, "draw": tmp_path}, pipeline=pipeline)
    assert list(reference.steps) == ["listen", "draw"]
    assert set(reference.references) == {"listen", "draw"}
    outputs = reference.outputs(np.zeros(1600, np.float32), 16_000, level=3, colour="red")
    [(listen_inputs, request)], [(draw_inputs, _)] = listen.calls, draw.calls
    assert listen_inputs == {"level": 3}
    # The request-options step gets every request input no step names, and the earlier step's output.
    assert draw_inputs == {"caption": "words", "colour": "red"}
    assert request[names.AUDIO_SAMPLES].shape == (1600,) and request[names.SAMPLE_RATE_HZ] == 16_000
    assert {name: outputs[name] for name in ("picture", "noise")} == {"picture": "cat", "noise": 0.5}
    assert set(outputs) == {"picture", "noise", "listen_ms", "draw_ms"}


def test_reference_refuses_a_step_when_no_registered_stage_serves_its_model(tmp_path):
    pipeline = Pipeline((Step("unknown", "unknown_ms", {"x": REQUEST}),), ())
    with pytest.raises(ValueError, match="`unknown` is neither a pipeline model nor a registered stage's model"):
        ReferencePipeline({}, pipeline=pipeline)


def test_reference_refuses_a_stage_step_when_its_checkpoint_is_missing(fake_stages):
    pipeline = Pipeline((Step("listen", "listen_ms", {"level": REQUEST}),), ())
    with pytest.raises(ValueError, match="must name a `listen` checkpoint"):
        ReferencePipeline({}, pipeline=pipeline)


@pytest.mark.parametrize("pipeline", [PIPELINE, with_watermark(PIPELINE)], ids=["pipeline", "with-toy-step"])
def test_pipeline_reads_back_the_same_dag_when_written_as_json(pipeline):
    assert Pipeline.from_json(pipeline.to_json()) == pipeline


def test_stream_spec_carries_the_dag_it_was_written_from():
    pipeline = with_watermark(PIPELINE)
    ensemble = ensemble_spec(None, {**step_specs(), WATERMARK: watermark_spec()}, pipeline)
    stream = stream_spec(ensemble, pipeline=pipeline)
    assert Pipeline.from_json(stream.parameters[names.PIPELINE_PARAMETER]) == pipeline
