"""Greedy Whisper decoding with a preallocated KV cache, capturable as one CUDA graph per step.

transformers' decoder grows its self-attention cache by concatenation, so every step has
new shapes and runs as hundreds of separately launched kernels: at batch 8 on a GPU the
step is bound by launch and Python overhead, not arithmetic. Here the cache is allocated
once at ``max_length`` and written in place at the step's position, attention masks the
positions not yet written, and the position is a device tensor: a step has fixed shapes
and no host synchronisation, so on CUDA it is captured once as a CUDA graph and replayed.

The weights are the Hugging Face module's own (``WhisperForConditionalGeneration``), read
by attribute names that transformers 4.x and 5.x share, so any Whisper checkpoint works
without an export. Imports only torch (a GPU host needs nothing else to run it).
"""

from __future__ import annotations

import torch
from torch.nn.functional import scaled_dot_product_attention


class StaticWhisperDecoder:
    """Greedy decoding of a batch of ``batch_size`` sequences of at most ``max_length`` tokens."""

    def __init__(self, model: torch.nn.Module, batch_size: int, max_length: int, source_length: int) -> None:
        decoder = model.model.decoder
        config = model.config
        if max_length > config.max_target_positions:
            raise ValueError(
                f"`max_length` {max_length} exceeds the checkpoint's {config.max_target_positions} positions."
            )
        self.model, self.decoder = model, decoder
        self.heads = config.decoder_attention_heads
        self.head_dim = config.d_model // self.heads
        self.batch_size, self.max_length = batch_size, max_length
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        layers = len(decoder.layers)
        shape = (layers, batch_size, self.heads, max_length, self.head_dim)
        self.self_keys = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self.self_values = torch.zeros_like(self.self_keys)
        cross = (layers, batch_size, self.heads, source_length, self.head_dim)
        self.cross_keys = torch.zeros(cross, device=self.device, dtype=self.dtype)
        self.cross_values = torch.zeros_like(self.cross_keys)
        self.cache_positions = torch.arange(max_length, device=self.device)
        # The one-token step's inputs and output live at fixed addresses, so a graph can replay them.
        self.step_tokens = torch.zeros(batch_size, 1, dtype=torch.long, device=self.device)
        self.step_position = torch.zeros(1, dtype=torch.long, device=self.device)
        self.step_next = torch.zeros(batch_size, 1, dtype=torch.long, device=self.device)
        self.graph: torch.cuda.CUDAGraph | None = None

    def _split_heads(self, states: torch.Tensor) -> torch.Tensor:
        batch, length, _ = states.shape
        return states.view(batch, length, self.heads, self.head_dim).transpose(1, 2)

    def _merge_heads(self, states: torch.Tensor) -> torch.Tensor:
        batch, _, length, _ = states.shape
        return states.transpose(1, 2).reshape(batch, length, self.heads * self.head_dim)

    @torch.inference_mode()
    def set_encoder_output(self, encoder_hidden_states: torch.Tensor) -> None:
        """Project the encoder's output into every layer's cross-attention keys and values."""
        if encoder_hidden_states.shape[0] != self.batch_size:
            raise ValueError(f"expected {self.batch_size} encoder rows, got {encoder_hidden_states.shape[0]}")
        for index, layer in enumerate(self.decoder.layers):
            attention = layer.encoder_attn
            self.cross_keys[index].copy_(self._split_heads(attention.k_proj(encoder_hidden_states)))
            self.cross_values[index].copy_(self._split_heads(attention.v_proj(encoder_hidden_states)))

    def _logits(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Last position's logits for ``tokens`` at cache ``positions``, writing their keys and values."""
        hidden = self.decoder.embed_tokens(tokens) + self.decoder.embed_positions.weight.index_select(0, positions)
        # Row i of the query may see cache positions up to its own: causal within the chunk, all before it.
        visible = (self.cache_positions[None, :] <= positions[:, None])[None, None]
        for index, layer in enumerate(self.decoder.layers):
            attention = layer.self_attn
            normed = layer.self_attn_layer_norm(hidden)
            self.self_keys[index].index_copy_(2, positions, self._split_heads(attention.k_proj(normed)))
            self.self_values[index].index_copy_(2, positions, self._split_heads(attention.v_proj(normed)))
            attended = scaled_dot_product_attention(
                self._split_heads(attention.q_proj(normed)),
                self.self_keys[index],
                self.self_values[index],
                attn_mask=visible,
            )
            hidden = hidden + attention.out_proj(self._merge_heads(attended))
            cross = layer.encoder_attn
            normed = layer.encoder_attn_layer_norm(hidden)
            attended = scaled_dot_product_attention(
                self._split_heads(cross.q_proj(normed)), self.cross_keys[index], self.cross_values[index]
            )
            hidden = hidden + cross.out_proj(self._merge_heads(attended))
            normed = layer.final_layer_norm(hidden)
            hidden = hidden + layer.fc2(layer.activation_fn(layer.fc1(normed)))
        return self.model.proj_out(self.decoder.layer_norm(hidden[:, -1:]))

    def _step(self) -> None:
        logits = self._logits(self.step_tokens, self.step_position)
        self.step_next.copy_(logits.argmax(-1))

    @torch.inference_mode()
    def capture(self, warmup_steps: int = 2) -> None:
        """Record the one-token step as a CUDA graph (CUDA only; the cache's contents do not matter)."""
        if self.device.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device")
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup_steps):
                self._step()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._step()

    @torch.inference_mode()
    def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy tokens after ``prompt_ids`` ([batch, prompt]); the encoder output must be set."""
        prompt_length = prompt_ids.shape[1]
        if prompt_length + max_new_tokens > self.max_length:
            raise ValueError(
                f"prompt {prompt_length} + {max_new_tokens} new tokens exceed `max_length` {self.max_length}"
            )
        logits = self._logits(prompt_ids, self.cache_positions[:prompt_length])
        self.step_next.copy_(logits.argmax(-1))
        generated = [self.step_next.clone()]
        for position in range(prompt_length, prompt_length + max_new_tokens - 1):
            self.step_tokens.copy_(self.step_next)
            self.step_position.fill_(position)
            if self.graph is not None:
                self.graph.replay()
            else:
                self._step()
            generated.append(self.step_next.clone())
        return torch.cat(generated, dim=1)
