"""The Optimum peer on the session's tiny checkpoints: same tokens and (near) same pixels as the reference."""

import os

import numpy as np
import pytest

from s2i.audio import prepare_audio
from s2i.benchmarks.cpu import process_tree_cpu_s
from s2i.benchmarks.peers import OptimumDiffusion, OptimumWhisper, comparison_markdown, peer_ratios, run_peer
from tests.conftest import BUILD_DIR, MAX_NEW_TOKENS


@pytest.fixture(scope="module")
def work_dir():
    return BUILD_DIR / "optimum"


@pytest.mark.slow
def test_optimum_whisper_peer_gives_the_references_tokens_when_run_on_the_same_checkpoint(
    checkpoints, hindi_clips, work_dir
):
    from s2i.stages.whisper.reference import WhisperReference

    peer = OptimumWhisper(checkpoints["whisper"], work_dir)
    reference = WhisperReference(checkpoints["whisper"])
    for clip in hindi_clips[:2]:
        samples = prepare_audio(clip.samples, clip.sample_rate_hz)
        assert peer.generate(samples, max_new_tokens=MAX_NEW_TOKENS) == reference.generate(
            samples, max_new_tokens=MAX_NEW_TOKENS
        )


@pytest.mark.slow
def test_optimum_diffusion_peer_matches_reference_pixels_when_same_seed(checkpoints, work_dir):
    from s2i.stages.diffusion.reference import DiffusionReference

    peer = OptimumDiffusion(checkpoints["diffusion"], work_dir)
    (image,) = peer.generate(["a red fox"], ["blurry"], seed=3, num_inference_steps=3)
    expected = DiffusionReference(checkpoints["diffusion"]).generate(
        "a red fox", negative_prompt="blurry", seed=3, num_inference_steps=3
    )
    assert image.shape == expected.shape and image.dtype == np.uint8
    # ONNX Runtime vs PyTorch float32: a pixel may round the other way, no more.
    assert np.abs(image.astype(int) - expected.astype(int)).max() <= 2
    assert image.std() > 0


@pytest.mark.slow
def test_optimum_diffusion_peer_gives_each_threads_own_image_when_calls_run_at_once(checkpoints, work_dir):
    # One pipeline from several threads (the peer at concurrency 8): the tiny checkpoint's PNDM
    # scheduler keeps per-call state, which threads sharing it corrupted.
    from concurrent.futures import ThreadPoolExecutor

    peer = OptimumDiffusion(checkpoints["diffusion"], work_dir)
    seeds = list(range(6))
    alone = [peer.generate(["a red fox"], [""], seed=seed, num_inference_steps=4)[0] for seed in seeds]
    with ThreadPoolExecutor(len(seeds)) as pool:
        together = list(
            pool.map(lambda seed: peer.generate(["a red fox"], [""], seed=seed, num_inference_steps=4)[0], seeds)
        )
    assert peer.pipeline.scheduler.__class__.__name__ == "PNDMScheduler"
    for image, expected in zip(together, alone, strict=True):
        assert image.shape == (64, 64, 3)
        np.testing.assert_array_equal(image, expected)
    assert len({image.tobytes() for image in together}) == len(seeds)


def test_run_peer_reports_throughput_latency_and_cpu_seconds_when_run_in_threads():
    calls = []

    def run(index: int) -> None:
        calls.append(index)
        sum(i * i for i in range(20_000))  # some CPU time

    result = run_peer(run, requests=6, concurrency=3)
    assert sorted(calls) == [0, 0, 1, 2, 3, 4, 5]  # a warm-up call, then each request once
    assert result["throughput_per_s"] == pytest.approx(6 / result["wall_s"])
    assert result["cpu_s_per_request"] == pytest.approx(result["cpu_s"] / 6)
    assert result["cpu_s"] > 0 and result["cores"] > 0
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["max"]


def test_peer_ratios_and_side_by_side_table_when_peer_ran_at_two_levels():
    def latency(p50):
        return {"p50": p50, "p90": p50, "mean": p50, "max": p50}

    runs = [
        {"mode": "closed", "concurrency": 1, "completed": 4, "throughput_per_s": 0.5, "latency_ms": latency(2000)},
        {"mode": "closed", "concurrency": 8, "completed": 8, "throughput_per_s": 1.2, "latency_ms": latency(6000)},
    ]
    peer = {"cpu_s_per_request": 3.0, "cores": 1.5}
    peers = {
        "optimum": [
            {"concurrency": 1, "throughput_per_s": 0.25, "latency_ms": latency(4000), **peer},
            {"concurrency": 8, "throughput_per_s": 0.6, "latency_ms": latency(9000), **peer},
        ]
    }
    ratios = peer_ratios(runs, peers)
    assert ratios == {"optimum": {"throughput_at_1": 2.0, "latency_p50_at_1": 0.5, "throughput_at_8": 2.0}}
    table = "\n".join(comparison_markdown({"runs": runs, "peers": peers, "peer_ratios": ratios}))
    assert "| optimum (in-process) | 8 | 0.600 | 9000 | 3.00 | 1.50 |" in table
    assert "| served | 1 | 0.500 | 2000 | – | – |" in table
    assert "Served / optimum: throughput at 1: 2.00×, latency p50 at 1: 0.50×, throughput at 8: 2.00×." in table


def test_process_tree_cpu_s_counts_this_process_and_is_none_when_pid_gone():
    sum(i * i for i in range(200_000))
    assert process_tree_cpu_s(os.getpid()) > 0
    assert process_tree_cpu_s(2**22 + 12345) is None
