"""Stable Diffusion UNet fine-tuning end to end on generated images with captions in the Flickr8K layout."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from s2i.training.common import DataError, DataIssues, read_data_issues, read_metrics
from s2i.training.diffusion import DiffusionTrainingConfig, train_diffusion
from s2i.training.diffusion_data import read_flickr8k, split_images
from tests.conftest import BUILD_DIR

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 220, 30)}
RESOLUTION = 64  # the tiny checkpoint's size: 8x8 latents
FIRST_STEPS, RESUMED_STEPS = 6, 9
PROMPTS = ("a red circle on a white background", "a blue square on a white background")
# (token-file line, what the trainer must say about it)
BAD_LINES = (
    ("missing.jpg#0\ta photo that was never downloaded", "missing.jpg", "image not found"),
    ("corrupt.jpg#0\ta truncated download", "corrupt.jpg", "unreadable image"),
    ("1007_yellow_square.jpg#2\t   ", "1007_yellow_square.jpg", "empty caption"),
    ("this line has no tab", "Flickr8k.token.txt line", "expected `<image>#<n><TAB><caption>`"),
)


def make_flickr8k(root: Path, *, bad_lines: bool) -> Path:
    """Eight drawn images (four colours x circle/square), two captions each, train/dev split lists."""
    images = root / "Flicker8k_Dataset"
    images.mkdir(parents=True)
    lines, names = [], []
    for index, (colour, rgb) in enumerate(COLOURS.items()):
        for shape in ("circle", "square"):
            image = Image.new("RGB", (80, 64), (255, 255, 255))
            box = (16 + 4 * index, 12, 60 + 4 * index, 52)
            draw = ImageDraw.Draw(image)
            (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=rgb)
            name = f"{1000 + len(names)}_{colour}_{shape}.jpg"
            image.save(images / name, quality=95)
            names.append(name)
            lines += [f"{name}#0\ta {colour} {shape} on a white background", f"{name}#1\ta {shape} painted {colour}"]
    train = list(names)
    if bad_lines:
        (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        lines += [line for line, _, _ in BAD_LINES]
        train += ["missing.jpg", "corrupt.jpg"]
    (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "Flickr_8k.trainImages.txt").write_text("\n".join(train) + "\n")
    (root / "Flickr_8k.devImages.txt").write_text("\n".join(names[:4]) + "\n")
    return root


@pytest.fixture(scope="module")
def base_checkpoint() -> Path:
    """The tiny random Stable Diffusion pipeline (real CLIP tokenizer), cached between runs."""
    from s2i.stages.diffusion.checkpoint import build_tiny_diffusion

    path = BUILD_DIR / "training" / "diffusion-tiny-base"
    if not (path / ".complete").is_file():
        shutil.rmtree(path, ignore_errors=True)
        build_tiny_diffusion(path, size="tiny", seed=0)
        (path / ".complete").write_text("ok\n")
    return path


@pytest.fixture(scope="module")
def flickr8k(tmp_path_factory) -> Path:
    return make_flickr8k(tmp_path_factory.mktemp("flickr8k"), bad_lines=True)


def small_config(data: Path, checkpoint: Path, output_dir: Path, **overrides) -> DiffusionTrainingConfig:
    """Defaults scaled down so a run takes seconds on two CPU cores; batch 2 x accumulation 2."""
    settings = dict(
        resolution=RESOLUTION,
        learning_rate=1e-3,
        max_steps=FIRST_STEPS,
        train_batch_size=2,
        gradient_accumulation_steps=2,
        ema_decay=0.99,
        eval_steps=FIRST_STEPS,
        max_eval_samples=8,
        validation_prompts=PROMPTS,
        validation_seeds=(0,),
        validation_steps=FIRST_STEPS,
        validation_inference_steps=2,
        checkpointing_steps=FIRST_STEPS,
        checkpoints_total_limit=1,
        logging_steps=1,
        seed=0,
    )
    settings.update(overrides)
    return DiffusionTrainingConfig(data=data, checkpoint=checkpoint, output_dir=output_dir, **settings)


@pytest.fixture(scope="module")
def trained(flickr8k, base_checkpoint, tmp_path_factory):
    """Train 6 steps (with a baseline eval MSE), then rerun to 9 steps: the rerun resumes."""
    output_dir = tmp_path_factory.mktemp("diffusion-run") / "out"
    first = train_diffusion(small_config(flickr8k, base_checkpoint, output_dir, eval_on_start=True))
    resumed = train_diffusion(small_config(flickr8k, base_checkpoint, output_dir, max_steps=RESUMED_STEPS))
    return first, resumed


def test_diffusion_training_lowers_loss_and_eval_mse_when_run_on_flickr8k_layout(trained):
    first, resumed = trained
    losses = [loss for _, loss in first.train_losses + resumed.train_losses]
    assert [step for step, _ in first.train_losses + resumed.train_losses] == list(range(1, RESUMED_STEPS + 1))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    mse = read_metrics(resumed.output_dir / "metrics.csv", split="eval", name="mse")
    assert [step for step, *_ in mse] == [0, FIRST_STEPS, RESUMED_STEPS]
    assert mse[-1][3] < mse[1][3] < mse[0][3], mse
    assert resumed.eval_mse == [(RESUMED_STEPS, pytest.approx(mse[-1][3]))]


def test_diffusion_training_resumes_from_newest_checkpoint_when_rerun(trained):
    first, resumed = trained
    assert first.resumed_from is None and first.global_step == FIRST_STEPS
    assert resumed.resumed_from.name == f"checkpoint-{FIRST_STEPS}"
    assert resumed.global_step == RESUMED_STEPS
    logged = [step for step, *_ in read_metrics(resumed.output_dir / "metrics.csv", split="train", name="loss")]
    assert logged == list(range(1, RESUMED_STEPS + 1))
    # checkpoints_total_limit=1 keeps the newest only.
    assert sorted(p.name for p in resumed.output_dir.glob("checkpoint-*")) == [f"checkpoint-{RESUMED_STEPS}"]


def test_diffusion_training_writes_validation_pngs_the_saved_pipeline_reproduces(trained):
    import torch
    from diffusers import StableDiffusionPipeline

    first, resumed = trained
    names = [f"prompt{i}-seed0.png" for i in range(len(PROMPTS))]
    assert [p.name for p in first.validation_images] == names
    assert [p.parent.name for p in resumed.validation_images] == [f"step-{RESUMED_STEPS:06d}"] * len(PROMPTS)
    image = np.asarray(Image.open(resumed.validation_images[0]))
    assert image.shape == (RESOLUTION, RESOLUTION, 3) and image.dtype == np.uint8
    pipeline = StableDiffusionPipeline.from_pretrained(resumed.output_dir)
    pipeline.set_progress_bar_config(disable=True)
    again = pipeline(
        PROMPTS[0],
        height=RESOLUTION,
        width=RESOLUTION,
        num_inference_steps=2,
        guidance_scale=7.5,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images[0]
    assert np.abs(np.round(again * 255).astype(np.int16) - image).max() <= 1


@pytest.mark.slow
def test_diffusion_training_output_converts_and_serves_same_image_as_diffusers(trained, base_checkpoint, tmp_path):
    from diffusers import UNet2DConditionModel

    from s2i.client import Client
    from s2i.conversion.convert import convert
    from s2i.stages.diffusion.reference import DiffusionReference
    from tests.conftest import started_server

    output_dir = trained[1].output_dir
    report = convert({"diffusion": output_dir}, tmp_path / "repository", work_dir=tmp_path / "onnx")
    assert {"diffusion", "text_encoder", "unet", "vae_decoder"} <= set(report.models)
    assert all(diff < 1e-3 for diff in report.max_abs_diff.values()), report.max_abs_diff
    trained_unet = UNet2DConditionModel.from_pretrained(output_dir, subfolder="unet").state_dict()
    base_unet = UNet2DConditionModel.from_pretrained(base_checkpoint, subfolder="unet").state_dict()
    assert max(float((trained_unet[k] - base_unet[k]).abs().max()) for k in base_unet) > 1e-3
    options = dict(num_inference_steps=3, guidance_scale=7.5, seed=2)
    log_name = "tritonserver-trained-diffusion"
    with started_server(report.repository, log_name) as server, Client(server.grpc_url) as client:
        served = client.text_to_image("a dog runs on the beach", **options).image.astype(int)
    expected = DiffusionReference(output_dir).generate("a dog runs on the beach", **options).astype(int)
    assert served.shape == expected.shape
    assert np.abs(served - expected).max() <= 1


def test_diffusion_training_skips_and_names_bad_lines_and_images_when_policy_is_skip(trained):
    # The rerun rewrote the file: each problem is listed once.
    rows = read_data_issues(trained[1].output_dir / "data_issues.tsv")
    assert len(rows) == len(BAD_LINES) and all("split `train`" in row["data"] for row in rows)
    found = {(row["source"], row["reason"]) for row in rows}
    for _, source, reason in BAD_LINES:
        assert any(source in s and reason in r for s, r in found), (source, reason, found)
    assert trained[0].skipped_samples == trained[1].skipped_samples == len(BAD_LINES)


def test_diffusion_training_refuses_and_lists_bad_data_when_policy_is_error(flickr8k, base_checkpoint, tmp_path):
    config = small_config(flickr8k, base_checkpoint, tmp_path / "out", on_bad_data="error")
    with pytest.raises(DataError, match=r"4 unusable sample\(s\) and `on_bad_data` is `error`") as caught:
        train_diffusion(config)
    for _, source, reason in BAD_LINES:
        assert source in str(caught.value) and reason in str(caught.value)
    assert not list((tmp_path / "out").glob("checkpoint-*"))


def test_diffusion_training_reports_what_to_change_when_cuda_runs_out_of_memory(
    flickr8k, base_checkpoint, tmp_path, monkeypatch
):
    import torch

    from s2i.training import diffusion

    def out_of_memory(self):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(diffusion._Trainer, "train", out_of_memory)
    config = small_config(flickr8k, base_checkpoint, tmp_path / "out", validation_prompts=())
    with pytest.raises(RuntimeError, match=r"ran out of memory at step 1 \(batch 2, 64 px") as caught:
        train_diffusion(config)
    message = str(caught.value)
    assert "raise `gradient_accumulation_steps`" in message and "No checkpoint was written yet" in message


def test_flickr8k_reader_writes_emotion_tags_into_captions_when_tags_are_given(flickr8k):
    tags = {"1000_red_circle.jpg": "happy", "1003_blue_square.jpg": "sad"}
    pairs = read_flickr8k(flickr8k, "dev", issues=DataIssues("skip", "dev"), emotion_tags=tags)
    captions = {(p.image.name, p.caption) for p in pairs}
    assert ("1000_red_circle.jpg", "a red circle on a white background, happy mood") in captions
    assert ("1003_blue_square.jpg", "a square painted blue, sad mood") in captions
    assert ("1001_red_square.jpg", "a red square on a white background") in captions
    assert len(pairs) == 8


def test_flickr8k_split_holds_out_every_20th_image_when_no_split_lists():
    names = [f"{i:04d}.jpg" for i in range(45)]
    held_out = split_images(Path("/nonexistent"), "dev", names)
    assert held_out == {"0000.jpg", "0020.jpg", "0040.jpg"}
    assert split_images(Path("/nonexistent"), "train", names) == set(names) - held_out


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_diffusion_training_refuses_mixed_precision_when_no_cuda(flickr8k, base_checkpoint, tmp_path, precision):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    config = small_config(flickr8k, base_checkpoint, tmp_path / "out", mixed_precision=precision)
    with pytest.raises(ValueError, match=rf"`mixed_precision` '{precision}' needs a CUDA GPU"):
        train_diffusion(config)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("resolution", 100, r"`resolution` must be a positive multiple of 8, got 100"),
        ("emotion_template", "{caption}!", r"`emotion_template` must contain `\{caption\}` and `\{emotion\}`"),
        ("ema_decay", 1.0, r"`ema_decay` must be between 0 and 1"),
        ("caption_dropout", 1.0, r"`caption_dropout` must be between 0 \(inclusive\) and 1"),
        ("train_batch_size", 0, r"`train_batch_size` must be > 0"),
    ],
)
def test_diffusion_config_validate_names_the_field_when_a_setting_is_invalid(field, value, message):
    config = DiffusionTrainingConfig(data=Path("d"), checkpoint="c", output_dir=Path("o"), **{field: value})
    with pytest.raises(ValueError, match=message):
        config.validate()


def test_cli_train_diffusion_prints_the_bad_files_when_policy_is_error(flickr8k, base_checkpoint, tmp_path, capsys):
    from s2i.cli import main

    code = main(
        ["train", "diffusion", "--data", str(flickr8k), "--checkpoint", str(base_checkpoint)]
        + ["--output", str(tmp_path / "out"), "--on-bad-data", "error", "--resolution", "64"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "corrupt.jpg" in err and "unreadable image" in err and "missing.jpg" in err


def test_caption_dataset_drops_captions_deterministically_when_dropout_is_set(flickr8k, base_checkpoint):
    from transformers import CLIPTokenizer

    from s2i.training.diffusion_data import CaptionDataset

    tokenizer = CLIPTokenizer.from_pretrained(base_checkpoint, subfolder="tokenizer")
    pairs = read_flickr8k(flickr8k, "dev", issues=DataIssues("skip", "dev"))
    empty = tokenizer("", max_length=77, padding="max_length", return_tensors="np").input_ids[0]

    def dropped(dropout: float) -> list[bool]:
        dataset = CaptionDataset(pairs, tokenizer, 64, caption_dropout=dropout, seed=3)
        keys = [(epoch, index) for epoch in range(8) for index in range(len(pairs))]
        return [bool((dataset[key]["input_ids"] == empty).all()) for key in keys]

    assert not any(dropped(0.0))
    half = dropped(0.5)
    assert half == dropped(0.5)
    assert 0 < sum(half) < len(half)
    # Pixels do not depend on the dropout: its draw comes after the augmentations.
    plain = CaptionDataset(pairs, tokenizer, 64, random_flip=True, seed=3)
    with_dropout = CaptionDataset(pairs, tokenizer, 64, random_flip=True, seed=3, caption_dropout=0.5)
    assert np.array_equal(plain[(2, 1)]["pixel_values"], with_dropout[(2, 1)]["pixel_values"])


def test_caption_dataset_drops_captions_to_the_unconditional_prompt_when_one_is_given(flickr8k, base_checkpoint):
    from transformers import CLIPTokenizer

    from s2i.training.diffusion_data import CaptionDataset

    tokenizer = CLIPTokenizer.from_pretrained(base_checkpoint, subfolder="tokenizer")
    pairs = read_flickr8k(flickr8k, "dev", issues=DataIssues("skip", "dev"))
    negative = "blurry, low quality"
    expected = tokenizer(negative, max_length=77, padding="max_length", return_tensors="np").input_ids[0]
    dataset = CaptionDataset(pairs, tokenizer, 64, caption_dropout=0.5, seed=3, unconditional_prompt=negative)
    ids = [dataset[(epoch, index)]["input_ids"] for epoch in range(8) for index in range(len(pairs))]
    dropped = [bool((row == expected).all()) for row in ids]
    captions = {tuple(row) for row in dataset.input_ids}
    # Every item is its own caption or the negative prompt, and both occur.
    assert 0 < sum(dropped) < len(dropped)
    assert all(hit or tuple(row) in captions for hit, row in zip(dropped, ids, strict=True))
