"""Prompt composition: English text + emotion -> prompt and negative prompt, from editable style templates."""

from __future__ import annotations

import dataclasses
import importlib.resources
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

from s2i import names
from s2i.errors import InvalidInputError, shown

STYLES_FILE = "styles.toml"
# CLIP reads 77 tokens; a longer translation is cut by the tokenizer, but keep
# the text itself bounded so a runaway decode cannot bloat every response.
MAX_TEXT_CHARS = 2000
# Used when the translation is empty (silence, or a model that emitted nothing).
EMPTY_TEXT = "an abstract scene"
# The prompt for an emotion a template has no entry for (a classifier trained on another
# label set), when the template names no `fallback` of its own.
DEFAULT_FALLBACK = "{text}, {emotion} mood"
# Labels travel from the checkpoint into the prompt: bound what one may add.
MAX_EMOTION_CHARS = 64


@dataclasses.dataclass(frozen=True)
class StyleTemplate:
    """One style: a prompt per emotion (with ``{text}``), a negative prompt and a fallback.

    ``fallback`` (with ``{text}`` and ``{emotion}``) serves emotions the template has no
    prompt for: classifiers trained on another label set than RAVDESS's.
    """

    name: str
    description: str
    negative: str
    emotions: Mapping[str, str]
    fallback: str = DEFAULT_FALLBACK


@dataclasses.dataclass(frozen=True)
class StyleTemplates:
    """All templates of a styles file and the default one."""

    templates: Mapping[str, StyleTemplate]
    default_template: str

    @classmethod
    def load(cls, path: Path | None = None) -> StyleTemplates:
        """Read a styles file (the packaged ``styles.toml`` by default) and check it is complete."""
        if path is None:
            text = importlib.resources.files("s2i.pipeline").joinpath(STYLES_FILE).read_text(encoding="utf-8")
            source = f"s2i/pipeline/{STYLES_FILE}"
        else:
            text, source = Path(path).read_text(encoding="utf-8"), str(path)
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{source} is not valid TOML: {e}") from e
        templates = {}
        for name, entry in data.get("templates", {}).items():
            emotions = dict(entry.get("emotions", {}))
            missing = sorted(set(names.EMOTION_LABELS) - set(emotions))
            if missing:
                raise ValueError(f"{source}: template `{name}` has no prompt for emotions {missing}.")
            for emotion, prompt in emotions.items():
                if "{text}" not in prompt:
                    raise ValueError(f"{source}: template `{name}`, emotion `{emotion}`: the prompt lacks `{{text}}`.")
            fallback = entry.get("fallback", DEFAULT_FALLBACK)
            if not isinstance(fallback, str) or "{text}" not in fallback:
                raise ValueError(f"{source}: template `{name}`: the `fallback` prompt lacks `{{text}}`.")
            try:
                fallback.format(text="", emotion="")
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(
                    f"{source}: template `{name}`: the `fallback` prompt may use only "
                    f"`{{text}}` and `{{emotion}}` ({e!r})."
                ) from e
            templates[name] = StyleTemplate(
                name, entry.get("description", ""), entry.get("negative", ""), emotions, fallback
            )
        default = data.get("default_template", "")
        if default not in templates:
            raise ValueError(f"{source}: `default_template` {default!r} is not one of {sorted(templates)}.")
        return cls(templates, default)


@dataclasses.dataclass(frozen=True)
class ComposedPrompt:
    """The prompt pair and the emotion that chose it."""

    prompt: str
    negative_prompt: str
    emotion: str
    template: str


def compose_prompt(
    text: str,
    emotion: str,
    templates: StyleTemplates,
    *,
    emotion_override: str | None = None,
    template_name: str | None = None,
    labels: Sequence[str] = names.EMOTION_LABELS,
) -> ComposedPrompt:
    """Fuse the English text and the emotion into a prompt and a negative prompt.

    Args:
        text: English translation of the speech.
        emotion: Emotion the classifier found.
        templates: The style templates.
        emotion_override: Use this emotion instead of the classifier's (``""`` or ``None``: no override).
        template_name: Style template (``""`` or ``None``: the file's default).
        labels: The classifier's label set (its checkpoint's ``id2label``); ``emotion_override``
            may name one of them or one of RAVDESS's, which the templates have prompts for.
    """
    if emotion_override:
        allowed = list(dict.fromkeys([*labels, *names.EMOTION_LABELS]))
        if emotion_override not in allowed:
            raise InvalidInputError(names.EMOTION_OVERRIDE, f"must be one of {allowed}, got {shown(emotion_override)}.")
        emotion = emotion_override
    name = template_name or templates.default_template
    if name not in templates.templates:
        raise InvalidInputError(
            names.STYLE_TEMPLATE, f"{shown(name)} is not a style template; use one of {sorted(templates.templates)}."
        )
    cleaned = " ".join(text.split())[:MAX_TEXT_CHARS] or EMPTY_TEXT
    template = templates.templates[name]
    if emotion in template.emotions:
        prompt = template.emotions[emotion].format(text=cleaned)
    else:
        # A label of another classifier's set: the template's fallback names it.
        emotion = " ".join(emotion.split())[:MAX_EMOTION_CHARS]
        prompt = template.fallback.format(text=cleaned, emotion=emotion or "neutral")
    return ComposedPrompt(prompt, template.negative, emotion, name)
