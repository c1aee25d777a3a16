"""The repository loads and answers in exactly the environment the `server` image has.

An image-equivalent environment (tests/deploy/image_env.py: the base image's
Python from pyenv, exactly the `server` stage's pip lines, the project installed
with ``--no-deps``) serves the session's repository with the embedded
tritonserver; every model must load, and a pipeline request must give the values
the normal environment's server gives. The stand-ins are declared in
``image_env``: the embedded server for the NGC binary, and the
``python-onnxruntime`` target (ONNX Runtime for Python) for Triton's native
onnxruntime backend, which the embedded server lacks.

The `converter` stage's environment (server + its own lines) must run the
conversion: ``s2i build-tiny`` and ``s2i convert --target onnxruntime``, the
`cpu-dev` overlay's conversion.

Slow on a fresh machine (the environments download torch); cached in ~/.cache/s2i/image-env.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from s2i.client import Client, InvalidRequestError
from s2i.pipeline.steps import decode_png
from tests.conftest import BUILD_DIR, MAX_NEW_TOKENS
from tests.deploy import dockerfile
from tests.deploy.image_env import ONNXRUNTIME_STAND_IN, SERVER_STAND_IN, ImageEnv, build_stage_env

pytestmark = pytest.mark.slow

LAUNCHER = Path(__file__).with_name("serve_in_env.py")
OPTIONS = dict(seed=23, num_inference_steps=2, max_new_tokens=MAX_NEW_TOKENS // 3, return_transcript=True)
# Packages only the converter installs: the server environment must not have them, or it
# would hide a served module that imports one (the stand-ins are installed without them).
CONVERTER_ONLY_MODULES = ("optimum", "onnx", "whisper", "open_clip")


@pytest.fixture(scope="module")
def server_env() -> ImageEnv:
    return build_stage_env("server", extra=[("--no-deps", SERVER_STAND_IN), (ONNXRUNTIME_STAND_IN,)])


@pytest.fixture(scope="module")
def converter_env(server_env) -> ImageEnv:
    return build_stage_env("converter", base=server_env)


def _post_json(url: str, body: dict | None = None, headers: dict | None = None) -> object:
    request = urllib.request.Request(url, data=json.dumps(body or {}).encode(), method="POST", headers=headers or {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def image_server(server_env, model_repository) -> Iterator[dict]:
    """The embedded server run by the image environment's Python on the session's repository."""
    log_file = BUILD_DIR / "deploy" / "image-env-tritonserver.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [str(server_env.python), str(LAUNCHER), str(model_repository.repository), str(log_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=server_env.environment(),
    )
    try:
        line = process.stdout.readline()
        ready = json.loads(line) if line else {"error": process.stderr.read()}
        if "error" in ready:
            pytest.fail(f"the image environment's server did not start:\n{ready['error']}")
        yield ready
    finally:
        process.stdin.close()
        process.wait(timeout=120)


@pytest.fixture(scope="module")
def image_answer(image_server, hindi_clips):
    with Client(image_server["grpc"], timeout_s=600) as client:
        return client.speech_to_image(hindi_clips[0].wav_bytes, **OPTIONS)


def test_environment_python_is_base_image_python_when_built(server_env):
    version = server_env.run(str(server_env.python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])")

    assert version.stdout.strip() == dockerfile.ngc_python(dockerfile.base_image("server")) == "3.12"


@pytest.mark.parametrize("module", CONVERTER_ONLY_MODULES)
def test_server_environment_lacks_converter_package_when_built(server_env, module):
    found = server_env.run(str(server_env.python), "-c", f"import importlib.util as u; print(u.find_spec('{module}'))")

    assert found.stdout.strip() == "None"


def test_server_runs_environment_python_when_started(server_env, image_server):
    assert Path(image_server["python"]).parent == server_env.python.parent


def test_every_model_loads_when_served_in_image_environment(image_server, model_repository):
    index = _post_json(f"http://{image_server['http']}/v2/repository/index", headers=image_server["http_admin_headers"])
    expected = {path.name for path in model_repository.repository.iterdir() if path.is_dir()}

    assert {entry["name"]: entry.get("state") for entry in index} == dict.fromkeys(expected, "READY")


def test_pipeline_answers_like_normal_environment_when_served_in_image_environment(image_answer, client, hindi_clips):
    normal = client.speech_to_image(hindi_clips[0].wav_bytes, **OPTIONS)

    assert image_answer.text and image_answer.transcript
    assert (image_answer.text, image_answer.transcript) == (normal.text, normal.transcript)
    assert (image_answer.emotion, image_answer.prompt, image_answer.seed) == (
        normal.emotion,
        normal.prompt,
        normal.seed,
    )
    for label, probability in normal.emotion_scores.items():
        assert image_answer.emotion_scores[label] == pytest.approx(probability, abs=1e-4)
    image, expected = decode_png(image_answer.png).astype(int), decode_png(normal.png).astype(int)
    assert image.shape == expected.shape
    assert np.abs(image - expected).max() <= 1


def test_image_environment_server_stays_up_when_request_is_bad(image_server, image_answer, hindi_clips):
    with Client(image_server["grpc"], timeout_s=600) as client:
        with pytest.raises(InvalidRequestError, match="`audio_bytes`"):
            client.speech_to_image(b"not audio", **OPTIONS)
        again = client.speech_to_image(hindi_clips[0].wav_bytes, **OPTIONS)

    assert again.text == image_answer.text


def test_cli_help_runs_when_in_server_environment(server_env):
    completed = server_env.run(str(server_env.path / "bin" / "s2i"), "--help", check=False)

    assert completed.returncode == 0, completed.stderr
    assert "convert" in completed.stdout and "serve" in completed.stdout


def server_exec_commands() -> list[list[str]]:
    """Commands the `gpu` overlay's server container execs in the server image (probes, preStop)."""
    from tests.k8s.test_manifests import server

    container = server("gpu")
    hooks = [container.get(probe, {}) for probe in ("startupProbe", "readinessProbe", "livenessProbe")]
    hooks.append(container.get("lifecycle", {}).get("preStop", {}))
    return [hook["exec"]["command"] for hook in hooks if "exec" in hook]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="`kubectl` renders the gpu overlay")
