"""Conversion: Hugging Face checkpoints to ONNX and a Triton model repository."""
