import pytest

from s2i.errors import InvalidInputError
from s2i.pipeline.prompt import EMPTY_TEXT, StyleTemplates, compose_prompt


@pytest.fixture(scope="module")
def templates():
    return StyleTemplates.load()


def test_compose_prompt_puts_the_text_into_the_emotions_template(templates):
    composed = compose_prompt("A child plays in the park", "happy", templates)
    assert (
        composed.prompt
        == "A child plays in the park, bright sunshine, vivid warm colours, joyful atmosphere, photograph"
    )
    assert composed.negative_prompt == "blurry, distorted, low quality, text, watermark, deformed"
    assert (composed.emotion, composed.template) == ("happy", "photo")


def test_compose_prompt_uses_the_override_instead_of_the_detected_emotion(templates):
    composed = compose_prompt("rain", "happy", templates, emotion_override="sad", template_name="painting")
    assert composed.emotion == "sad"
    assert composed.prompt == "rain, expressionist painting, blue period palette, lonely mood"


def test_compose_prompt_falls_back_to_a_neutral_subject_when_text_is_empty(templates):
    assert compose_prompt("   ", "calm", templates).prompt.startswith(EMPTY_TEXT + ",")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(template_name="cubist"), r"`style_template`: 'cubist' is not a style template; use one of"),
        # A 1 MiB name is echoed as a short prefix and its length (the message stays small).
        (dict(template_name="x" * (1 << 20)), r"^`style_template`: 'x{63}… \(length 1048576\) is not a style template"),
        (dict(emotion_override="bored"), r"`emotion_override`: must be one of \['neutral'"),
    ],
)
def test_compose_prompt_raises_naming_the_field_when_option_unknown(templates, kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        compose_prompt("x", "happy", templates, **kwargs)


def test_style_templates_load_refuses_a_template_missing_an_emotion(tmp_path):
    path = tmp_path / "styles.toml"
    path.write_text('default_template = "t"\n[templates.t]\nnegative = ""\n[templates.t.emotions]\nhappy = "{text}"\n')
    with pytest.raises(ValueError, match=r"template `t` has no prompt for emotions \['angry'"):
        StyleTemplates.load(path)


def test_style_templates_load_refuses_a_prompt_without_the_text_placeholder(tmp_path):
    from s2i import names

    emotions = "\n".join(f'{emotion} = "{{text}}, x"' for emotion in names.EMOTION_LABELS).replace(
        'happy = "{text}, x"', 'happy = "sunny"'
    )
    path = tmp_path / "styles.toml"
    path.write_text(f'default_template = "t"\n[templates.t]\n[templates.t.emotions]\n{emotions}\n')
    with pytest.raises(ValueError, match="emotion `happy`: the prompt lacks `{text}`"):
        StyleTemplates.load(path)
