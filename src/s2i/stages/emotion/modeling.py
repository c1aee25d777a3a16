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

import json
import math
from pathlib import Path

import torch
from torch import nn

from s2i.stages.emotion.config import CONFIG_FILE, WEIGHTS_FILE, EmotionConfig, load_config


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
