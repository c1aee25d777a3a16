"""What the Dockerfile's stages install, read from the Dockerfile itself.

The tests build image-equivalent environments from this, so there is no second
list of packages to drift: a ``pip install`` line added to a stage is installed
in that stage's environment on the next run.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"

# NGC release (YY.MM) -> the Python of the container's Ubuntu. Sources: NVIDIA's
# release notes and compatibility matrix ("Ubuntu 24.04 including Python 3.12" from
# 24.12 on; 24.04-24.11 list Python 3.10.12 on Ubuntu 22.04; the CUDA DL 26.03 base of
# the 26.03 containers is Ubuntu 24.04 with Python 3.12). Ranges are inclusive and only
# cover releases someone checked: a newer tag fails until its row is checked and added.
NGC_PYTHON = (
    ((24, 4), (24, 11), "3.10"),
    ((24, 12), (26, 3), "3.12"),
)
NGC_TAG = re.compile(r"nvcr\.io/nvidia/tritonserver:(\d{2})\.(\d{2})-py3$")
# pip options that take a value (the next token).
PIP_VALUE_OPTIONS = {"--index-url", "-i", "--extra-index-url", "-c", "--constraint", "-r", "--requirement"}


@dataclasses.dataclass(frozen=True)
class PipInstall:
    """One ``pip install`` command of a stage."""

    stage: str
    requirements: tuple[str, ...]
    options: tuple[str, ...]
    local_paths: tuple[str, ...]

    @property
    def no_deps(self) -> bool:
        """Whether dependencies are left out (``--no-deps``)."""
        return "--no-deps" in self.options

    @property
    def index_url(self) -> str | None:
        """The ``--index-url`` this command installs from, if it sets one."""
        for flag in ("--index-url", "-i"):
            if flag in self.options:
                return self.options[self.options.index(flag) + 1]
        return None


@dataclasses.dataclass(frozen=True)
class Stage:
    """A ``FROM ... AS name`` stage: what it starts from and what it installs itself."""

    name: str
    base: str
    installs: tuple[PipInstall, ...]
    entrypoint: str | None


def logical_lines(text: str) -> list[str]:
    """Instructions with comment lines dropped and ``\\`` continuations joined."""
    kept = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return [line.strip() for line in "\n".join(kept).replace("\\\n", " ").splitlines() if line.strip()]


def _pip_installs(stage: str, run: str) -> list[PipInstall]:
    installs = []
    for command in re.split(r"&&|;", run):
        tokens = shlex.split(command)
        if "pip" not in tokens or "install" not in tokens:
            continue
        rest = tokens[tokens.index("install") + 1 :]
        options: list[str] = []
        requirements: list[str] = []
        paths: list[str] = []
        iterator = iter(rest)
        for token in iterator:
            if token in PIP_VALUE_OPTIONS:
                options += [token, next(iterator)]
            elif token.startswith("-"):
                options.append(token)
            elif token.startswith(("/", ".")):
                paths.append(token)
            else:
                requirements.append(token)
        installs.append(PipInstall(stage, tuple(requirements), tuple(options), tuple(paths)))
    return installs


def parse(text: str | None = None) -> tuple[dict[str, str], dict[str, Stage]]:
    """Global ``ARG`` defaults and the stages, by name, in file order."""
    lines = logical_lines(DOCKERFILE.read_text() if text is None else text)
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: dict | None = None

    def close() -> None:
        if current is not None:
            stages[current["name"]] = Stage(**current)

    for line in lines:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and current is None and "=" in rest:
            name, _, value = rest.partition("=")
            args[name.strip()] = value.strip()
        elif keyword == "FROM":
            close()
            match = re.fullmatch(r"(?:--\S+\s+)*(\S+)\s+AS\s+(\S+)", rest.strip(), flags=re.IGNORECASE)
            if not match:
                raise ValueError(f"`FROM {rest}`: every stage must be named (FROM image AS name).")
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], match[1])
            current = {"name": match[2], "base": base, "installs": (), "entrypoint": None}
        elif current is not None and keyword == "RUN":
            current["installs"] += tuple(_pip_installs(current["name"], rest))
        elif current is not None and keyword == "ENTRYPOINT":
            current["entrypoint"] = rest.strip()
    close()
    return args, stages


def lineage(stage: str, stages: dict[str, Stage] | None = None) -> list[Stage]:
    """``stage`` and the stages it is built FROM, root first."""
    stages = parse()[1] if stages is None else stages
    chain = [stages[stage]]
    while chain[0].base in stages:
        chain.insert(0, stages[chain[0].base])
    return chain


def stage_installs(stage: str) -> list[PipInstall]:
    """Every ``pip install`` that ends up in ``stage``, inherited ones first."""
    return [install for link in lineage(stage) for install in link.installs]


def base_image(stage: str = "server") -> str:
    """The external image ``stage`` is ultimately built FROM."""
    return lineage(stage)[0].base


def ngc_release(image: str) -> tuple[int, int]:
    """``(26, 3)`` for ``nvcr.io/nvidia/tritonserver:26.03-py3``."""
    match = NGC_TAG.fullmatch(image)
    if not match:
        raise ValueError(f"`{image}` is not an NGC Triton tag like nvcr.io/nvidia/tritonserver:26.03-py3.")
    return int(match[1]), int(match[2])


def ngc_python(image: str) -> str:
    """The Python version (``"3.12"``) of NGC Triton image ``image``, from :data:`NGC_PYTHON`."""
    release = ngc_release(image)
    for first, last, python in NGC_PYTHON:
        if first <= release <= last:
            return python
    raise ValueError(
        f"No Python version recorded for NGC release {release[0]:02d}.{release[1]:02d}; check NVIDIA's "
        "release notes for the container's Ubuntu/Python and add a row to NGC_PYTHON."
    )


def triton_stages() -> list[str]:
    """Stages built (directly or through other stages) FROM the NGC Triton image."""
    stages = parse()[1]
    return [name for name in stages if lineage(name, stages)[0].base.startswith("nvcr.io/nvidia/tritonserver:")]
