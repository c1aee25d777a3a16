import numpy as np
import pytest

from s2i.errors import InvalidInputError, RequestCancelledError
from s2i.model_repository.onnx_stage import OnnxStage, onnx_stage_runner
from s2i.stages.diffusion.sampling import SCHEDULERS, DiffusionRunner, ImageRequest
from tests.stages.diffusion.conftest import PARITY_REQUEST


@pytest.fixture(scope="module")
def onnx_runner(diffusion_dir, model_repository):
    repository = model_repository.repository
    stages = {
        name: OnnxStage(repository / name / "1" / "model.onnx") for name in ("text_encoder", "unet", "vae_decoder")
    }
    return DiffusionRunner(diffusion_dir, onnx_stage_runner(stages))


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


@pytest.mark.parametrize("scheduler", [*SCHEDULERS, None])
def test_generate_matches_stable_diffusion_pipeline_when_run_on_onnx_stages(
    onnx_runner, diffusers_reference, scheduler
):
    expected = diffusers_reference.image(**PARITY_REQUEST, scheduler=scheduler)
    result = onnx_runner.generate([ImageRequest(**PARITY_REQUEST, scheduler=scheduler)])[0]
    assert result.image.shape == (64, 48, 3)
    assert result.seed == PARITY_REQUEST["seed"]
    assert max_abs_diff(result.image, expected) <= 1
    # A real image, not a constant one, so the comparison says something.
    assert result.image.std() > 10


def test_generate_gives_each_request_its_single_result_when_batched_with_different_options(onnx_runner):
    requests = [
        ImageRequest("a red apple", num_inference_steps=3, seed=1, scheduler="ddim"),
        ImageRequest("a red apple", num_inference_steps=5, seed=2, scheduler="euler_ancestral", guidance_scale=3.0),
        ImageRequest("a blue car", num_inference_steps=4, seed=1, scheduler="euler", guidance_scale=1.0, height=32),
        ImageRequest("a blue car", negative_prompt="red", num_inference_steps=2, seed=5, scheduler="dpmsolver++"),
        ImageRequest("a dog", num_inference_steps=4, seed=7, scheduler="pndm", width=32, guidance_scale=0.0),
    ]
    batched = onnx_runner.generate(requests)
    for request, result in zip(requests, batched, strict=True):
        single = onnx_runner.generate([request])[0]
        assert max_abs_diff(result.image, single.image) <= 1
    assert [result.image.shape for result in batched] == [(64, 64, 3)] * 2 + [(32, 64, 3), (64, 64, 3), (64, 32, 3)]
    assert max_abs_diff(batched[0].image, batched[1].image) > 10


def test_generate_ignores_prompt_text_past_77_tokens_when_prompt_is_long(onnx_runner, diffusers_reference):
    long_prompt = "a castle on a hill at sunset, " * 20
    options = {**PARITY_REQUEST, "num_inference_steps": 3, "prompt": long_prompt}
    long_result = onnx_runner.generate([ImageRequest(**options)])[0]
    longer = onnx_runner.generate([ImageRequest(**{**options, "prompt": long_prompt + "and a dragon"})])[0]
    assert max_abs_diff(long_result.image, longer.image) == 0
    assert max_abs_diff(long_result.image, diffusers_reference.image(**options)) <= 1


def test_generate_draws_the_same_image_for_the_same_seed_and_another_for_another(onnx_runner):
    first, again, other = onnx_runner.generate(
        [ImageRequest("a cat", num_inference_steps=2, seed=s, scheduler="euler_ancestral") for s in (9, 9, 10)]
    )
    assert max_abs_diff(first.image, again.image) == 0
    assert max_abs_diff(first.image, other.image) > 10


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"num_inference_steps": 0}, r"`num_inference_steps`: must be between 1 and 150, got 0"),
        ({"num_inference_steps": 151}, r"`num_inference_steps`: must be between 1 and 150, got 151"),
        ({"guidance_scale": -0.5}, r"`guidance_scale`: must be a finite number between 0 and 100, got -0.5"),
        ({"guidance_scale": float("nan")}, r"`guidance_scale`: must be a finite number between 0 and 100"),
        ({"guidance_scale": 3.4e38}, r"`guidance_scale`: must be a finite number between 0 and 100, got 3.4e\+38"),
        ({"guidance_scale": 100.5}, r"`guidance_scale`: must be a finite number between 0 and 100, got 100.5"),
        ({"height": 60}, r"`height`: must be a multiple of 16 .* got 60"),
        ({"width": 1040}, r"`width`: must be a multiple of 16 .* between 16 and 1024, got 1040"),
        ({"scheduler": "magic"}, r"`scheduler`: must be one of \['ddim', 'dpmsolver\+\+', 'euler'"),
        ({"scheduler": "m" * 100_000}, r"`scheduler`: .* got 'm{63}… \(length 100000\)\.$"),
        ({"seed": -1}, r"`seed`: must be between 0 and"),
        ({"prompt": "x" * 5000}, r"`prompt`: has 5000 characters; the limit is 4096"),
    ],
)
def test_runner_check_raises_naming_the_field_when_an_option_is_out_of_range(onnx_runner, options, match):
    with pytest.raises(InvalidInputError, match=match):
        onnx_runner.check(ImageRequest(**{"prompt": "a cat", **options}))


def test_runner_check_accepts_the_largest_guidance_and_the_next_request_when_one_was_refused(onnx_runner):
    with pytest.raises(InvalidInputError):
        onnx_runner.check(ImageRequest("a cat", guidance_scale=1e30))
    assert onnx_runner.check(ImageRequest("a cat", guidance_scale=100.0)).guidance_scale == 100.0


def test_runner_check_fills_in_the_checkpoints_defaults_when_options_are_left_out(onnx_runner):
    checked = onnx_runner.check(ImageRequest("a cat"))
    assert (checked.height, checked.width, checked.scheduler) == (64, 64, "pndm")
    assert (checked.num_inference_steps, checked.guidance_scale) == (50, 7.5)
    assert 0 <= checked.seed < 2**63


def test_generate_stops_a_cancelled_request_within_one_step_and_finishes_the_others(onnx_runner):
    calls = {"unet": 0}

    def counting(model, inputs, outputs):
        calls["unet"] += model == "unet"
        return onnx_runner.run_stage(model, inputs, outputs)

    runner = DiffusionRunner.__new__(DiffusionRunner)
    runner.__dict__.update({**onnx_runner.__dict__, "run_stage": counting})
    requests = [
        ImageRequest("a cat", num_inference_steps=40, seed=3),
        ImageRequest("a dog", num_inference_steps=4, seed=4),
    ]
    asked = []

    def cancelled(index: int) -> bool:
        asked.append(index)
        # The first request's client goes away after its second step.
        return index == 0 and calls["unet"] >= 2

    (alone,) = runner.generate([requests[1]])
    alone_calls, calls["unet"] = calls["unet"], 0
    abandoned, kept = runner.generate(requests, cancelled=cancelled)
    assert isinstance(abandoned, RequestCancelledError)
    # Steps 1 and 2 ran for both in shared calls, then only the other request's remaining ones:
    # the cancelled request cost no UNet call after its client left.
    assert calls["unet"] == alone_calls
    assert max_abs_diff(kept.image, alone.image) <= 1
    assert 0 in asked and 1 in asked
