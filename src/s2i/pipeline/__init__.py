"""The speech-to-image pipeline: prompt composition, ensemble, streaming and the in-process reference."""
