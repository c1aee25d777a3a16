"""Speech emotion: RAVDESS-class classifier over Whisper log-mel features."""
