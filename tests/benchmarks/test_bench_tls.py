"""`s2i bench` against a real server that serves gRPC over TLS (self-signed) with its admin APIs behind a key.

One server on a sub-repository holding the streamed pipeline's models (no ensembles): the
`whisper` workload with statistics and recorded WAV + FLAC files, the `stream` workload without
statistics and with stability windows, and a plaintext client's error.
"""

import csv
import datetime
import ipaddress
import json
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile

from s2i.server import GrpcTls
from tests.conftest import ADMIN_KEY, BUILD_DIR, started_server, sub_repository

# What `speech_to_image_stream` calls through BLS (the whisper loop runs its decoder graphs itself).
STREAM_MODELS = [
    "speech_to_image_stream",
    "preprocess",
    "whisper",
    "whisper_encoder",
    "emotion_classifier",
    "emotion_classifier_graph",
    "prompt_composer",
    "text_encoder",
    "unet",
    "vae_decoder",
]
BENCH = ["bench", "--concurrency", "1", "--warmup", "1", "--baseline-requests", "0", "--max-new-tokens", "2"]


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost / 127.0.0.1 signed by its own key; its own root."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(model_repository, certificate):
    repository = sub_repository(model_repository.repository, BUILD_DIR / "bench-tls-repository", STREAM_MODELS)
    tls = GrpcTls(str(certificate[0]), str(certificate[1]))
    with started_server(repository, "bench-tls", grpc_tls=tls, restricted_api_key=ADMIN_KEY) as server:
        yield server


@pytest.fixture(scope="module")
def recorded_audio(hindi_clips, tmp_path_factory) -> Path:
    """A folder of recordings as a user would bring them: one WAV, one FLAC (22.05 kHz, resampled by the bench)."""
    folder = tmp_path_factory.mktemp("recordings")
    soundfile.write(folder / "first.wav", hindi_clips[0].samples, hindi_clips[0].sample_rate_hz)
    soundfile.write(folder / "second.flac", hindi_clips[1].samples, hindi_clips[1].sample_rate_hz)
    return folder


def bench(server, certificate, output: Path, *extra: str) -> subprocess.CompletedProcess:
    tls = ["--ssl", "--root-certificates", str(certificate[0])] if "--plaintext" not in extra else []
    extra = tuple(flag for flag in extra if flag != "--plaintext")
    command = [sys.executable, "-m", "s2i.cli", *BENCH, "--url", server.grpc_url, *tls, "--output", str(output)]
    return subprocess.run([*command, *extra], capture_output=True, text=True, timeout=600)


def test_bench_measures_whisper_over_tls_with_statistics_and_recorded_audio(
    tls_server, certificate, recorded_audio, tmp_path
):
    completed = bench(
        tls_server,
        certificate,
        tmp_path,
        *("--workload", "whisper", "--audio", str(recorded_audio), "--admin-key", ADMIN_KEY),
        *("--concurrency", "1,2", "--requests", "4"),
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["statistics"] == "on" and report["streaming"] is False
    for run in report["runs"]:
        assert run["completed"] == 4 and run["errors"] == 0, run["error_examples"]
        assert 0 < run["latency_ms"]["p50"] <= run["latency_ms"]["max"]
        assert run["server"]["whisper"]["requests"] == 4
        # The whisper loop batches clips: one encoder call may carry several, one row each.
        assert run["server"]["whisper_encoder"]["inferences"] == 4
    with (tmp_path / "report.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert [row["Concurrency"] for row in rows] == ["1", "2"]
    assert all(int(row["Server Compute Infer"]) > 0 and int(row["p50 latency"]) > 0 for row in rows)
    assert all(row["Errors"] == "0" and row["Stable"] == "" for row in rows)


def test_bench_streams_over_tls_without_statistics_until_windows_agree(
    tls_server, certificate, recorded_audio, tmp_path
):
    # 100 %: any two windows that both completed requests agree, so the run stops after exactly two.
    stability = ["--stability-percentage", "100", "--stability-windows", "2", "--max-trials", "3"]
    completed = bench(
        tls_server,
        certificate,
        tmp_path,
        *("--workload", "stream", "--steps", "2", "--preview-every", "1", "--requests", "2", "--no-stats"),
        *("--audio", str(recorded_audio / "first.wav"), "--admin-key", ADMIN_KEY, *stability),
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["statistics"] == "off" and report["workload"] == "speech_to_image_stream"
    (run,) = report["runs"]
    assert run["errors"] == 0, run["error_examples"]
    assert run["server"] == {}
    assert run["stability"]["stable"] is True and run["stability"]["windows_run"] == 2
    assert [window["completed"] for window in run["stability"]["windows"]] == [2, 2]
    marks = run["time_to_first_ms"]
    assert {kind: marks[kind]["count"] for kind in marks} == {"text": 4, "preview": 4, "image": 4}
    assert 0 < marks["text"]["p50"] <= marks["preview"]["p50"] <= marks["image"]["p50"]
    assert marks["image"]["p50"] == pytest.approx(run["latency_ms"]["p50"])
    with (tmp_path / "report.csv").open() as stream:
        (row,) = list(csv.DictReader(stream))
    assert row["Stable"] == "true" and row["Windows"] == "2" and row["Server Queue"] == ""
    assert 0 < int(row["p50 time to first text"]) <= int(row["p50 time to first image"])
    assert "| closed | 1 | preview | 4 |" in completed.stdout
    assert "Stability: windows of 2 requests; stable when the last 2 agree within 100 %" in completed.stdout


def test_bench_tells_a_plaintext_client_to_use_tls_and_the_server_stays_up(tls_server, certificate, tmp_path):
    completed = bench(tls_server, certificate, tmp_path, "--plaintext", "--workload", "whisper", "--requests", "1")
    assert completed.returncode == 2
    assert f"cannot reach {tls_server.grpc_url} over plaintext gRPC" in completed.stderr
    assert "pass `--ssl`" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert not (tmp_path / "report.json").exists()
    assert tls_server.is_alive() and tls_server.is_ready()
