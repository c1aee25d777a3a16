"""Typed results the clients return."""

from __future__ import annotations

import dataclasses
import io

import numpy as np

from s2i import names


@dataclasses.dataclass(frozen=True)
class Translation:
    """What the ``whisper`` model returned for one clip.

    Attributes:
        text: English translation (or the transcript, for ``task="transcribe"``).
        token_ids: Generated token ids, without the forced prompt.
    """

    text: str
    token_ids: list[int]


@dataclasses.dataclass(frozen=True)
class EmotionResult:
    """What the ``emotion_classifier`` model returned for one clip.

    Attributes:
        label: The most probable emotion.
        probabilities: float32 ``[num_labels]`` summing to 1, in the checkpoint's label order
            (RAVDESS's, :data:`s2i.names.EMOTION_LABELS`, for the classifiers this project trains).
    """

    label: str
    probabilities: np.ndarray

    @property
    def scores(self) -> dict[str, float]:
        """Emotion name -> probability (see :func:`emotion_scores`)."""
        return emotion_scores(self.probabilities)


def emotion_scores(probabilities: np.ndarray) -> dict[str, float]:
    """Emotion name -> probability, for RAVDESS's 8 labels.

    A classifier trained on another label set sends another number of
    probabilities, whose names the server does not send: they are keyed by
    class index (``"0"``, ``"1"``, …), in the checkpoint's label order.
    """
    values = np.asarray(probabilities).reshape(-1).tolist()
    keys = names.EMOTION_LABELS if len(values) == len(names.EMOTION_LABELS) else [str(i) for i in range(len(values))]
    return dict(zip(keys, values, strict=True))


@dataclasses.dataclass(frozen=True)
class GeneratedImage:
    """What the ``diffusion`` model returned for one prompt.

    Attributes:
        image: RGB pixels, ``uint8 [height, width, 3]``.
        seed: The seed used (the server picks one when the request had none).
    """

    image: np.ndarray
    seed: int


@dataclasses.dataclass(frozen=True)
class SpeechToImageResult:
    """Everything the ``speech_to_image`` pipeline returns for one clip.

    Attributes:
        png: The image as a PNG file.
        text: English translation.
        transcript: Source-language transcript (``""`` unless asked for).
        emotion: The emotion the prompt used (the classifier's, or the override).
        detected_emotion: The classifier's most probable emotion.
        emotion_scores: Emotion -> probability, from the classifier.
        prompt: The prompt the image was drawn from.
        negative_prompt: Its negative prompt.
        seed: The seed of the image's initial noise.
        timings_ms: Server time per pipeline step (``preprocess``, ``whisper``, …) and the
            client's round trip (``total``).
    """

    png: bytes
    text: str
    transcript: str
    emotion: str
    detected_emotion: str
    emotion_scores: dict[str, float]
    prompt: str
    negative_prompt: str
    seed: int
    timings_ms: dict[str, float]
    # Raw pixels when they came through shared memory (``Client(use_shared_memory=True)``).
    image_pixels: np.ndarray | None = None

    @property
    def image(self):
        """The image as a ``PIL.Image.Image``."""
        from PIL import Image

        return Image.open(io.BytesIO(self.png))

    @property
    def pixels(self) -> np.ndarray:
        """The image as ``uint8 [height, width, 3]``."""
        if self.image_pixels is not None:
            return self.image_pixels
        return np.asarray(self.image.convert("RGB"))


@dataclasses.dataclass(frozen=True)
class StreamEvent:
    """One message of ``speech_to_image_stream``.

    Attributes:
        kind: ``"text"`` (translation and emotion are known), ``"preview"`` (a low-resolution
            image every ``preview_every`` steps) or ``"image"`` (the final result).
        step: Denoising steps done (0 for ``"text"``).
        result: The fields known so far; ``png`` is empty for ``"text"``.
    """

    kind: str
    step: int
    result: SpeechToImageResult
