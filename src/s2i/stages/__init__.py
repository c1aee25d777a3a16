"""Pipeline stages: one package per model family (export, Triton description, reference, runtime)."""
