"""The ``s2i`` command itself: fast to ask, quiet unless asked."""

import subprocess
import sys
from pathlib import Path

import s2i

S2I = [str(Path(sys.executable).with_name("s2i"))]


def test_version_prints_the_package_version():
    completed = subprocess.run([*S2I, "--version"], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == f"s2i {s2i.__version__}"


def test_help_does_not_import_torch_when_asked():
    code = "import sys\nfrom s2i.cli import build_parser\nbuild_parser()\nprint('torch' in sys.modules)"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "False"


def test_convert_prints_only_its_own_lines_when_not_verbose(checkpoints, tmp_path):
    completed = subprocess.run(
        [
            *S2I,
            "convert",
            "--emotion",
            str(checkpoints["emotion"]),
            "--output",
            str(tmp_path / "repository"),
            "--work-dir",
            str(tmp_path / "onnx"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = (completed.stdout + completed.stderr).splitlines()
    assert lines[0].startswith("validated emotion_classifier_graph: max abs diff to PyTorch")
    assert lines[1].startswith("model repository: ")
    assert len(lines) == 2, lines
