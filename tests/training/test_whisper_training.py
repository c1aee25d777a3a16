"""Whisper fine-tuning end to end on espeak-ng Hindi clips in the Common Voice layout.

Common Voice ships MP3; the soundfile wheel's libsndfile (1.2) reads and writes
MP3, so the fixture writes MP3 clips like a release has, plus a WAV and an OGG
clip to cover the other formats libsndfile reads.
"""

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from s2i.speech import HINDI_SENTENCES, synthesize
from s2i.training.common import DataError, error_rates, normalize_text, read_data_issues, read_metrics
from s2i.training.whisper import WhisperTrainingConfig, train_whisper
from s2i.training.whisper_data import (
    WhisperCollator,
    prepare_split,
    read_split,
)
from tests.conftest import BUILD_DIR

ENGLISH = (
    "Hello, the weather is very nice today.",
    "A child is playing in the park.",
    "The sun is rising over the mountains.",
    "My dog is running on the beach.",
)
CV_COLUMNS = (
    "client_id",
    "path",
    "sentence",
    "up_votes",
    "down_votes",
    "age",
    "gender",
    "accents",
    "locale",
    "segment",
)
FORMATS = ("MP3", "WAV", "OGG", "MP3")
# (clip file, sentence, what is wrong): rows the trainer must skip and name.
BAD_ROWS = (
    ("missing.mp3", HINDI_SENTENCES[0], "file not found"),
    ("empty_sentence.mp3", " । ", "empty `sentence`"),
    ("corrupt.mp3", HINDI_SENTENCES[1], "unreadable audio"),
    ("too_long.wav", HINDI_SENTENCES[2], "the limit is 30 s"),
)
FIRST_STEPS, RESUMED_STEPS = 10, 14


def _write_tsv(path: Path, rows: list[tuple[str, str, str]], with_translation: bool = True) -> None:
    columns = CV_COLUMNS + (("translation",) if with_translation else ())
    with path.open("w", encoding="utf-8") as f:
        f.write("\t".join(columns) + "\n")
        for name, sentence, english in rows:
            values = ["c0ffee", name, sentence, "2", "0", "", "", "", "hi", ""]
            f.write("\t".join(values + ([english] if with_translation else [])) + "\n")


def make_common_voice(root: Path, *, bad_rows: bool) -> Path:
    """A Common Voice language folder: train.tsv (optionally with bad rows), test.tsv, clips/."""
    clips = root / "clips"
    clips.mkdir(parents=True)
    good = []
    for index, (sentence, english, fmt) in enumerate(zip(HINDI_SENTENCES, ENGLISH, FORMATS, strict=True)):
        wav = synthesize(sentence, root / "tmp" / f"{index}.wav", speed_wpm=150 + 10 * index)
        samples, rate = soundfile.read(wav, dtype="float32")
        name = f"common_voice_hi_{index}.{fmt.lower()}"
        soundfile.write(clips / name, samples, rate, format=fmt)
        good.append((name, sentence, english))
    shutil.rmtree(root / "tmp")
    train = list(good)
    if bad_rows:
        (clips / "empty_sentence.mp3").write_bytes((clips / good[0][0]).read_bytes())
        (clips / "corrupt.mp3").write_bytes(b"ID3 this is not an mp3 stream")
        soundfile.write(clips / "too_long.wav", np.zeros(31 * 8_000, dtype=np.float32), 8_000)
        train += [(name, sentence, "x") for name, sentence, _ in BAD_ROWS]
    _write_tsv(root / "train.tsv", train)
    _write_tsv(root / "test.tsv", good[:2])
    return root


@pytest.fixture(scope="module")
def base_checkpoint() -> Path:
    """The registry's tiny Whisper (real tokenizer, random weights), cached between runs."""
    from s2i.stages.whisper.checkpoint import build_tiny_whisper
    from s2i.stages.whisper.stage import TINY_INIT_STD

    path = BUILD_DIR / "training" / "whisper-tiny-base"
    if not (path / ".complete").is_file():
        shutil.rmtree(path, ignore_errors=True)
        build_tiny_whisper(path, init_std=TINY_INIT_STD)
        (path / ".complete").write_text("ok\n")
    return path


