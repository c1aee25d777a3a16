"""The emotion classifier graph run by its PyTorch module (``python-torch``).

``emotion_classifier_graph``: ``input_features`` ``[batch, n_mels, frames]`` -> ``logits``
``[batch, labels]``, as the ONNX graph (:func:`s2i.stages.emotion.specs.emotion_component`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from s2i import names
from s2i.stages.emotion.modeling import EmotionClassifier
from s2i.stages.torch_runner import TorchStage


class EmotionClassifierRunner(TorchStage):
    """The classifier (:class:`~s2i.stages.emotion.modeling.EmotionClassifier`) on one batch of equal-length clips."""

    input_names = (names.INPUT_FEATURES,)
    output_names = (names.LOGITS,)

    def load_model(self, checkpoint: Path) -> EmotionClassifier:
        """The checkpoint's library model (see :meth:`TorchStage.load_model`)."""
        return EmotionClassifier.from_pretrained(checkpoint)

    def adopt(self, model: EmotionClassifier) -> None:
        """Keep what the graph runs, on the stage's device and dtype."""
        self.classifier = self.module(model)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The graph's outputs from on-device inputs."""
        return {names.LOGITS: self.classifier(inputs[names.INPUT_FEATURES])}
