"""Generated configs load under the config schema of every Triton release that serves them.

Configs are rendered through tritonclient 2.73's schema; the embedded server is Triton 2.51
(release 24.10) and the production image runs the Dockerfile's NGC release. Each release's
``model_config.proto`` is pinned in ``triton_schemas/`` and compiled here, offline, into a
descriptor pool of its own (every release declares the same ``inference`` package).
"""

from __future__ import annotations

import functools
import json
import re
import tempfile
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from s2i.conversion.repository import TARGETS, stage_model_spec
from s2i.model_repository.config import parse_config, render_config
from s2i.stages.whisper.specs import whisper_components

SCHEMAS = Path(__file__).parent / "triton_schemas"
DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"
EMBEDDED_RELEASE = "r24.10"  # tritonserver 2.51 of nvidia-pytriton 0.7.0


def image_release() -> str:
    """The NGC release the production image is built from (``r26.03`` for ``...tritonserver:26.03-py3``)."""
    match = re.search(r"^ARG TRITON_IMAGE=\S+:(\d+\.\d+)-py3$", DOCKERFILE.read_text(), re.MULTILINE)
    assert match, "the Dockerfile has no `ARG TRITON_IMAGE=...:YY.MM-py3`"
    return f"r{match.group(1)}"


RELEASES = sorted({EMBEDDED_RELEASE, image_release()})


@functools.cache
def model_config_class(release: str) -> type:
    """``inference.ModelConfig`` of ``release``'s pinned schema, compiled in a pool of its own."""
    from grpc_tools import protoc

    proto = f"model_config_{release}.proto"
    assert (SCHEMAS / proto).is_file(), f"no pinned schema for {release}: copy it to {SCHEMAS} (see its README)"
    with tempfile.TemporaryDirectory() as out:
        descriptor_set = Path(out) / "schema.pb"
        status = protoc.main(["protoc", f"--proto_path={SCHEMAS}", f"--descriptor_set_out={descriptor_set}", proto])
        assert status == 0, f"protoc could not compile {proto}"
        files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def assert_loads_under(release: str, text: str, where: str) -> None:
    """``text`` parses under ``release``'s schema (unknown fields refused) and means what 2.73's parse means."""
    try:
        config = text_format.Parse(text, model_config_class(release)())
    except text_format.ParseError as e:
        pytest.fail(f"{where} does not load in Triton {release}: {e}")
    expected = parse_config(text).SerializeToString(deterministic=True)
    # Same field numbers and values: the release reads the config as it was rendered.
    assert config.SerializeToString(deterministic=True) == expected, where


@pytest.mark.parametrize("release", RELEASES)
def test_generated_repository_configs_load_under_release_schema_when_converted(release, model_repository):
    configs = sorted(Path(model_repository.repository).glob("*/config.pbtxt"))
    assert len(configs) >= 10, configs

    for path in configs:
        assert_loads_under(release, path.read_text(), str(path.relative_to(model_repository.repository)))


@pytest.mark.parametrize("release", RELEASES)
@pytest.mark.parametrize("target", TARGETS)
def test_stage_configs_load_under_release_schema_for_every_target(release, target, checkpoints):
    components = whisper_components(json.loads((checkpoints["whisper"] / "config.json").read_text()))

    for component in components:
        text = render_config(stage_model_spec(component, target))
        assert_loads_under(release, text, f"{component.model_name} ({target})")


def test_pinned_schema_refuses_a_field_the_release_does_not_know():
    # The check has teeth: 26.03 added `max_inflight_requests` to ensembles; 24.10 refuses it.
    text = 'name: "e"\nplatform: "ensemble"\nensemble_scheduling { max_inflight_requests: 4 }\n'
    text_format.Parse(text, model_config_class("r26.03")())
    with pytest.raises(text_format.ParseError, match="max_inflight_requests"):
        text_format.Parse(text, model_config_class("r24.10")())


def test_image_release_has_a_pinned_schema_when_the_dockerfile_moves():
    assert (SCHEMAS / f"model_config_{image_release()}.proto").is_file()
