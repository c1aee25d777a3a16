"""The emotion classifier's configuration (``config.json``): what serving needs without the network or torch."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from s2i import names

# RAVDESS emotion codes 01..08, in order.
EMOTIONS = names.EMOTION_LABELS
ARCHITECTURES = ("bilstm", "transformer")
MODEL_TYPE = "s2i-speech-emotion"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclasses.dataclass(frozen=True)
class EmotionConfig:
    """Architecture of a classifier; saved as ``config.json``.

    Attributes:
        architecture: ``bilstm`` or ``transformer``.
        num_mel_bins: Mel bins of the input features (Whisper's ``num_mel_bins``: 80, or 128 for v3).
        hidden_size: Width of the stem and the body.
        num_layers: LSTM layers or Transformer blocks.
        num_heads: Attention heads (``transformer`` only).
        ffn_dim: Feed-forward width (``transformer`` only).
        dropout: Dropout while training.
        labels: Class names, in logit order.
    """

    architecture: str = "bilstm"
    num_mel_bins: int = 80
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    ffn_dim: int = 128
    dropout: float = 0.1
    labels: tuple[str, ...] = EMOTIONS

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"`architecture` must be one of {list(ARCHITECTURES)}, got {self.architecture!r}.")
        if self.architecture == "bilstm" and self.hidden_size % 2:
            raise ValueError(f"`hidden_size` must be even for a BiLSTM (two directions), got {self.hidden_size}.")
        if self.architecture == "transformer" and self.hidden_size % self.num_heads:
            raise ValueError(f"`hidden_size` ({self.hidden_size}) must be divisible by `num_heads` ({self.num_heads}).")
        if len(set(self.labels)) != len(self.labels) or not self.labels:
            raise ValueError(f"`labels` must be distinct and non-empty, got {list(self.labels)}.")

    @property
    def num_labels(self) -> int:
        """Number of classes."""
        return len(self.labels)

    def to_dict(self) -> dict:
        """The ``config.json`` content, with the Hugging Face keys (``model_type``, ``id2label``, …)."""
        fields = dataclasses.asdict(self)
        labels = fields.pop("labels")
        return {
            "model_type": MODEL_TYPE,
            "architectures": ["EmotionClassifier"],
            **fields,
            "id2label": {str(index): label for index, label in enumerate(labels)},
            "label2id": {label: index for index, label in enumerate(labels)},
        }

    @classmethod
    def from_dict(cls, data: dict) -> EmotionConfig:
        """Read a ``config.json`` written by :meth:`to_dict`."""
        if data.get("model_type") != MODEL_TYPE:
            raise ValueError(f"config.json has `model_type` {data.get('model_type')!r}, expected {MODEL_TYPE!r}.")
        id2label = data["id2label"]
        labels = tuple(id2label[str(index)] for index in range(len(id2label)))
        known = {field.name for field in dataclasses.fields(cls)} - {"labels"}
        return cls(labels=labels, **{key: value for key, value in data.items() if key in known})


def load_config(checkpoint_dir: Path) -> EmotionConfig:
    """The :class:`EmotionConfig` of a checkpoint folder."""
    path = Path(checkpoint_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; is `{checkpoint_dir}` an emotion checkpoint folder?")
    return EmotionConfig.from_dict(json.loads(path.read_text()))
