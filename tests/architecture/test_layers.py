from pathlib import Path

import pytest

from tests.architecture.layers import (
    APP,
    BUILD,
    CLIENT,
    CORE,
    RUNTIME,
    import_graph,
    layer_of,
    package_dirs,
    violations,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def graph():
    return import_graph(package_dirs(ROOT))


def test_layers_hold_when_reading_the_whole_package(graph):
    assert len(graph) > 50, "the scan found too few modules; is package-dir read right?"
    assert violations(graph) == []


def test_layer_of_places_the_serving_runtime_below_conversion():
    assert layer_of("s2i.model_repository.python_models.whisper") == RUNTIME
    assert layer_of("s2i.stages.whisper.decoding") == RUNTIME
    assert layer_of("s2i.stages.whisper.export") == BUILD
    assert layer_of("s2i.conversion.convert") == BUILD
    assert layer_of("s2i.client.grpc_client") == CLIENT
    assert layer_of("s2i.names") == CORE
    assert layer_of("s2i.cli") == APP


def write_tree(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return {"s2i": root / "src/s2i", "s2i.conversion": root / "conversion", "s2i.client": root / "client"}


BASE_TREE = {
    "src/s2i/__init__.py": "",
    "src/s2i/names.py": "TEXT = 'text'\n",
    "src/s2i/stages/__init__.py": "",
    "src/s2i/stages/whisper/__init__.py": "",
    "src/s2i/stages/whisper/decoding.py": "from s2i import names\n",
    "conversion/__init__.py": "",
    "conversion/convert.py": "from s2i import names\n",
    "client/__init__.py": "from s2i import names\n",
}


def test_violations_are_empty_when_every_import_points_down(tmp_path):
    assert violations(import_graph(write_tree(tmp_path, BASE_TREE))) == []


def test_violations_name_the_edge_when_the_runtime_imports_conversion(tmp_path):
    tree = dict(BASE_TREE)
    tree["src/s2i/stages/whisper/decoding.py"] = "def f():\n    from s2i.conversion.convert import x\n"
    assert violations(import_graph(write_tree(tmp_path, tree))) == [
        "s2i.stages.whisper.decoding (runtime) imports s2i.conversion.convert (build)"
    ]


def test_violations_name_the_edge_when_the_client_imports_the_runtime(tmp_path):
    tree = dict(BASE_TREE)
    tree["client/__init__.py"] = "import s2i.stages.whisper.decoding\n"
    assert violations(import_graph(write_tree(tmp_path, tree))) == [
        "s2i.client (client) imports s2i.stages.whisper.decoding (runtime)"
    ]


def test_violations_report_a_cycle_when_two_modules_of_one_layer_import_each_other(tmp_path):
    tree = dict(BASE_TREE)
    tree["conversion/a.py"] = "from s2i.conversion import b\n"
    tree["conversion/b.py"] = "def f():\n    from s2i.conversion.a import g\n"
    assert violations(import_graph(write_tree(tmp_path, tree))) == [
        "import cycle: s2i.conversion.a -> s2i.conversion.b"
    ]


def test_violations_report_a_module_no_layer_places(tmp_path):
    tree = dict(BASE_TREE)
    tree["src/s2i/mystery.py"] = ""
    assert violations(import_graph(write_tree(tmp_path, tree))) == [
        "s2i.mystery: not placed in a layer (add it to LAYER_OF)"
    ]
