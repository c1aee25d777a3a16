"""Checkpoints outside the support matrix are refused before any export; conversion is atomic."""

import hashlib
import json
import os
import shutil

import pytest

from s2i.conversion import convert as convert_module
from s2i.conversion.convert import convert, staged_repository
from s2i.stages.base import UnsupportedCheckpointError
from s2i.stages.diffusion.stage import DiffusionStage
from s2i.stages.emotion.stage import EmotionStage


def _small_files(source, destination):
    """The checkpoint without its weights: what `check_checkpoint` reads."""
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return destination


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _tree_digest(root):
    """Every file's relative path and bytes: equal digests mean an untouched tree."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture()
def diffusion_configs(checkpoints, tmp_path):
    return _small_files(checkpoints["diffusion"], tmp_path / "diffusion")


def test_check_checkpoint_accepts_tiny_checkpoints_when_in_the_matrix(checkpoints):
    DiffusionStage().check_checkpoint(checkpoints["diffusion"])
    EmotionStage().check_checkpoint(checkpoints["emotion"])


def test_check_checkpoint_accepts_lcm_unet_with_guidance_input_when_unet_has_time_cond_proj_dim(diffusion_configs):
    from s2i import names
    from s2i.stages.diffusion.specs import diffusion_components, read_configs

    _edit_json(diffusion_configs / "unet" / "config.json", time_cond_proj_dim=256)
    DiffusionStage().check_checkpoint(diffusion_configs)
    unet = {c.model_name: c for c in diffusion_components(read_configs(diffusion_configs))}[names.UNET]
    inputs = {tensor.name: tensor.dims for tensor in unet.inputs}
    assert inputs[names.TIMESTEP_COND] == (256,)


def test_check_checkpoint_raises_naming_sdxl_when_checkpoint_has_second_text_encoder(diffusion_configs):
    _edit_json(
        diffusion_configs / "model_index.json",
        _class_name="StableDiffusionXLPipeline",
        text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
    )
    _edit_json(diffusion_configs / "unet" / "config.json", addition_embed_type="text_time")
    with pytest.raises(UnsupportedCheckpointError, match="Stable Diffusion XL-style checkpoint"):
        DiffusionStage().check_checkpoint(diffusion_configs)


def test_check_checkpoint_raises_naming_added_conditioning_when_only_unet_has_it(diffusion_configs):
    _edit_json(diffusion_configs / "unet" / "config.json", addition_embed_type="text_time")
    with pytest.raises(UnsupportedCheckpointError, match="`addition_embed_type` 'text_time'"):
        DiffusionStage().check_checkpoint(diffusion_configs)


def test_check_checkpoint_raises_naming_channels_when_unet_is_an_inpainting_model(diffusion_configs):
    _edit_json(diffusion_configs / "unet" / "config.json", in_channels=9)
    with pytest.raises(UnsupportedCheckpointError, match="9 input channels for 4 latent channels"):
        DiffusionStage().check_checkpoint(diffusion_configs)


def test_check_checkpoint_raises_naming_missing_asset_when_scheduler_config_absent(diffusion_configs):
    (diffusion_configs / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(UnsupportedCheckpointError, match="scheduler/scheduler_config.json"):
        DiffusionStage().check_checkpoint(diffusion_configs)


def test_check_checkpoint_raises_naming_architectures_when_emotion_architecture_unknown(checkpoints, tmp_path):
    checkpoint = _small_files(checkpoints["emotion"], tmp_path / "emotion")
    _edit_json(checkpoint / "config.json", architecture="conformer")
    with pytest.raises(UnsupportedCheckpointError, match=r"`architecture` one of \['bilstm', 'transformer'\]"):
        EmotionStage().check_checkpoint(checkpoint)


def test_check_checkpoint_raises_naming_model_type_when_emotion_checkpoint_is_foreign(checkpoints, tmp_path):
    checkpoint = _small_files(checkpoints["emotion"], tmp_path / "emotion")
    _edit_json(checkpoint / "config.json", model_type="wav2vec2")
    with pytest.raises(UnsupportedCheckpointError, match="`model_type` 's2i-speech-emotion'"):
        EmotionStage().check_checkpoint(checkpoint)


@pytest.fixture()
def previous_repository(checkpoints, tmp_path):
    """A converted repository (emotion only, from the session's export cache) to convert over."""
    from tests.conftest import BUILD_DIR

    output = tmp_path / "repository"
    convert({"emotion": checkpoints["emotion"]}, output, work_dir=BUILD_DIR / "onnx")
    return output


def test_convert_leaves_previous_repository_untouched_when_checkpoint_refused(
    previous_repository, diffusion_configs, checkpoints, tmp_path
):
    before = _tree_digest(previous_repository)
    _edit_json(diffusion_configs / "unet" / "config.json", in_channels=9)
    with pytest.raises(UnsupportedCheckpointError, match="inpainting"):
        convert(
            {"emotion": checkpoints["emotion"], "diffusion": diffusion_configs},
            previous_repository,
            work_dir=tmp_path / "onnx",
        )
    assert _tree_digest(previous_repository) == before
    assert not (tmp_path / "onnx").exists()  # refused before any export
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diffusion", "repository"]


def test_convert_leaves_previous_repository_untouched_when_a_later_stage_fails_to_export(
    previous_repository, checkpoints, tmp_path
):
    from tests.conftest import BUILD_DIR

    before = _tree_digest(previous_repository)
    broken = tmp_path / "broken-emotion"
    shutil.copytree(checkpoints["emotion"], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # passes the checks, fails to load at export
    with pytest.raises(Exception) as raised:  # noqa: PT011 - whatever safetensors raises
        # Whisper (first in order) is written into the staging folder before emotion fails.
        convert(
            {"whisper": checkpoints["whisper"], "emotion": broken}, previous_repository, work_dir=BUILD_DIR / "onnx"
        )
    assert not isinstance(raised.value, UnsupportedCheckpointError)
    assert _tree_digest(previous_repository) == before
    assert not (previous_repository / "whisper").exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_convert_replaces_whole_repository_when_converting_over_a_previous_one(
    previous_repository, checkpoints, tmp_path
):
    from tests.conftest import BUILD_DIR

    (previous_repository / "stale_model" / "1").mkdir(parents=True)
    report = convert({"whisper": checkpoints["whisper"]}, previous_repository, work_dir=BUILD_DIR / "onnx")
    present = sorted(p.name for p in previous_repository.iterdir())
    assert present == sorted(report.models)
    assert "emotion_classifier" not in present and "stale_model" not in present
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_staged_repository_swaps_models_inside_output_when_output_is_a_mount_point(tmp_path, monkeypatch):
    output = tmp_path / "models"
    (output / "old_model").mkdir(parents=True)
    (output / "old_model" / "config.pbtxt").write_text("old")
    monkeypatch.setattr(convert_module.os.path, "ismount", lambda path: os.fspath(path) == os.fspath(output))
    with staged_repository(output) as staging:
        assert staging.parent == output  # a volume root cannot be renamed: stage inside it
        (staging / "new_model").mkdir()
        (staging / "new_model" / "config.pbtxt").write_text("new")
        assert (output / "old_model").is_dir()  # nothing changes before the block succeeds
    assert sorted(p.name for p in output.iterdir()) == ["new_model"]
    assert (output / "new_model" / "config.pbtxt").read_text() == "new"


def test_staged_repository_keeps_mount_point_contents_when_block_fails(tmp_path, monkeypatch):
    output = tmp_path / "models"
    (output / "old_model").mkdir(parents=True)
    monkeypatch.setattr(convert_module.os.path, "ismount", lambda path: os.fspath(path) == os.fspath(output))
    with pytest.raises(RuntimeError, match="export failed"), staged_repository(output) as staging:
        (staging / "new_model").mkdir()
        raise RuntimeError("export failed")
    assert sorted(p.name for p in output.iterdir()) == ["old_model"]


def test_cli_convert_exits_2_naming_the_family_when_checkpoint_is_refused(diffusion_configs, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    _edit_json(diffusion_configs / "unet" / "config.json", in_channels=9)
    s2i = str(Path(sys.executable).with_name("s2i"))
    completed = subprocess.run(
        [s2i, "convert", "--diffusion", str(diffusion_configs), "--output", str(tmp_path / "repository")],
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 2
    assert completed.stderr.startswith("error: `")
    assert "an inpainting or depth model" in completed.stderr
    assert not (tmp_path / "repository").exists()
    assert not (tmp_path / "onnx").exists()


def _with_safety_checker(checkpoint):
    """Name a safety checker and its feature extractor in ``model_index.json``, as SD 1.5's does."""
    _edit_json(
        checkpoint / "model_index.json",
        safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"],
        feature_extractor=["transformers", "CLIPImageProcessor"],
        requires_safety_checker=True,
    )
    return checkpoint


def test_convert_refuses_naming_the_flag_when_pipeline_has_a_safety_checker(diffusion_configs, tmp_path):
    _with_safety_checker(diffusion_configs)
    with pytest.raises(UnsupportedCheckpointError, match=r"safety checker `safety_checker`.*`--no-safety-checker`"):
        convert({"diffusion": diffusion_configs}, tmp_path / "repository", work_dir=tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()  # refused before any export
    assert not (tmp_path / "repository").exists()


def test_dropped_parts_is_empty_when_pipeline_was_saved_without_a_safety_checker(checkpoints):
    # diffusers writes `[null, null]` for a pipeline saved with `safety_checker=None`.
    assert DiffusionStage().dropped_parts(checkpoints["diffusion"]) == []


@pytest.mark.slow
def test_convert_drops_the_safety_checker_when_told_to(checkpoints, tmp_path, caplog):
    from diffusers import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    tiny = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    checker = StableDiffusionSafetyChecker(
        CLIPConfig(text_config=tiny, vision_config={**tiny, "image_size": 32, "patch_size": 8}, projection_dim=8)
    )
    pipeline = StableDiffusionPipeline.from_pretrained(checkpoints["diffusion"])
    pipeline.register_modules(safety_checker=checker, feature_extractor=CLIPImageProcessor(size=32, crop_size=32))
    pipeline.save_pretrained(tmp_path / "sd15-with-checker", safe_serialization=True)
    checkpoint = tmp_path / "sd15-with-checker"
    assert DiffusionStage().dropped_parts(checkpoint) == [
        "safety checker `safety_checker` (stable_diffusion.StableDiffusionSafetyChecker)"
    ]
    with caplog.at_level("WARNING", logger="s2i.conversion.convert"):
        report = convert(
            {"diffusion": checkpoint}, tmp_path / "repository", work_dir=tmp_path / "onnx", drop_safety_checker=True
        )
    assert sorted(report.models) == ["diffusion", "text_encoder", "unet", "vae_decoder"]
    assert "dropping its safety checker" in caplog.text


def test_cli_convert_exits_2_naming_the_flag_when_pipeline_has_a_safety_checker(diffusion_configs, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    _with_safety_checker(diffusion_configs)
    s2i = str(Path(sys.executable).with_name("s2i"))
    completed = subprocess.run(
        [s2i, "convert", "--diffusion", str(diffusion_configs), "--output", str(tmp_path / "repository")],
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 2
    assert "`--no-safety-checker`" in completed.stderr
    assert not (tmp_path / "repository").exists()
