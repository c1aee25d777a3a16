"""`s2i world build` and `s2i world evaluate`, bounded: a few images and VAE steps, two captions."""

import json

from diffusers import StableDiffusionPipeline

from s2i.cli import main


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
    pipeline = StableDiffusionPipeline.from_pretrained(world / "base", safety_checker=None)
    # 32 px images: a 3-level VAE (scale 4) over 8x8 latents, with its own latent scale.
    assert pipeline.vae_scale_factor == 4 and pipeline.unet.config.sample_size == 8
    assert pipeline.vae.config.scaling_factor > 0 and pipeline.vae.config.scaling_factor != 0.18215
    assert pipeline.unet.config.cross_attention_dim == pipeline.text_encoder.config.hidden_size

    report, grid = tmp_path / "rates.json", tmp_path / "grid.png"
    args = ["world", "evaluate", "--checkpoint", str(world / "base"), "--data", str(world / "data")]
    assert main(args + ["--limit", "2", "--steps", "2", "--report", str(report), "--grid", str(grid)]) == 0
    rates = json.loads(report.read_text())
    assert rates["n"] == 2 and rates["split"] == "dev"
    assert all(0.0 <= rates[name] <= 1.0 for name in ("faithful", "colour", "shape", "count", "emotion"))
    assert rates["faithful"] <= min(rates["colour"], rates["shape"])
    assert grid.stat().st_size > 0
    assert "on 2 dev captions: faithful" in capsys.readouterr().out


def test_world_cli_names_the_field_when_a_limit_is_not_positive(tmp_path, capsys):
    code = main(["world", "evaluate", "--checkpoint", str(tmp_path), "--data", str(tmp_path), "--limit", "0"])
    assert code == 2
    assert "`limit` must be positive" in capsys.readouterr().err
