"""The `s2i` command line, run as a user would (subprocess), against the session's real server."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from s2i.server import ServerOptions, TraceOptions, tritonserver_args

S2I = [sys.executable, "-m", "s2i.cli"]


def run_s2i(*args, timeout_s=300):
    return subprocess.run([*S2I, *args], capture_output=True, text=True, timeout=timeout_s)


def test_cli_translate_prints_the_servers_translation(triton_server, client, hindi_clips, tmp_path):
    speech = tmp_path / "speech.wav"
    speech.write_bytes(hindi_clips[0].wav_bytes)
    completed = run_s2i("translate", str(speech), "--url", triton_server.grpc_url, "--max-new-tokens", "8")
    assert completed.returncode == 0, completed.stderr
    expected = client.translate(hindi_clips[0].wav_bytes, max_new_tokens=8).text
    assert completed.stdout.strip() == expected
    assert expected


def test_cli_translate_exits_2_with_the_servers_message_when_file_is_not_audio(triton_server, tmp_path):
    garbage = tmp_path / "notes.txt"
    garbage.write_text("not audio at all " * 20)
    completed = run_s2i("translate", str(garbage), "--url", triton_server.grpc_url)
    assert completed.returncode == 2
    assert "`audio_bytes`: could not be decoded" in completed.stderr


def test_cli_serve_print_args_matches_tritonserver_args():
    completed = run_s2i("serve", "--model-repository", "/models", "--print-args")
    assert completed.returncode == 0
    assert completed.stdout.split() == ["tritonserver", *tritonserver_args(ServerOptions("/models"))]


def test_cli_serve_print_args_carries_trace_flags_when_tracing_to_a_file(tmp_path):
    trace_file = tmp_path / "trace.json"
    completed = run_s2i(
        *("serve", "--model-repository", "/models", "--print-args", "--trace-mode", "triton"),
        *("--trace-file", str(trace_file), "--trace-level", "TIMESTAMPS", "--trace-rate", "1"),
    )
    trace = TraceOptions(mode="triton", level="TIMESTAMPS", rate=1, file=str(trace_file))

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["tritonserver", *tritonserver_args(ServerOptions("/models", trace=trace))]


def test_cli_serve_exits_2_naming_the_field_when_file_mode_has_no_file():
    completed = run_s2i("serve", "--model-repository", "/models", "--print-args", "--trace-mode", "triton")

    assert completed.returncode == 2
    assert "`trace.file`" in completed.stderr


def test_cli_serve_print_args_adds_grpc_tls_when_certificate_and_key_are_given(tmp_path):
    from s2i.server import GrpcTls

    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    completed = run_s2i(
        "serve",
        "--model-repository",
        "/models",
        "--grpc-tls-cert",
        str(cert),
        "--grpc-tls-key",
        str(key),
        "--print-args",
    )
    assert completed.returncode == 0, completed.stderr
    expected = tritonserver_args(ServerOptions("/models", grpc_tls=GrpcTls(str(cert), str(key))))
    assert completed.stdout.split() == ["tritonserver", *expected]
    assert f"--grpc-server-cert={cert}" in completed.stdout


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--grpc-tls-cert", "cert.pem"], "`--grpc-tls-cert` and `--grpc-tls-key` go together"),
        (["--grpc-tls-cert", "missing.pem", "--grpc-tls-key", "missing.key"], "`grpc_tls.server_cert` 'missing.pem'"),
    ],
)
def test_cli_serve_exits_2_before_starting_when_tls_files_are_incomplete(flags, message):
    completed = run_s2i("serve", "--model-repository", "/models", *flags, "--print-args")
    assert completed.returncode == 2
    assert message in completed.stderr and "Traceback" not in completed.stderr


def test_cli_convert_exits_2_naming_the_stages_when_none_given(tmp_path):
    completed = run_s2i("convert", "--output", str(tmp_path / "repo"))
    assert completed.returncode == 2
    assert "--whisper" in completed.stderr


def test_cli_serve_runs_until_sigterm_and_exits_0(model_repository, tmp_path):
    options = ServerOptions(str(model_repository.repository)).with_free_ports()
    log_file = tmp_path / "server.log"
    process = subprocess.Popen(
        [
            *S2I,
            "serve",
            "--model-repository",
            options.model_repository,
            "--http-port",
            str(options.http_port),
            "--grpc-port",
            str(options.grpc_port),
            "--metrics-port",
            str(options.metrics_port),
            "--log-file",
            str(log_file),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = process.stdout.readline()
        assert f"gRPC 127.0.0.1:{options.grpc_port}" in line
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    # The server's own log went to the file, including its orderly shutdown.
    deadline = time.monotonic() + 5
    while "successfully unloaded" not in log_file.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "successfully loaded 'whisper'" in log_file.read_text()


@pytest.mark.parametrize("command", ["translate", "convert", "serve", "speak", "demo", "build-tiny", "import-whisper"])
def test_cli_help_lists_each_subcommand(command):
    assert command in run_s2i("--help").stdout


def test_cli_speak_writes_a_wav_file(tmp_path):
    import soundfile

    out = tmp_path / "hi.wav"
    completed = run_s2i("speak", "नमस्ते", "-o", str(out))
    assert completed.returncode == 0, completed.stderr
    samples, rate = soundfile.read(out)
    assert rate == 22_050
    assert len(samples) > rate * 0.3
    assert Path(completed.stdout.strip()) == out