@pytest.fixture(scope="module")
def common_voice(tmp_path_factory) -> Path:
    return make_common_voice(tmp_path_factory.mktemp("cv") / "hi", bad_rows=True)


def small_config(data: Path, checkpoint: Path, output_dir: Path, **overrides) -> WhisperTrainingConfig:
    """Defaults scaled down so a run takes seconds on two CPU cores."""
    settings = dict(
        learning_rate=2e-3,
        max_steps=FIRST_STEPS,
        per_device_train_batch_size=2,
        per_device_eval_batch_size=2,
        gradient_accumulation_steps=1,
        warmup_steps=0,
        eval_steps=1000,
        save_steps=FIRST_STEPS,
        logging_steps=1,
        generation_max_length=24,
        seed=0,
    )
    settings.update(overrides)
    return WhisperTrainingConfig(data=data, checkpoint=checkpoint, output_dir=output_dir, **settings)


@pytest.fixture(scope="module")
def trained(common_voice, base_checkpoint, tmp_path_factory):
    """Train 10 steps (with a baseline evaluation), then rerun to 14 steps: the rerun resumes."""
    output_dir = tmp_path_factory.mktemp("whisper-run") / "out"
    first = train_whisper(small_config(common_voice, base_checkpoint, output_dir, eval_on_start=True))
    resumed = train_whisper(small_config(common_voice, base_checkpoint, output_dir, max_steps=RESUMED_STEPS))
    return first, resumed