def test_server_exec_commands_start_when_in_server_environment(server_env):
    # A probe that cannot even start in the server image keeps every pod unready.
    commands = server_exec_commands()
    assert commands, "the server container execs nothing (not even its preStop sleep)"
    for command in commands:
        if command[0] != "s2i":
            assert command[0] in {"sleep", "sh"}, f"{command}: not a base-image tool"
            continue
        subcommand = [word for word in command[1:] if not word.startswith("-")][:1]
        completed = server_env.run(str(server_env.path / "bin" / "s2i"), *subcommand, "--help", check=False)
        assert completed.returncode == 0, f"{command} cannot start in the server image:\n{completed.stderr[-2000:]}"


def test_cli_help_runs_when_in_converter_environment(converter_env):
    completed = converter_env.run(str(converter_env.path / "bin" / "s2i"), "--help", check=False)

    assert completed.returncode == 0, completed.stderr
    assert "convert" in completed.stdout and "build-tiny" in completed.stdout


def test_conversion_module_imports_when_in_converter_environment(converter_env):
    script = "import s2i.conversion.convert as c, s2i.conversion.repository as r; print(','.join(r.TARGETS))"
    completed = converter_env.run(str(converter_env.python), "-c", script, check=False)

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "python-onnxruntime,onnxruntime,onnxruntime-gpu,tensorrt,python-torch"


def _rebased(argument: str, mounts: dict[str, Path]) -> str:
    """A pod path (``/checkpoints/tiny/whisper``) under the local folder standing in for its mount."""
    for mount, local in mounts.items():
        if argument == mount or argument.startswith(mount + "/"):
            return str(local) + argument[len(mount) :]
    return argument


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="`kubectl` renders the cpu-dev overlay")
def test_cpu_dev_init_containers_run_when_in_converter_environment(converter_env, tmp_path):
    # Exactly the commands the cpu-dev overlay's init containers run (as rendered), with the
    # pod's mounts replaced by local folders.
    from tests.k8s.test_conversion import BUILD_TINY_CONTAINER, s2i_convert_args
    from tests.k8s.test_manifests import pod_spec

    (build,) = [c for c in pod_spec("cpu-dev")["initContainers"] if c["name"] == BUILD_TINY_CONTAINER]
    mounts = {"/checkpoints": tmp_path / "checkpoints", "/models": tmp_path / "models"}
    s2i = str(converter_env.path / "bin" / "s2i")
    commands = [
        [s2i, *build["command"][1:], *build["args"]],
        [s2i, "convert", *s2i_convert_args("cpu-dev")],
    ]
    for command in commands:
        completed = converter_env.run(*[_rebased(arg, mounts) for arg in command], timeout_s=1800, check=False)
        assert completed.returncode == 0, f"{command}:\n{completed.stderr[-3000:]}"

    repository = mounts["/models"]
    assert (repository / "speech_to_image" / "config.pbtxt").is_file()
    assert 'platform: "onnxruntime_onnx"' in (repository / "unet" / "config.pbtxt").read_text()
