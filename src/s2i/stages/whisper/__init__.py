"""Whisper: Hindi speech to English text (tokenizer, tiny checkpoint, export, Triton models, decoding, reference)."""