def test_whisper_training_lowers_loss_and_reports_wer_cer_when_run_on_common_voice_layout(trained):
    first, resumed = trained
    losses = [loss for _, loss in resumed.train_losses]
    assert len(losses) == RESUMED_STEPS
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    evals = read_metrics(resumed.output_dir / "metrics.csv", split="eval", name="loss")
    assert evals[0][0] == 0 and evals[-1][0] == RESUMED_STEPS
    assert evals[-1][3] < evals[0][3], evals
    for name in ("wer", "cer"):
        assert math.isfinite(resumed.eval_metrics[name]) and resumed.eval_metrics[name] >= 0
    # The figures are jiwer's on the normalised texts written beside the model.
    with (resumed.output_dir / "eval_predictions.tsv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [row["reference"] for row in rows] == list(HINDI_SENTENCES[:2])
    recomputed = error_rates([r["reference"] for r in rows], [r["hypothesis"] for r in rows])
    assert recomputed == pytest.approx({k: resumed.eval_metrics[k] for k in ("wer", "cer")})


def test_whisper_training_resumes_from_newest_checkpoint_when_rerun(trained):
    first, resumed = trained
    assert first.resumed_from is None and first.global_step == FIRST_STEPS
    assert resumed.resumed_from.name == f"checkpoint-{FIRST_STEPS}"
    assert resumed.global_step == RESUMED_STEPS
    logged = [step for step, *_ in read_metrics(resumed.output_dir / "metrics.csv", split="train", name="loss")]
    assert logged == list(range(1, RESUMED_STEPS + 1))


def test_whisper_training_skips_and_names_bad_clips_when_policy_is_skip(trained):
    _, resumed = trained
    rows = read_data_issues(resumed.output_dir / "data_issues.tsv")
    # The rerun rewrote the file: each bad clip is listed once, in file order.
    assert all("split `train`" in row["data"] for row in rows)
    assert [row["source"].split(" ")[0] for row in rows] == [f"clips/{name}" for name, _, _ in BAD_ROWS]
    for row, (_, _, reason) in zip(rows, BAD_ROWS, strict=True):
        assert reason in row["reason"], row
    assert resumed.skipped_samples == len(BAD_ROWS)


def test_whisper_training_output_keeps_tokenizer_and_decoding_rules(trained):
    from s2i.stages.whisper.decoding import DecodingRules

    output_dir = trained[1].output_dir
    for name in ("tokenizer.json", "vocab.json", "preprocessor_config.json", "generation_config.json"):
        assert (output_dir / name).is_file(), name
    rules = DecodingRules.from_checkpoint(output_dir)
    assert len(rules.lang_to_id) == 99
    assert rules.prompt("hi", "transcribe") == [50258, 50276, 50359, 50363]


@pytest.mark.slow
def test_whisper_training_output_converts_and_serves_same_tokens_as_transformers(trained, tmp_path):
    from s2i.audio import prepare_audio
    from s2i.client import Client
    from s2i.conversion.convert import convert
    from s2i.server import ServerOptions, TritonServer
    from s2i.stages.whisper.reference import WhisperReference

    output_dir = trained[1].output_dir
    report = convert({"whisper": output_dir}, tmp_path / "repository", work_dir=tmp_path / "onnx")
    assert {"whisper", "whisper_encoder", "whisper_decoder", "whisper_decoder_with_past"} <= set(report.models)
    assert all(diff < 1e-3 for diff in report.max_abs_diff.values()), report.max_abs_diff

    wav = synthesize(HINDI_SENTENCES[1], tmp_path / "clip.wav")
    samples, rate = soundfile.read(wav, dtype="float32")
    expected, _ = WhisperReference(output_dir).generate(
        prepare_audio(samples, rate), task="transcribe", max_new_tokens=8
    )
    options = ServerOptions(str(report.repository)).with_free_ports()
    with TritonServer(options, log_file=tmp_path / "tritonserver.log") as server, Client(server.grpc_url) as client:
        result = client.translate(wav.read_bytes(), task="transcribe", max_new_tokens=8)
    assert result.token_ids == expected
    assert len(expected) > 0


def test_whisper_training_refuses_and_lists_bad_clips_when_policy_is_error(common_voice, base_checkpoint, tmp_path):
    config = small_config(common_voice, base_checkpoint, tmp_path / "out", on_bad_data="error")
    with pytest.raises(DataError, match=r"4 unusable sample\(s\) and `on_bad_data` is `error`") as caught:
        train_whisper(config)
    for name, _, reason in BAD_ROWS:
        assert f"clips/{name}" in str(caught.value) and reason in str(caught.value)
    assert not list((tmp_path / "out").glob("checkpoint-*"))


def test_whisper_training_refuses_translate_when_targets_column_is_missing(base_checkpoint, tmp_path):
    root = make_common_voice(tmp_path / "hi", bad_rows=False)
    _write_tsv(root / "train.tsv", [("common_voice_hi_0.mp3", HINDI_SENTENCES[0], "")], with_translation=False)
    config = small_config(root, base_checkpoint, tmp_path / "out", task="translate")
    with pytest.raises(DataError, match=r"train.tsv` has no \['translation'\] column"):
        train_whisper(config)


def test_whisper_labels_hold_translate_prompt_and_english_targets_when_task_is_translate(common_voice, base_checkpoint):
    from transformers import WhisperTokenizerFast

    from s2i.training.common import DataIssues

    tokenizer = WhisperTokenizerFast.from_pretrained(base_checkpoint)
    tokenizer.set_prefix_tokens(language="hi", task="translate", predict_timestamps=False)
    issues = DataIssues("skip", "test split")
    samples = read_split(common_voice, "test", text_column="translation", issues=issues)
    prepared = prepare_split(samples, tokenizer, max_label_tokens=448, issues=issues)
    assert issues.issues == []
    batch = WhisperCollator(decoder_start_token_id=50258)(
        [{"input_features": np.zeros((80, 3000), np.float32), "labels": labels} for labels in prepared.labels]
    )
    first = [int(t) for t in batch["labels"][0] if t != -100]
    assert first[:3] == [50276, 50358, 50363]  # <|hi|><|translate|><|notimestamps|>
    assert tokenizer.decode(first, skip_special_tokens=True) == ENGLISH[0]
    assert (batch["labels"][0] == -100).sum() == batch["labels"].shape[1] - len(first)


def test_whisper_data_reads_hf_datasets_folder_like_common_voice(common_voice, tmp_path):
    datasets = pytest.importorskip("datasets")

    from s2i.training.common import DataIssues
    from s2i.training.whisper_data import load_audio

    clips = sorted((common_voice / "clips").glob("common_voice_hi_*"))
    # datasets >= 4 needs torchcodec to encode or decode audio itself; the stored bytes are enough here.
    audio = [{"bytes": p.read_bytes(), "path": p.name} for p in clips]
    train = datasets.Dataset.from_dict({"audio": audio, "sentence": list(HINDI_SENTENCES)})
    test = datasets.Dataset.from_dict({"audio": audio[:1], "sentence": [""]})
    splits = datasets.DatasetDict(
        {"train": train.cast_column("audio", datasets.Audio()), "test": test.cast_column("audio", datasets.Audio())}
    )
    splits.save_to_disk(str(tmp_path / "hf"))
    issues = DataIssues("skip", "hf")
    train = read_split(tmp_path / "hf", "train", text_column="sentence", issues=issues)
    test = read_split(tmp_path / "hf", "test", text_column="sentence", issues=issues)
    assert [s.text for s in train] == list(HINDI_SENTENCES) and test == []
    assert [i.reason for i in issues.issues] == ["empty `sentence`"]
    cv = read_split(common_voice, "test", text_column="sentence", issues=DataIssues("skip", "cv"))
    np.testing.assert_array_equal(load_audio(train[0]), load_audio(cv[0]))
    with pytest.raises(DataError, match=r"has the splits \['test', 'train'\], not `dev`"):
        read_split(tmp_path / "hf", "dev", text_column="sentence", issues=issues)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_whisper_training_refuses_mixed_precision_when_no_cuda(common_voice, base_checkpoint, tmp_path, precision):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    config = small_config(common_voice, base_checkpoint, tmp_path / "out", mixed_precision=precision)
    with pytest.raises(ValueError, match=rf"`mixed_precision` '{precision}' needs a CUDA GPU"):
        train_whisper(config)


@pytest.fixture(scope="module")
def multitask(common_voice, base_checkpoint, tmp_path_factory):
    """Four steps of `both` tasks on a frozen encoder, evaluated before and after."""
    output_dir = tmp_path_factory.mktemp("whisper-multitask") / "out"
    config = small_config(
        common_voice, base_checkpoint, output_dir, task="both", freeze_encoder=True, eval_on_start=True, max_steps=4
    )
    return train_whisper(config)


def test_whisper_training_scores_both_tasks_before_and_after_when_task_is_both(multitask):
    names = {"transcribe_wer", "transcribe_cer", "translate_chrf", "translate_bleu"}
    assert set(multitask.baseline_metrics) == set(multitask.eval_metrics) == names
    results = json.loads((multitask.output_dir / "eval_results.json").read_text())
    assert results["before"] == multitask.baseline_metrics and results["after"] == multitask.eval_metrics
    assert (results["steps"], results["eval_clips"], results["freeze_encoder"]) == (4, 2, True)
    rows = read_metrics(multitask.output_dir / "metrics.csv", "eval")
    logged = {(step, name): value for step, _, name, value in rows}
    assert logged[(0, "translate_chrf")] == pytest.approx(multitask.baseline_metrics["translate_chrf"])
    assert logged[(4, "transcribe_wer")] == pytest.approx(multitask.eval_metrics["transcribe_wer"])
    with (multitask.output_dir / "eval_predictions.tsv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [(r["task"], r["reference"]) for r in rows] == [
        ("transcribe", HINDI_SENTENCES[0]),
        ("transcribe", HINDI_SENTENCES[1]),
        ("translate", ENGLISH[0]),
        ("translate", ENGLISH[1]),
    ]


def test_whisper_training_keeps_encoder_and_changes_decoder_when_encoder_is_frozen(multitask, base_checkpoint):
    from transformers import WhisperForConditionalGeneration

    base = WhisperForConditionalGeneration.from_pretrained(base_checkpoint).state_dict()
    tuned = WhisperForConditionalGeneration.from_pretrained(multitask.output_dir).state_dict()
    encoder = [name for name in base if name.startswith("model.encoder.")]
    decoder = [name for name in base if name.startswith("model.decoder.layers.")]
    assert encoder and decoder
    assert all(torch_equal(base[name], tuned[name]) for name in encoder)
    assert not all(torch_equal(base[name], tuned[name]) for name in decoder)


def test_whisper_training_keeps_embeddings_and_cross_kv_when_they_are_frozen(common_voice, base_checkpoint, tmp_path):
    from transformers import WhisperForConditionalGeneration

    config = small_config(
        common_voice,
        base_checkpoint,
        tmp_path / "out",
        task="both",
        freeze_encoder=True,
        freeze_embeddings_and_cross_kv=True,
        max_steps=2,
        eval_split=None,
    )
    train_whisper(config)
    base = WhisperForConditionalGeneration.from_pretrained(base_checkpoint).state_dict()
    tuned = WhisperForConditionalGeneration.from_pretrained(tmp_path / "out").state_dict()
    frozen = [
        name
        for name in base
        if name.startswith(("model.encoder.", "model.decoder.embed_", "proj_out."))
        or ".encoder_attn.k_proj." in name
        or ".encoder_attn.v_proj." in name
    ]
    trained = [name for name in base if name.startswith("model.decoder.layers.") and name not in frozen]
    assert any(".encoder_attn.v_proj." in name for name in frozen) and "model.decoder.embed_tokens.weight" in frozen
    assert all(torch_equal(base[name], tuned[name]) for name in frozen)
    assert any(".encoder_attn.q_proj." in name for name in trained)
    assert not all(torch_equal(base[name], tuned[name]) for name in trained)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_whisper_collator_stacks_encoder_outputs_when_items_hold_them():
    import torch

    collator = WhisperCollator(decoder_start_token_id=7)
    items = [{"encoder_outputs": torch.full((3, 2), float(i)), "labels": [7, 1, 2][: 2 + i]} for i in range(2)]
    batch = collator(items)
    assert set(batch) == {"encoder_outputs", "labels"}
    assert batch["encoder_outputs"][0].shape == (2, 3, 2)
    assert batch["encoder_outputs"][0][1, 0, 0].item() == 1.0
    assert batch["labels"].tolist() == [[1, -100], [1, 2]]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("task", "summarize", r"`task` must be one of \['transcribe', 'translate', 'both'\]"),
        ("learning_rate", 0.0, r"`learning_rate` must be > 0"),
        ("generation_max_length", 500, r"`generation_max_length` must be between 1 and 448"),
        ("on_bad_data", "ignore", r"`on_bad_data` must be one of \['skip', 'error'\]"),
    ],
)
def test_whisper_config_validate_names_the_field_when_a_setting_is_invalid(field, value, message):
    config = WhisperTrainingConfig(data=Path("d"), checkpoint="c", output_dir=Path("o"), **{field: value})
    with pytest.raises(ValueError, match=message):
        config.validate()


