"""Conversion time and repository size per row of the support matrix, at tiny scale (the README's table).

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python -m tests.conversion.measure_matrix``.
Each row's checkpoint is converted alone, from an empty export cache (export,
validation against PyTorch and repository writing), into a repository of its own.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from s2i.conversion.convert import convert
from s2i.tiny import build_tiny_checkpoints
from tests.conftest import BUILD_DIR
from tests.conversion import matrix
from tests.conversion.test_served_matrix import SENTIMENT_LABELS, SIX_LABELS


def rows(root: Path) -> dict[str, tuple[str, Path]]:
    """Row name -> (stage, tiny checkpoint)."""
    tiny = build_tiny_checkpoints(BUILD_DIR / "checkpoints")
    return {
        "Whisper, project tiny (80 mels, 51865 tokens)": ("whisper", tiny["whisper"]),
        "Whisper large-v3 layout (128 mels, 51866 tokens)": (
            "whisper",
            matrix.whisper_layout(root / "whisper-large-v3", matrix.WHISPER_LARGE_V3),
        ),
        "Whisper large-v3-turbo layout (4:1 encoder:decoder layers)": (
            "whisper",
            matrix.whisper_layout(root / "whisper-large-v3-turbo", matrix.WHISPER_LARGE_V3_TURBO),
        ),
        "distil-whisper large-v2 layout (80 mels, 4:1 layers)": (
            "whisper",
            matrix.whisper_layout(root / "distil-whisper-large-v2", matrix.DISTIL_WHISPER_LARGE_V2, 99),
        ),
        "Emotion, project tiny (transformer, 8 RAVDESS labels)": ("emotion", tiny["emotion"]),
        "Emotion transformer, 6 labels, 128 mels": (
            "emotion",
            matrix.emotion_layout(
                root / "emotion-transformer-6", architecture="transformer", labels=SIX_LABELS, num_mel_bins=128
            ),
        ),
        "Emotion BiLSTM, 3 labels, 128 mels": (
            "emotion",
            matrix.emotion_layout(
                root / "emotion-bilstm-3", architecture="bilstm", labels=SENTIMENT_LABELS, num_mel_bins=128
            ),
        ),
        "SD 1.x, project tiny (epsilon, PNDM, 64 px)": ("diffusion", tiny["diffusion"]),
        "SD 2.1 layout (v-prediction, DDIM, OpenCLIP-style, 96 px)": (
            "diffusion",
            matrix.sd2_layout(root / "sd21", matrix.SD21_SCHEDULER),
        ),
        "SD-Turbo layout (trailing Euler)": (
            "diffusion",
            matrix.sd2_layout(root / "sd-turbo", matrix.SD_TURBO_SCHEDULER, seed=3),
        ),
        "LCM (time_cond_proj_dim, LCMScheduler)": ("diffusion", matrix.lcm_layout(root / "lcm")),
    }


def main() -> None:
    """Print one Markdown table row per matrix row."""
    root = BUILD_DIR / "checkpoints-matrix"
    with tempfile.TemporaryDirectory(dir=BUILD_DIR) as scratch:
        print("| row | conversion (s) | repository (MiB) |")  # noqa: T201 - this module's output
        print("|---|---|---|")  # noqa: T201
        for name, (stage, checkpoint) in rows(root).items():
            work = Path(scratch) / "onnx"
            started = time.perf_counter()
            report = convert({stage: checkpoint}, Path(scratch) / "repository", work_dir=work)
            seconds = time.perf_counter() - started
            size = sum(path.stat().st_size for path in report.repository.rglob("*") if path.is_file())
            print(f"| {name} | {seconds:.1f} | {size / 2**20:.1f} |")  # noqa: T201
            shutil.rmtree(work)


if __name__ == "__main__":
    main()
