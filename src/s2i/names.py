"""Names of the models and of the tensors clients send and receive: one place for all of them."""

# Models of the repository.
WHISPER = "whisper"
WHISPER_ENCODER = "whisper_encoder"
WHISPER_DECODER = "whisper_decoder"
WHISPER_DECODER_WITH_PAST = "whisper_decoder_with_past"

# Inputs of the `whisper` model.
AUDIO_SAMPLES = "audio_samples"  # FP32 [samples], mono
SAMPLE_RATE_HZ = "sample_rate_hz"  # INT32 [1]
AUDIO_BYTES = "audio_bytes"  # BYTES [1]: a WAV/FLAC/OGG file
TASK = "task"  # BYTES [1]: "translate" (to English) or "transcribe"
LANGUAGE = "language"  # BYTES [1]: spoken language code, "hi" by default
MAX_NEW_TOKENS = "max_new_tokens"  # INT32 [1]

# Outputs of the `whisper` model.
TEXT = "text"  # BYTES [1]
TOKEN_IDS = "token_ids"  # INT64 [tokens]: generated ids, without the forced prompt

# Stage tensors keep the names the ONNX exporter gives them, so native
# onnxruntime / TensorRT models can serve the same graphs unchanged.
INPUT_FEATURES = "input_features"
LAST_HIDDEN_STATE = "last_hidden_state"
INPUT_IDS = "input_ids"
ENCODER_HIDDEN_STATES = "encoder_hidden_states"
LOGITS = "logits"