def test_whisper_config_validate_refuses_text_column_when_task_is_both():
    config = WhisperTrainingConfig(data=Path("d"), checkpoint="c", output_dir=Path("o"), task="both", text_column="x")
    with pytest.raises(ValueError, match=r"`text_column` cannot be set with `task` 'both'"):
        config.validate()


def test_normalize_text_keeps_devanagari_marks_and_drops_punctuation_when_given_hindi():
    assert normalize_text("नमस्ते,  आज मौसम बहुत अच्छा है।") == "नमस्ते आज मौसम बहुत अच्छा है"
    assert normalize_text("Hello, World!") == "hello world"
    assert normalize_text("क्\u200dष") == "क्ष"  # zero-width joiner removed


def test_error_rates_match_hand_counted_values():
    rates = error_rates(["एक बच्चा पार्क में", "hello world"], ["एक बच्चा में", "Hello, world!"])
    assert rates["wer"] == pytest.approx(1 / 6)  # one deletion over six reference words
    assert rates["cer"] == pytest.approx(6 / 29)  # "पार्क " is six of the 29 reference characters


def test_cli_train_whisper_prints_the_bad_files_when_policy_is_error(common_voice, base_checkpoint, tmp_path, capsys):
    from s2i.cli import main

    code = main(
        ["train", "whisper", "--data", str(common_voice), "--checkpoint", str(base_checkpoint)]
        + ["--output", str(tmp_path / "out"), "--on-bad-data", "error", "--max-steps", "1"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "clips/corrupt.mp3: unreadable audio" in err and "clips/missing.mp3" in err
