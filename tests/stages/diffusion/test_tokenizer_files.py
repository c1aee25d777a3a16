import pytest
from transformers import CLIPTokenizer

from s2i.stages.diffusion.tokenizer_files import MODEL_MAX_LENGTH, VOCAB_SIZE, clip_vocab_and_merges


@pytest.fixture(scope="module")
def tokenizer(diffusion_dir):
    return CLIPTokenizer.from_pretrained(diffusion_dir / "tokenizer")


def test_tokenizer_has_clips_vocabulary_and_77_positions(tokenizer):
    assert len(tokenizer) == VOCAB_SIZE == 49408
    assert tokenizer.model_max_length == MODEL_MAX_LENGTH == 77
    assert tokenizer.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"]) == [49406, 49407]


@pytest.mark.parametrize(
    ("text", "expected_ids"),
    [
        # Ids of openai/clip-vit-large-patch14's tokenizer (Stable Diffusion 1.x).
        ("a photo of a cat", [49406, 320, 1125, 539, 320, 2368, 49407]),
        ("A photo of a CAT!", [49406, 320, 1125, 539, 320, 2368, 256, 49407]),
    ],
)
def test_tokenizer_encodes_like_released_clip_when_given_its_bpe(tokenizer, text, expected_ids):
    assert tokenizer(text).input_ids == expected_ids


def test_tokenizer_truncates_to_77_tokens_ending_with_endoftext_when_prompt_is_long(tokenizer):
    ids = tokenizer("cat " * 200, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77
    assert ids[0] == 49406 and ids[-1] == 49407
    assert set(ids[1:-1]) == {2368}


def test_clip_vocab_orders_bytes_then_word_ends_then_merges():
    vocab, merges = clip_vocab_and_merges()
    assert len(merges) == 48894
    assert vocab["!"] == 0 and vocab["!</w>"] == 256
    assert vocab["".join(merges[0])] == 512
