import pytest
from transformers import WhisperTokenizerFast

from s2i.stages.whisper.tokenizer_files import load_bpe_ranks, openai_whisper_assets, special_tokens

# Ids of the released multilingual Whisper checkpoints (openai/whisper-small etc.).
RELEASED_IDS = {
    "<|endoftext|>": 50257,
    "<|startoftranscript|>": 50258,
    "<|en|>": 50259,
    "<|hi|>": 50276,
    "<|translate|>": 50358,
    "<|transcribe|>": 50359,
    "<|startoflm|>": 50360,
    "<|startofprev|>": 50361,
    "<|nospeech|>": 50362,
    "<|notimestamps|>": 50363,
    "<|0.00|>": 50364,
    "<|30.00|>": 51864,
}
TEXTS = [
    "A child is playing in the park.",
    "नमस्ते, आज मौसम बहुत अच्छा है",
    "  spaces,   numbers 12345 and symbols ♪ (laughs)",
]


@pytest.fixture(scope="module")
def tokenizer(checkpoints):
    return WhisperTokenizerFast.from_pretrained(checkpoints["whisper"])


def test_tokenizer_has_the_released_vocabulary_size(tokenizer):
    assert len(tokenizer) == 51865


@pytest.mark.parametrize(("token", "expected_id"), sorted(RELEASED_IDS.items()))
def test_tokenizer_special_token_ids_match_released_checkpoints(tokenizer, token, expected_id):
    assert tokenizer.convert_tokens_to_ids(token) == expected_id


def test_special_tokens_list_99_languages_in_whisper_order():
    tokens = special_tokens()
    assert tokens[2:5] == ["<|en|>", "<|zh|>", "<|de|>"]
    assert len(tokens) == 2 + 99 + 6


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_encodes_like_tiktoken_when_given_the_same_ranks(tokenizer, text):
    tiktoken = pytest.importorskip("tiktoken")
    ranks = load_bpe_ranks(openai_whisper_assets() / "multilingual.tiktoken")
    encoding = tiktoken.Encoding(
        name="multilingual",
        explicit_n_vocab=len(ranks),
        pat_str=r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
        mergeable_ranks=ranks,
        special_tokens={},
    )
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert ids == encoding.encode(text)
    assert tokenizer.decode(ids) == text
