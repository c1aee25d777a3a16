"""The prepared GPU check's dry run: the same script and code, tiny dimensions, on the CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGES = {"whisper_encoder", "whisper_decode_step", "text_encoder", "unet_step", "vae_decode"}
# The python-torch target's runners; their CUDA-graph variants exist on CUDA only.
RUNNER_STAGES = {"torch_runner_decode_step", "torch_runner_decode_step_host_copies", "torch_runner_unet_step"}


@pytest.mark.slow
def test_gpu_check_dry_run_writes_a_row_per_stage_and_batch_when_run_on_cpu(tmp_path):
    environment = {**os.environ, "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(
        [str(ROOT / "scripts" / "gpu-check.sh"), "--dry-run", "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        env=environment,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["mode"].startswith("dry-run") and results["dtype"] == "float32"
    rows = {(row["stage"], row["batch"]): row for row in results["rows"]}
    assert {(stage, batch) for stage in STAGES for batch in (1, 2)} <= set(rows)
    assert {("sd_end_to_end_2_steps", 1), ("sd_end_to_end_2_steps", 2)} <= set(rows)
    assert {("sd_loop_eager_2_steps", 1), ("sd_loop_eager_2_steps", 2)} <= set(rows)
    assert not [row for row in rows.values() if "error" in row]
    # The python-torch target's decoder, timed and checked against transformers on the same weights (fp32: exact).
    assert [rows[("whisper_decode_step_static", batch)]["tokens_equal_generate"] for batch in (1, 2)] == [1.0, 1.0]
    for (stage, batch), row in rows.items():
        # A decoding step is a difference of two timings; the rest are timings themselves.
        assert row["ms"] >= 0 if stage == "whisper_decode_step" else row["ms"] > 0
        assert abs(row["ms_per_item"] * batch - row["ms"]) < 1e-6 * max(1.0, row["ms"])
    table = (tmp_path / "results.md").read_text()
    assert "| unet_step | 2 |" in table and completed.stdout.endswith(table)
    assert {(stage, batch) for stage in RUNNER_STAGES for batch in (1, 2)} <= set(rows)
    assert not [stage for stage, _ in rows if stage.endswith("_cuda_graphs")]
    assert all(rows[stage, batch]["graphs_captured"] == 0 for stage in RUNNER_STAGES for batch in (1, 2))
