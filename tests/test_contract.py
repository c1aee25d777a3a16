"""The generated contract: the committed docs page equals it, it matches the live server, its descriptors load."""

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

from google.protobuf import descriptor_pb2

from s2i import names
from s2i.contract import PUBLIC_MODELS, contract, descriptor_set, render_markdown

DOCS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "contract.md"


def test_contract_docs_page_equals_the_generated_page_when_regenerated(model_repository):
    generated = render_markdown(contract(model_repository.repository))
    assert DOCS_PAGE.read_text() == generated, (
        "docs/contract.md is stale: run `s2i contract --model-repository build/test/model_repository "
        "--format markdown -o docs/contract.md`"
    )


def test_contract_cli_writes_json_naming_every_output_and_which_inputs_are_optional(model_repository):
    completed = subprocess.run(
        [sys.executable, "-m", "s2i.cli", "contract", "--model-repository", str(model_repository.repository)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    data = json.loads(completed.stdout)
    assert list(data["models"]) == list(PUBLIC_MODELS)
    pipeline = data["models"][names.SPEECH_TO_IMAGE]
    assert len(pipeline["outputs"]) == 17
    steps = next(tensor for tensor in pipeline["inputs"] if tensor["name"] == names.NUM_INFERENCE_STEPS)
    assert steps == {
        "name": "num_inference_steps",
        "datatype": "INT32",
        "shape": [1, 1],
        "optional": True,
        "default": "the checkpoint's pipeline's: 50 (4 for an LCM)",
        "range": "1-150",
        "meaning": "Denoising steps.",
    }
    prompt = next(tensor for tensor in data["models"][names.DIFFUSION]["inputs"] if tensor["name"] == names.PROMPT)
    assert prompt["optional"] is False
    assert data["models"][names.SPEECH_TO_IMAGE_STREAM]["decoupled"] is True


def test_contract_matches_the_metadata_the_running_server_reports(triton_server, model_repository):
    data = contract(model_repository.repository)
    for model, entry in data["models"].items():
        with urllib.request.urlopen(f"http://{triton_server.http_url}/v2/models/{model}", timeout=30) as response:
            metadata = json.loads(response.read())
        for kind in ("inputs", "outputs"):
            served = {tensor["name"]: (tensor["datatype"], tensor["shape"][1:]) for tensor in metadata[kind]}
            written = {tensor["name"]: (tensor["datatype"], tensor["shape"][1:]) for tensor in entry[kind]}
            assert written == served, (model, kind)


def test_descriptor_set_holds_the_streaming_service_and_its_imports_first():
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set()).file
    assert [file.name for file in files] == ["model_config.proto", "grpc_service.proto"]
    (service,) = files[1].service
    assert service.name == "GRPCInferenceService"
    assert {"ModelInfer", "ModelStreamInfer", "ModelMetadata"} <= {method.name for method in service.method}
