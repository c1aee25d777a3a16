"""Fine-tuning code for the pipeline's models."""
