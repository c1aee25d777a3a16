"""`s2i world build` and `s2i world evaluate`, bounded: a few images and VAE steps, two captions."""

import json

import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from s2i.cli import main
from s2i.training.world import write_dataset
from s2i.training.world_model import BaseSettings, train_vae, vae_round_trip_faithfulness


def test_world_cli_builds_a_diffusers_checkpoint_and_rates_it_when_run_small(tmp_path, capsys):
    world = tmp_path / "world"
    assert (
        main(
            ["world", "build", "--output", str(world), "--train-images", "32", "--eval-images", "8"]
            + ["--vae-steps", "2"]
        )
        == 0
    )
    build = json.loads((world / "build.json").read_text())
    assert (build["train_images"], build["eval_images"], build["vae_steps"]) == (32, 8, 2)
    # The VAE's ceiling is rated on the held-out images (all 8 here).
    assert build["vae_round_trip"]["n"] == 8
    assert 0.0 <= build["vae_round_trip"]["faithful"] <= build["vae_round_trip"]["colour"] <= 1.0
    pipeline = StableDiffusionPipeline.from_pretrained(world / "base", safety_checker=None)
    # 32 px images: a 2-level VAE (scale 2) over 16x16 latents, with its own latent scale.
    assert pipeline.vae_scale_factor == 2 and pipeline.unet.config.sample_size == 16
    assert pipeline.vae.config.scaling_factor > 0 and pipeline.vae.config.scaling_factor != 0.18215
    assert pipeline.unet.config.cross_attention_dim == pipeline.text_encoder.config.hidden_size

    report, grid = tmp_path / "rates.json", tmp_path / "grid.png"
    args = ["world", "evaluate", "--checkpoint", str(world / "base"), "--data", str(world / "data")]
    assert main(args + ["--limit", "2", "--steps", "2", "--report", str(report), "--grid", str(grid)]) == 0
    rates = json.loads(report.read_text())
    assert rates["n"] == 2 and rates["split"] == "dev"
    assert all(0.0 <= rates[name] <= 1.0 for name in ("faithful", "colour", "shape", "count", "emotion"))
    assert rates["faithful"] <= min(rates["colour"], rates["shape"])
    # Two 32 px images, 4x enlarged, in one row of the grid's 8 columns.
    with Image.open(grid) as image:
        assert image.size == (8 * 32 * 4, 32 * 4)
    assert "on 2 dev captions: faithful" in capsys.readouterr().out


def test_world_cli_names_the_field_when_a_limit_is_not_positive(tmp_path, capsys):
    code = main(["world", "evaluate", "--checkpoint", str(tmp_path), "--data", str(tmp_path), "--limit", "0"])
    assert code == 2
    assert "`limit` must be positive" in capsys.readouterr().err


def test_world_vae_samples_equal_means_when_trained(tmp_path):
    write_dataset(tmp_path, train_images=16, eval_images=4)
    vae, mse = train_vae(tmp_path, steps=2, batch_size=4)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        posterior = vae.encode(images).latent_dist
    # `s2i train diffusion` encodes with `sample()`: the pinned variance makes that the mean.
    assert torch.allclose(posterior.sample(), posterior.mean, atol=1e-5)
    assert mse > 0.0


def test_world_vae_round_trip_rates_every_held_out_image_when_limited(tmp_path):
    write_dataset(tmp_path, train_images=16, eval_images=6)
    vae, _ = train_vae(tmp_path, steps=1, batch_size=4)
    rates = vae_round_trip_faithfulness(vae, tmp_path, limit=5)
    assert rates["n"] == 5
    assert rates["faithful"] <= min(rates["colour"], rates["shape"])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (BaseSettings(vae_steps=0), "`vae_steps` must be positive"),
        (BaseSettings(vae_learning_rate=0.0), "`vae_learning_rate` must be positive"),
        (BaseSettings(vae_channels=(16,)), "`vae_channels` must be two or more multiples of 16"),
        (BaseSettings(unet_channels=(32, 48)), "`unet_channels` must be two or more multiples of 32"),
        (BaseSettings(vae_channels=(16,) * 4, unet_channels=(32,) * 4), "halve 32 px more often"),
    ],
)
def test_world_base_settings_name_the_field_when_invalid(settings, message):
    with pytest.raises(ValueError, match=message):
        settings.validate()


def test_world_text_encoder_outputs_differ_only_at_the_changed_word_when_captions_differ_in_one(tmp_path):
    from s2i.stages.diffusion.tokenizer_files import build_clip_tokenizer
    from s2i.training.world_model import _text_encoder

    tokenizer = build_clip_tokenizer(tmp_path / "tokenizer")
    ids = tokenizer(
        ["a red circle, bright sunshine", "a blue circle, bright sunshine"],
        padding="max_length",
        max_length=tokenizer.model_max_length,
        return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        hidden = _text_encoder(tokenizer, seed=1)(ids).last_hidden_state
    same = torch.isclose(hidden[0], hidden[1], atol=1e-5).all(dim=-1)
    # Position 2 is the colour word (after <|startoftext|> and "a"): the only output that changes.
    assert same.tolist() == [index != 2 for index in range(ids.shape[1])]
    assert torch.nn.functional.cosine_similarity(hidden[0, 2], hidden[1, 2], dim=0) < 0.9


def test_makefile_trains_the_world_with_the_default_templates_negative_prompt_when_captions_drop():
    import re

    from s2i.pipeline.prompt import StyleTemplates
    from tests.conftest import ROOT

    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    (negative,) = re.findall(r"^WORLD_NEGATIVE_PROMPT := (.+)$", makefile, flags=re.MULTILINE)
    templates = StyleTemplates.load()
    assert negative == templates.templates[templates.default_template].negative
    assert '--unconditional-prompt "$(WORLD_NEGATIVE_PROMPT)"' in makefile
