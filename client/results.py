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
        label_names: The checkpoint's labels in that order, as the server sent them
            (empty from servers older than ``emotion_label_names``).
    """

    label: str
    probabilities: np.ndarray
    label_names: tuple[str, ...] = ()

    @property
    def scores(self) -> dict[str, float]:
        """Emotion name -> probability (see :func:`emotion_scores`)."""
        return emotion_scores(self.probabilities, self.label_names)


def emotion_scores(probabilities: np.ndarray, label_names: tuple[str, ...] = ()) -> dict[str, float]:
    """Emotion name -> probability, keyed by the label names the server sent.

    Without names (a server older than ``emotion_label_names``), 8 probabilities are
    RAVDESS's labels and any other count is keyed by class index (``"0"``, ``"1"``, …).
    """
    values = np.asarray(probabilities).reshape(-1).tolist()
    if label_names:
        if len(label_names) != len(values):
            raise ValueError(f"{len(label_names)} emotion label names for {len(values)} probabilities.")
        keys = list(label_names)
    elif len(values) == len(names.EMOTION_LABELS):
        keys = list(names.EMOTION_LABELS)
    else:
        keys = [str(i) for i in range(len(values))]
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
        outputs: The other outputs asked for with ``extra_outputs``, by name, as the server sent
            them (a stage added to the pipeline brings its own).
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
    outputs: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

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
