"""The preallocated-cache greedy decoder against transformers' own decoding on the same weights."""

import pytest
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from s2i.stages.whisper.static_decoding import StaticWhisperDecoder

PROMPT = [50258, 50276, 50358, 50363]


def random_whisper() -> WhisperForConditionalGeneration:
    torch.manual_seed(0)
    # A wide init spreads the logits, so greedy tokens differ between steps and rows.
    config = WhisperConfig(
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=50,
        max_target_positions=64,
        decoder_start_token_id=50258,
        pad_token_id=50257,
        init_std=0.2,
    )
    return WhisperForConditionalGeneration(config).eval()


def transformers_greedy(model, encoder_hidden_states, prompt, new_tokens) -> torch.Tensor:
    with torch.inference_mode():
        out = model(encoder_outputs=(encoder_hidden_states,), decoder_input_ids=prompt, use_cache=True)
        tokens = [out.logits[:, -1].argmax(-1, keepdim=True)]
        for _ in range(new_tokens - 1):
            out = model(
                encoder_outputs=(encoder_hidden_states,),
                decoder_input_ids=tokens[-1],
                past_key_values=out.past_key_values,
                use_cache=True,
            )
            tokens.append(out.logits[:, -1].argmax(-1, keepdim=True))
    return torch.cat(tokens, dim=1)


def test_static_decoder_tokens_equal_transformers_greedy_when_batch_rows_differ():
    model = random_whisper()
    features = torch.randn(3, 80, 100, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        encoder_hidden_states = model.model.encoder(features).last_hidden_state
    prompt = torch.tensor([PROMPT] * 3)
    expected = transformers_greedy(model, encoder_hidden_states, prompt, 12)
    decoder = StaticWhisperDecoder(model, batch_size=3, max_length=20, source_length=encoder_hidden_states.shape[1])
    decoder.set_encoder_output(encoder_hidden_states)
    tokens = decoder.generate(prompt, 12)
    assert tokens.shape == (3, 12)
    assert len(set(tokens.flatten().tolist())) > 3  # not one repeated token: the comparison means something
    assert torch.equal(tokens, expected)
    # A second batch on the same buffers: stale cache entries from the first must not leak in.
    decoder.set_encoder_output(encoder_hidden_states.flip(0))
    assert torch.equal(decoder.generate(prompt, 12), expected.flip(0))


def test_static_decoder_refuses_when_tokens_exceed_its_cache():
    model = random_whisper()
    decoder = StaticWhisperDecoder(model, batch_size=1, max_length=8, source_length=50)
    with pytest.raises(ValueError, match="max_length"):
        decoder.generate(torch.tensor([PROMPT]), 5)
    with pytest.raises(ValueError, match="positions"):
        StaticWhisperDecoder(model, batch_size=1, max_length=65, source_length=50)


def test_static_decoder_capture_refuses_when_not_on_cuda():
    decoder = StaticWhisperDecoder(random_whisper(), batch_size=1, max_length=8, source_length=50)
    with pytest.raises(RuntimeError, match="CUDA"):
        decoder.capture()
