"""The LST decoded one token per step with caches in all three modules (docs/method.md §2, §8).

Per step and row, for the new token:
1. if the row's open speech patch ended before this token (``close_before``), close it first;
2. patch encoder: the token's sliding-window layers read/extend their caches; the token's state
   after every layer is kept while its patch is open (the patch's cross-attention needs them);
3. if the token ends its patch (``completes``), close it: max-pool + cross-attention over the
   patch's tokens -> ``encoder_to_global`` -> one global step (its own KV cache, RoPE at the
   row's patch index) -> ``global_to_decoder`` -> the decoder cross-attention keys/values of
   that patch are appended to the decoder's cross caches;
4. patch decoder: cross-attention to the row's newest closed patches, at most its window of them
   (the one-patch lag holds by construction: a patch is visible once closed), sliding-window
   self-attention, head.

Closing a patch runs the global model for the whole batch; rows that close nothing append an
invalid slot, so rows may sit at different patch counts. ``global_positions`` counts, per row,
the patches the global model has seen.
"""

from __future__ import annotations

import torch

from megatron_lst.inference.kv_cache import KVCache, last_valid_slots
from megatron_lst.inference.layer_steps import (
    linear,
    cached_cross_attention_layer_step,
    cross_attention_layer_step,
    cross_keys_values,
    self_attention_layer_step,
)
from megatron_lst.inference.rotary import RotaryTable
from megatron_lst.models.lst import LSTModel


class OpenPatches:
    """Per-layer encoder states [B, capacity, E] of each row's tokens in its still-open patch."""

    def __init__(self, batch_size: int, num_layers: int, width: int, like: torch.Tensor):
        self.states = [like.new_zeros(batch_size, 4, width) for _ in range(num_layers)]
        self.counts = torch.zeros(batch_size, dtype=torch.long, device=like.device)

    def push(self, layer_states: list[torch.Tensor]) -> None:
        """Append one token's state per layer ([B, E] each) to every row's open patch."""
        if int(self.counts.max()) >= self.states[0].shape[1]:
            self.states = [torch.cat([states, torch.zeros_like(states)], dim=1) for states in self.states]
        rows = torch.arange(self.counts.shape[0], device=self.counts.device)
        for buffer, state in zip(self.states, layer_states):
            buffer[rows, self.counts] = state
        self.counts += 1

    def token_mask(self) -> torch.Tensor:
        """[B, capacity] True on the slots that hold a token of the open patch."""
        return torch.arange(self.states[0].shape[1], device=self.counts.device)[None] < self.counts[:, None]

    def clear(self, rows: torch.Tensor) -> None:
        self.counts = torch.where(rows, torch.zeros_like(self.counts), self.counts)


