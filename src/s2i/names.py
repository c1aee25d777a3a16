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

# The emotion stage: `emotion_classifier` (BLS; inputs as `whisper`'s audio, or
# `input_features` directly) calls `emotion_classifier_graph` (features -> logits).
EMOTION_CLASSIFIER = "emotion_classifier"
EMOTION_CLASSIFIER_GRAPH = "emotion_classifier_graph"
EMOTION_LABEL = "emotion_label"  # BYTES [1]: the most probable emotion
EMOTION_PROBABILITIES = "emotion_probabilities"  # FP32 [labels]: softmax, in the checkpoint's label order
# BYTES [labels]: the checkpoint's label names (its config's `id2label`), in probability order.
EMOTION_LABEL_NAMES = "emotion_label_names"
# Model config parameter of `prompt_composer`: the classifier's labels as a JSON list (what
# `emotion_override` may name besides RAVDESS's), written at conversion, read at initialize.
EMOTION_LABELS_PARAMETER = "emotion_labels"
# Parameter of `speech_to_image_stream`: the pipeline DAG it follows, as JSON (s2i.pipeline.dag).
PIPELINE_PARAMETER = "pipeline"
# RAVDESS's emotions (codes 01-08), the label order of every emotion checkpoint this project trains.
EMOTION_LABELS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")

# The diffusion stage: `diffusion` (BLS) calls `text_encoder`, `unet` and `vae_decoder`.
DIFFUSION = "diffusion"
TEXT_ENCODER = "text_encoder"
UNET = "unet"
VAE_DECODER = "vae_decoder"
# Inputs of the `diffusion` model (all [1] per request; only `prompt` is required).
PROMPT = "prompt"  # BYTES
NEGATIVE_PROMPT = "negative_prompt"  # BYTES
NUM_INFERENCE_STEPS = "num_inference_steps"  # INT32
GUIDANCE_SCALE = "guidance_scale"  # FP32
HEIGHT = "height"  # INT32, pixels
WIDTH = "width"  # INT32, pixels
SEED = "seed"  # INT64
SCHEDULER = "scheduler"  # BYTES: "ddim", "euler", "euler_ancestral", "dpmsolver++", "pndm"
# Output of the `diffusion` model.
IMAGE = "image"  # UINT8 [height, width, 3], RGB
# Diffusion stage tensors, as Optimum's exporter names them (`timestep` made [batch, 1]).
POOLER_OUTPUT = "pooler_output"
SAMPLE = "sample"
TIMESTEP = "timestep"
# LCM-distilled UNets: FP32 [time_cond_proj_dim], the guidance scale's embedding (w-embedding).
TIMESTEP_COND = "timestep_cond"
OUT_SAMPLE = "out_sample"
LATENT_SAMPLE = "latent_sample"

# The speech-to-image pipeline.
PREPROCESS = "preprocess"
PROMPT_COMPOSER = "prompt_composer"
POSTPROCESS = "postprocess"
SPEECH_TO_IMAGE = "speech_to_image"
SPEECH_TO_IMAGE_STREAM = "speech_to_image_stream"
EMOTION_FEATURES = "emotion_features"  # FP32 [n_mels, frames]: input_features cut to the clip's frames
RETURN_TRANSCRIPT = "return_transcript"  # BOOL [1]: also decode the source-language transcript
TRANSCRIPT = "transcript"  # BYTES [1]: source-language transcript ("" unless asked for)
EMOTION = "emotion"  # BYTES [1]: the emotion the prompt used (classifier's or the override)
EMOTION_OVERRIDE = "emotion_override"  # BYTES [1]: use this emotion instead of the classifier's
STYLE_TEMPLATE = "style_template"  # BYTES [1]: name of a template in styles.toml
PNG = "png"  # BYTES [1]: the image as a PNG file
COMPUTE_MS = "compute_ms"  # FP32 [1]: time a pipeline step spent on the request, in ms
PREVIEW_EVERY = "preview_every"  # INT32 [1]: streaming: a low-resolution preview every k denoising steps
EVENT = "event"  # BYTES [1]: streaming: "text", "preview" or "image"
IMAGE_SEED = "image_seed"  # INT64 [1]: the seed the pipeline's image was drawn with (`seed` is an input there)
STEP = "step"  # INT32 [1]: streaming: denoising steps done when the message was sent
# `prompt_composer`'s prompts again, for `diffusion`: in the ensemble no tensor is both an output and
# a later step's input (Triton's pruning of unrequested outputs miscounts those; s2i.pipeline.specs).
DIFFUSION_PROMPT = "diffusion_prompt"  # BYTES [1]
DIFFUSION_NEGATIVE_PROMPT = "diffusion_negative_prompt"  # BYTES [1]

# The pipeline's timings: the ensemble's (and the stream's) output carrying each step's `compute_ms`.
PREPROCESS_MS = "preprocess_ms"  # FP32 [1]
WHISPER_MS = "whisper_ms"  # FP32 [1]
EMOTION_MS = "emotion_ms"  # FP32 [1]
PROMPT_MS = "prompt_ms"  # FP32 [1]
DIFFUSION_MS = "diffusion_ms"  # FP32 [1]
POSTPROCESS_MS = "postprocess_ms"  # FP32 [1]

# Model config parameters of a `python-torch` stage model (s2i.stages.torch_runner).
TORCH_RUNNER_PARAMETER = "torch_runner"  # "<module>:<class>" of the stage's TorchStage
TORCH_CHECKPOINT_PARAMETER = "checkpoint_dir"  # folder beside model.py holding the checkpoint files
TORCH_DTYPE_PARAMETER = "dtype"  # "auto" (float16 on CUDA, float32 on the CPU), "float32", "float16", "bfloat16"
TORCH_CUDA_GRAPHS_PARAMETER = "cuda_graphs"  # "true"/"false"
TORCH_COMPILE_PARAMETER = "torch_compile"  # "true"/"false"
