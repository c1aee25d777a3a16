"""The light `speech2image-triton-client` wheel: built, installed into a clean venv without torch, used."""

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Packages the light client must never pull in.
HEAVY = ("torch", "diffusers", "transformers", "optimum", "onnxruntime", "pytriton")
OPTIONS = ["--seed", "3", "--steps", "2", "--max-new-tokens", "4"]


@pytest.fixture(scope="module")
def light_client(tmp_path_factory) -> Path:
    """A clean venv with only the light client wheel (and its dependencies) installed; its `bin/`."""
    work = tmp_path_factory.mktemp("light-client")
    built = subprocess.run(
        [sys.executable, str(ROOT / "dist" / "client" / "build.py"), "--output", str(work / "dist")],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    wheel = Path(built.stdout.strip().splitlines()[-1])
    venv.EnvBuilder(with_pip=True).create(work / "venv")
    bin_dir = work / "venv" / "bin"
    pip = [str(bin_dir / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, str(wheel)], check=True, timeout=600)
    return bin_dir


def installed(bin_dir: Path) -> dict:
    """Names of the installed distributions and the size of site-packages, from inside the venv."""
    script = (
        "import importlib.metadata as m, json, pathlib, sysconfig\n"
        "site = pathlib.Path(sysconfig.get_paths()['purelib'])\n"
        "size = sum(p.stat().st_size for p in site.rglob('*') if p.is_file())\n"
        "names = sorted({d.metadata['Name'].lower() for d in m.distributions()})\n"
        "print(json.dumps({'names': names, 'bytes': size}))\n"
    )
    completed = subprocess.run(
        [str(bin_dir / "python"), "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(completed.stdout)


@pytest.mark.slow
def test_light_client_installs_without_torch_and_reports_its_size(light_client, record_property):
    found = installed(light_client)
    assert "speech2image-triton-client" in found["names"]
    assert "tritonclient" in found["names"] and "grpcio" in found["names"]
    assert not [name for name in found["names"] if name.startswith(HEAVY)], found["names"]
    megabytes = found["bytes"] / 2**20
    record_property("light_client_site_packages_mib", round(megabytes, 1))
    print(f"light client venv site-packages: {megabytes:.1f} MiB, {len(found['names'])} distributions")
    # The full package is about 2.3 GB; the client's dependencies (grpcio, numpy, Pillow, ...) are far below that.
    assert megabytes < 300


@pytest.mark.slow
def test_light_client_cli_gets_what_the_full_client_gets_from_the_real_server(
    light_client, triton_server, client, hindi_clips, tmp_path
):
    clip = hindi_clips[0]
    audio = tmp_path / "clip.wav"
    audio.write_bytes(clip.wav_bytes)
    image = tmp_path / "image.png"
    command = [str(light_client / "s2i-client"), "generate", str(audio), "-o", str(image), *OPTIONS]
    completed = subprocess.run(
        [*command, "--url", triton_server.grpc_url], capture_output=True, text=True, timeout=600, check=True
    )
    expected = client.speech_to_image(clip.wav_bytes, seed=3, num_inference_steps=2, max_new_tokens=4)
    assert image.read_bytes() == expected.png
    assert f"translation: {expected.text}\n" in completed.stdout
    assert f"prompt: {expected.prompt}\n" in completed.stdout
    translated = subprocess.run(
        [str(light_client / "s2i-client"), "translate", str(audio), "--max-new-tokens", "4"]
        + ["--url", triton_server.grpc_url],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert translated.stdout == client.translate(clip.wav_bytes, max_new_tokens=4).text + "\n"