class LSTStepper:
    """Incremental LST: ``step(tokens, close_before, completes)`` -> next-token logits [B, V]."""

    def __init__(self, model: LSTModel):
        if not (model.pre_process and model.post_process):
            raise ValueError("incremental decoding needs the whole model in one stage (PP = 1)")
        self.model = model
        encoder, decoder = model.patch_encoder, model.patch_decoder
        if encoder.earlier_patches != 0:
            raise ValueError(
                "incremental decoding keeps only the open patch's tokens for the encoder's cross-attention: "
                f"it needs --cross-attn-window-encoder 1 (this model sees {encoder.earlier_patches} earlier patches)"
            )
        # a decoder token sees its newest `window` closed patches (None: all of them)
        self.decoder_window = None if decoder.earlier_patches is None else decoder.earlier_patches + 1
        self.encoder_tables = RotaryTable(encoder.stack.rotary)
        self.decoder_tables = RotaryTable(decoder.stack.rotary)
        self.global_tables = RotaryTable(model.global_rotary)
        self.batch_size = 0

    def reset(self, batch_size: int) -> None:
        """Empty caches for a new batch of ``batch_size`` sequences."""
        model = self.model
        encoder, decoder = model.patch_encoder, model.patch_decoder
        like = next(model.parameters())
        self.batch_size = batch_size
        self.position = 0
        self.encoder_caches = [KVCache(encoder.stack.window_size) for _ in encoder.stack.window_layers]
        self.decoder_caches = [KVCache(decoder.stack.window_size) for _ in decoder.stack.window_layers]
        self.global_caches = [KVCache() for _ in model.global_block.layers]
        self.decoder_cross_caches = [KVCache() for _ in decoder.stack.cross_layers]
        self.open_patches = OpenPatches(batch_size, len(encoder.stack.window_layers), encoder.config.hidden_size, like)
        self.global_positions = torch.zeros(batch_size, dtype=torch.long, device=like.device)
        self.global_calls = 0

    # ------------------------------------------------------------------ patch -> global -> decoder
    def _patch_state(self) -> torch.Tensor:
        """Encoder state [1, B, k*E] of every row's open patch (rows with none give garbage)."""
        encoder = self.model.patch_encoder
        token_mask = self.open_patches.token_mask()
        token_mask[:, 0] = True  # rows with an empty patch: any finite value, discarded
        first_layer = self.open_patches.states[0].masked_fill(~token_mask[..., None], float("-inf"))
        queries = first_layer.max(dim=1).values[None]  # [1, B, E]
        if encoder.query_offsets is not None:
            queries = queries + encoder.query_offsets[:, None, :]  # [k, B, E]
        allowed = token_mask[:, None, None, :]
        for index, layer in enumerate(encoder.stack.cross_layers):
            keys, values = cross_keys_values(layer, self.open_patches.states[index].transpose(0, 1))
            queries = cross_attention_layer_step(layer, queries, keys, values, allowed)
        k, batch, width = queries.shape
        return queries.permute(1, 0, 2).reshape(1, batch, k * width)

    def _close_patches(self, rows: torch.Tensor) -> None:
        """Run the global model on the open patch of every row in ``rows`` [B] bool."""
        model = self.model
        hidden = model.encoder_to_global(self._patch_state())
        valid = rows[:, None]
        freqs = self.global_tables.at(self.global_positions)
        for layer, cache in zip(model.global_block.layers, self.global_caches):
            hidden = self_attention_layer_step(layer, hidden, freqs, cache, valid)
        hidden = model.global_block.final_layernorm(hidden)
        decoder_patch = model.global_to_decoder(hidden)
        for layer, cache in zip(model.patch_decoder.stack.cross_layers, self.decoder_cross_caches):
            keys, values = cross_keys_values(layer, decoder_patch)
            cache.append(keys, values, valid)
        self.global_positions += rows.long()
        self.global_calls += 1
        self.open_patches.clear(rows)

    def finish(self, rows: torch.Tensor) -> None:
        """Close the open patch of the given rows [B] bool (a row that stops mid-patch), so the
        caches hold the whole sequence and a caller may continue it in another modality."""
        rows = rows & (self.open_patches.counts > 0)
        if bool(rows.any()):
            self._close_patches(rows)

    def _decoder_cross_step(self, layer, hidden: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Cross-attention of the new token to the closed patches within the decoder's window."""
        if self.decoder_window is None:
            return cached_cross_attention_layer_step(layer, hidden, cache)
        allowed = last_valid_slots(cache.valid, self.decoder_window)[:, None, None, :]
        return cross_attention_layer_step(layer, hidden, cache.keys, cache.values, allowed)

    # ------------------------------------------------------------------ one token
    @torch.no_grad()
    def step(self, tokens: torch.Tensor, close_before: torch.Tensor, completes: torch.Tensor) -> torch.Tensor:
        """tokens, close_before, completes: [B] -> logits [B, V] predicting each row's next token."""
        model = self.model
        encoder, decoder = model.patch_encoder, model.patch_decoder
        if bool(close_before.any()):
            self._close_patches(close_before)
        positions = torch.full((tokens.shape[0],), self.position, dtype=torch.long, device=tokens.device)
        hidden = encoder.embedding(tokens[:, None]).transpose(0, 1)  # [1, B, E]
        freqs = self.encoder_tables.at(positions)
        layer_states = []
        for layer, cache in zip(encoder.stack.window_layers, self.encoder_caches):
            hidden = self_attention_layer_step(layer, hidden, freqs, cache)
            layer_states.append(hidden[0])
        self.open_patches.push(layer_states)
        if bool(completes.any()):
            self._close_patches(completes)
        if model.token_to_decoder is not None:
            hidden = model.token_to_decoder(hidden)
        freqs = self.decoder_tables.at(positions)
        for index, (cross, window) in enumerate(zip(decoder.stack.cross_layers, decoder.stack.window_layers)):
            hidden = self._decoder_cross_step(cross, hidden, self.decoder_cross_caches[index])
            hidden = self_attention_layer_step(window, hidden, freqs, self.decoder_caches[index])
        logits = linear(decoder.output_layer, decoder.final_norm(hidden))
        self.position += 1
        return logits[0]
