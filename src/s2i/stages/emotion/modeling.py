"""The speech emotion classifier: Whisper log-mel features in, logits over RAVDESS's 8 emotions out.

Two variants share one front end and one head:

* a convolutional stem like Whisper's encoder (two ``Conv1d`` + GELU, the second
  with stride 2), so each position sees 20 ms of audio with local context;
* a body: a bidirectional LSTM (``bilstm``) or a small pre-norm Transformer
  encoder (``transformer``, no positional embeddings: the stem gives local order
  and the pooled head is order-free);
* statistics pooling (mean and standard deviation over time) and a linear layer.

The graph has no padding mask: it sees exactly the frames it is given, so a
clip's features must be cut to its real length (see :mod:`s2i.stages.emotion.features`)
and clips of different lengths run as separate calls. Attention and pooling
are written with plain tensor operations so the ONNX export is one graph with
dynamic batch and time axes.

Checkpoints use the Hugging Face layout: ``config.json`` (with ``id2label``),
``model.safetensors`` and the feature extractor's ``preprocessor_config.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

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


class _Block(nn.Module):
    """Pre-norm Transformer encoder block with explicit attention (exports as plain MatMul/Softmax)."""

    def __init__(self, hidden: int, heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.attention_norm = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.ffn_norm = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, hidden))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, frames, hidden = x.shape
        q, k, v = self.qkv(self.attention_norm(x)).chunk(3, dim=-1)

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, frames, self.heads, self.head_dim).transpose(1, 2)

        scores = (split(q) * self.scale) @ split(k).transpose(-1, -2)
        attended = (scores.softmax(dim=-1) @ split(v)).transpose(1, 2).reshape(batch, frames, hidden)
        x = x + self.dropout(self.out(attended))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class EmotionClassifier(nn.Module):
    """``input_features`` ``[batch, num_mel_bins, frames]`` -> ``logits`` ``[batch, num_labels]``."""

    def __init__(self, config: EmotionConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        self.stem = nn.Sequential(
            nn.Conv1d(config.num_mel_bins, hidden, kernel_size=3, padding=1),
            nn.GELU(),
            nn.Conv1d(hidden, hidden, kernel_size=3, stride=2, padding=1),
            nn.GELU(),
        )
        self.dropout = nn.Dropout(config.dropout)
        if config.architecture == "bilstm":
            self.lstm = nn.LSTM(
                hidden,
                hidden // 2,
                num_layers=config.num_layers,
                batch_first=True,
                bidirectional=True,
                dropout=config.dropout if config.num_layers > 1 else 0.0,
            )
        else:
            self.blocks = nn.ModuleList(
                _Block(hidden, config.num_heads, config.ffn_dim, config.dropout) for _ in range(config.num_layers)
            )
            self.final_norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(2 * hidden, config.num_labels)

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of equally long feature sequences."""
        x = self.dropout(self.stem(input_features).transpose(1, 2))  # [batch, frames', hidden]
        if self.config.architecture == "bilstm":
            x, _ = self.lstm(x)
        else:
            for block in self.blocks:
                x = block(x)
            x = self.final_norm(x)
        mean = x.mean(dim=1)
        std = (x - mean[:, None, :]).pow(2).mean(dim=1).add(1e-5).sqrt()
        return self.head(self.dropout(torch.cat([mean, std], dim=-1)))

    def save_pretrained(self, output_dir: Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``output_dir``."""
        from safetensors.torch import save_file

        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        state = {name: tensor.detach().contiguous() for name, tensor in self.state_dict().items()}
        save_file(state, str(output_dir / WEIGHTS_FILE), metadata={"format": "pt"})
        return output_dir

    @classmethod
    def from_pretrained(cls, checkpoint_dir: Path) -> EmotionClassifier:
        """Load a checkpoint written by :meth:`save_pretrained` (in eval mode)."""
        from safetensors.torch import load_file

        checkpoint_dir = Path(checkpoint_dir)
        config = load_config(checkpoint_dir)
        model = cls(config)
        model.load_state_dict(load_file(str(checkpoint_dir / WEIGHTS_FILE)))
        return model.eval()


def load_config(checkpoint_dir: Path) -> EmotionConfig:
    """The :class:`EmotionConfig` of a checkpoint folder."""
    path = Path(checkpoint_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; is `{checkpoint_dir}` an emotion checkpoint folder?")
    return EmotionConfig.from_dict(json.loads(path.read_text()))


def labels_of(checkpoint_dir: Path) -> Sequence[str]:
    """Class names of a checkpoint, in logit order."""
    return load_config(checkpoint_dir).labels
