"""Triton model repository: typed model descriptions, config rendering and Python-backend models."""
