"""The fine-tuned demo Whisper (``make demo-trained-whisper``) served equals the in-process reference.

Runs where the build cache holds the fine-tune (``build/demo-trained/whisper-hindi``, or
``S2I_TRAINED_WHISPER``); CI does not build it (a 30-minute CPU job), so there the test skips.
"""

import csv
import os
from pathlib import Path

import pytest
import soundfile

ROOT = Path(__file__).resolve().parents[2]
TRAINED = Path(os.environ.get("S2I_TRAINED_WHISPER", ROOT / "build" / "demo-trained" / "whisper-hindi"))
CORPUS = Path(os.environ.get("S2I_HINDI_CORPUS", ROOT / "build" / "demo-trained" / "hindi-corpus"))
CLIPS = 2

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (TRAINED / "model.safetensors").is_file() or not (CORPUS / "test.tsv").is_file(),
        reason=f"no fine-tuned Whisper at {TRAINED}; run `make demo-trained-whisper`",
    ),
]


def _test_clips() -> list[dict[str, str]]:
    with (CORPUS / "test.tsv").open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:CLIPS]


@pytest.mark.parametrize("task", ["translate", "transcribe"])
def test_trained_whisper_serves_the_reference_tokens_when_converted(task, served_trained):
    from s2i.audio import prepare_audio

    client, reference = served_trained
    for row in _test_clips():
        wav = CORPUS / "clips" / row["path"]
        samples, rate = soundfile.read(wav, dtype="float32")
        expected_tokens, expected_text = reference.generate(prepare_audio(samples, rate), task=task, max_new_tokens=96)
        result = client.translate(wav.read_bytes(), task=task, max_new_tokens=96)
        # The served ids end with <|endoftext|> when the model stops; `generate` leaves it out.
        eot = reference.processor.tokenizer.eos_token_id
        assert [token for token in result.token_ids if token != eot] == expected_tokens
        assert result.text.strip() == expected_text.strip()
        # The fine-tune answers in the task's script: English words, or Devanagari.
        letters = [c for c in result.text if c.isalpha()]
        assert letters and all(c.isascii() for c in letters) == (task == "translate"), result.text


@pytest.fixture(scope="module")
def served_trained(tmp_path_factory):
    from s2i.client import Client
    from s2i.conversion.convert import convert
    from s2i.server import ServerOptions, TritonServer
    from s2i.stages.whisper.reference import WhisperReference

    work = tmp_path_factory.mktemp("trained-whisper")
    report = convert({"whisper": TRAINED}, work / "repository", work_dir=work / "onnx")
    assert all(diff < 1e-3 for diff in report.max_abs_diff.values()), report.max_abs_diff
    options = ServerOptions(str(report.repository)).with_free_ports()
    with TritonServer(options, log_file=work / "tritonserver.log") as server, Client(server.grpc_url) as client:
        yield client, WhisperReference(TRAINED)
