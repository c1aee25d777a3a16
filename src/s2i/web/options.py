"""The generation options a page may send, checked against the app's bounds before any work."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from s2i import names
from s2i.web.config import SCHEDULERS, WebConfig

MAX_SEED = 2**63 - 1
MAX_GUIDANCE_SCALE = 30.0
# Only these query parameters are read; anything else is refused so typos do not pass silently.
FIELDS = ("seed", "steps", "guidance", "scheduler", "size", "style", "emotion")


class OptionError(ValueError):
    """A bad option; the message names the field in backticks."""


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
    """What the person chose on the page (``None``: the server's default)."""

    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    scheduler: str | None = None
    height: int | None = None
    width: int | None = None
    style: str | None = None
    emotion: str | None = None

    def client_kwargs(self) -> dict:
        """Keyword options of :meth:`s2i.client.AsyncClient.stream_speech_to_image`."""
        kwargs = {
            "seed": self.seed,
            "num_inference_steps": self.steps,
            "guidance_scale": self.guidance,
            "scheduler": self.scheduler,
            "height": self.height,
            "width": self.width,
            "style_template": self.style,
            "emotion_override": self.emotion,
        }
        return {key: value for key, value in kwargs.items() if value is not None}


def _number(query: Mapping[str, str], field: str, kind: type, low: float, high: float):
    raw = query.get(field, "").strip()
    if not raw:
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise OptionError(f"`{field}` must be a number, got {raw[:20]!r}.") from None
    if not low <= value <= high:
        raise OptionError(f"`{field}` must be between {low:g} and {high:g}, got {value:g}.")
    return value


def _choice(query: Mapping[str, str], field: str, allowed) -> str | None:
    raw = query.get(field, "").strip()
    if not raw:
        return None
    if raw not in allowed:
        raise OptionError(f"`{field}` must be one of {', '.join(sorted(allowed))}; got {raw[:40]!r}.")
    return raw


def parse_options(query: Mapping[str, str], config: WebConfig, styles: Mapping[str, str]) -> GenerationOptions:
    """Read and check the options of ``POST /api/generate``.

    Args:
        query: The query parameters.
        config: The app's bounds (steps, sizes).
        styles: Style template name -> description.
    """
    unknown = sorted(set(query) - set(FIELDS))
    if unknown:
        raise OptionError(f"`{unknown[0][:40]}` is not an option; use {', '.join(FIELDS)}.")
    size = _choice(query, "size", {f"{h}x{w}" for h, w in config.sizes} | {"default"})
    height = width = None
    if size and size not in ("default", "0x0"):
        height, width = (int(part) for part in size.split("x"))
    return GenerationOptions(
        seed=_number(query, "seed", int, 0, MAX_SEED),
        steps=_number(query, "steps", int, 1, config.max_steps),
        guidance=_number(query, "guidance", float, 0.0, MAX_GUIDANCE_SCALE),
        scheduler=_choice(query, "scheduler", SCHEDULERS),
        height=height,
        width=width,
        style=_choice(query, "style", styles),
        emotion=_choice(query, "emotion", names.EMOTION_LABELS),
    )
