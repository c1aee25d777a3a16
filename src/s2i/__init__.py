"""speech2image-triton: Hindi speech to an emotion-aware image, served by Triton Inference Server."""

__version__ = "0.1.0"
