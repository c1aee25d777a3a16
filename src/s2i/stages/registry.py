"""The pipeline's stages, in the order conversion handles them."""

from __future__ import annotations

from s2i.stages.base import Stage
from s2i.stages.diffusion.stage import DiffusionStage
from s2i.stages.emotion.stage import EmotionStage
from s2i.stages.whisper.stage import WhisperStage

STAGES: dict[str, Stage] = {stage.name: stage for stage in (WhisperStage(), EmotionStage(), DiffusionStage())}
