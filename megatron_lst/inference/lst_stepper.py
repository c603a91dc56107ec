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
    self_attention_chunk_step,
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

    def select_rows(self, index: torch.Tensor) -> None:
        self.states = [states.index_select(0, index) for states in self.states]
        self.counts = self.counts.index_select(0, index)


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

    def select_rows(self, index: torch.Tensor) -> None:
        """Row ``index[i]`` becomes row i (rows may repeat): a prompt's state copied per ending,
        open patch included, so each ending continues the prompt exactly as its own row would."""
        for cache in (*self.encoder_caches, *self.decoder_caches, *self.global_caches, *self.decoder_cross_caches):
            cache.select_rows(index)
        self.open_patches.select_rows(index)
        self.global_positions = self.global_positions.index_select(0, index)
        self.batch_size = int(index.shape[0])

    # ------------------------------------------------------------------ a chunk of tokens
    def _chunk_patches(self, layer_states: list[torch.Tensor], completes: torch.Tensor) -> torch.Tensor:
        """Close every patch that ends in the chunk; returns, per row and chunk position, how many
        of the chunk's patches are closed once that token is read ([B, S], inclusive).

        A row's open patch (tokens carried over from earlier calls) and the chunk's tokens form
        one token axis; the patches closed here are pooled and cross-attended all at once (the
        encoder's patch queries see their own patch only, ``--cross-attn-window-encoder 1``),
        then the global model steps over them as one chunk, K slots per row (rows that close
        fewer leave invalid slots, as ``step`` does). Tokens after a row's last closed patch
        become its open patch."""
        model, encoder = self.model, self.model.patch_encoder
        batch, steps = completes.shape
        device = completes.device
        carried = self.open_patches.states[0].shape[1]
        spare = 4  # room so the new open patch always fits the buffer it is gathered into
        tokens = [torch.cat([open_states, chunk.transpose(0, 1), open_states.new_zeros(batch, spare, chunk.shape[-1])],
                            dim=1) for open_states, chunk in zip(self.open_patches.states, layer_states)]
        width = carried + steps + spare
        slot_valid = torch.cat([self.open_patches.token_mask(), torch.ones(batch, steps, dtype=torch.bool, device=device),
                                torch.zeros(batch, spare, dtype=torch.bool, device=device)], dim=1)
        completes = completes.long()
        closed_by = torch.cumsum(completes, dim=1)  # [B, S] patches closed once token j is read
        patch_of_slot = torch.cat([torch.zeros(batch, carried, dtype=torch.long, device=device),
                                   closed_by - completes, torch.zeros(batch, spare, dtype=torch.long, device=device)], 1)
        closed = closed_by[:, -1]
        most = int(closed.max())
        if most:
            member = slot_valid[:, None, :] & (patch_of_slot[:, None, :] == torch.arange(most, device=device)[None, :, None])
            member[:, :, 0] |= ~member.any(-1)  # padding patches of rows that close fewer: any finite value
            first = tokens[0][:, None].masked_fill(~member[..., None], float("-inf")).max(dim=2).values  # [B, K, E]
            queries = first.transpose(0, 1)[:, None]  # [K, 1, B, E]
            if encoder.query_offsets is not None:
                queries = queries + encoder.query_offsets[None, :, None, :]  # [K, k, B, E]
            per_patch = queries.shape[1]
            queries = queries.reshape(most * per_patch, batch, -1)
            allowed = member.repeat_interleave(per_patch, dim=1)[:, None]  # [B, 1, K * k, width]
            for index, layer in enumerate(encoder.stack.cross_layers):
                keys, values = cross_keys_values(layer, tokens[index].transpose(0, 1))
                queries = cross_attention_layer_step(layer, queries, keys, values, allowed)
            patches = queries.view(most, per_patch, batch, -1).permute(0, 2, 1, 3).reshape(most, batch, -1)
            hidden = model.encoder_to_global(patches)
            valid = torch.arange(most, device=device)[None] < closed[:, None]  # [B, K]
            freqs = self.global_tables.at(self.global_positions[:, None] + torch.arange(most, device=device)[None])
            for layer, cache in zip(model.global_block.layers, self.global_caches):
                hidden = self_attention_chunk_step(layer, hidden, freqs, cache, valid)
            decoder_patches = model.global_to_decoder(model.global_block.final_layernorm(hidden))
            for layer, cache in zip(model.patch_decoder.stack.cross_layers, self.decoder_cross_caches):
                keys, values = cross_keys_values(layer, decoder_patches)
                cache.append(keys, values, valid)
            self.global_positions += closed
            self.global_calls += 1
        # the tokens after each row's last closed patch, gathered to the front, are its open patch
        still_open = slot_valid & (patch_of_slot == closed[:, None])
        order = torch.where(still_open, torch.arange(width, device=device)[None], width).argsort(dim=1, stable=True)
        keep = max(4, int(still_open.sum(1).max()))
        order = order[:, :keep, None]
        self.open_patches.states = [states.gather(1, order.expand(-1, -1, states.shape[-1])) for states in tokens]
        self.open_patches.counts = still_open.sum(1)
        return closed_by

    def _decoder_cross_mask(self, closed_by: torch.Tensor) -> torch.Tensor:
        """[B, 1, S, L] the closed patches each chunk token's decoder cross-attention reads: those
        closed before the chunk and the chunk's first ``closed_by`` ones, the newest ``window``."""
        cache = self.decoder_cross_caches[0]
        new = int(closed_by[:, -1].max()) if closed_by.shape[1] else 0
        before = cache.length - new
        slots = torch.arange(cache.length, device=closed_by.device)[None, None]
        visible = cache.valid[:, None, :] & (slots < before + closed_by[:, :, None])  # [B, S, L]
        if self.decoder_window is not None:
            visible = visible & (visible.flip(2).cumsum(2).flip(2) <= self.decoder_window)
        return visible[:, None]

    @torch.no_grad()
    def extend(self, tokens: torch.Tensor, completes: torch.Tensor) -> torch.Tensor:
        """tokens, completes [B, S] read in one pass -> logits [B, S, V], equal to S ``step`` calls
        with these ``completes`` and no late close (teacher forcing: the patching saw the whole
        sequence). A prompt read once this way and copied per ending (``select_rows``) gives each
        ending the scores a full forward pass over prompt + ending gives."""
        model = self.model
        encoder, decoder = model.patch_encoder, model.patch_decoder
        steps = tokens.shape[1]
        positions = self.position + torch.arange(steps, device=tokens.device)[None].expand_as(tokens)
        hidden = encoder.embedding(tokens).transpose(0, 1)  # [S, B, E]
        freqs = self.encoder_tables.at(positions)
        layer_states = []
        for layer, cache in zip(encoder.stack.window_layers, self.encoder_caches):
            hidden = self_attention_chunk_step(layer, hidden, freqs, cache)
            layer_states.append(hidden)
        closed_by = self._chunk_patches(layer_states, completes)
        if not self.decoder_cross_caches[0].length:
            raise ValueError("a token was read before any patch closed (a sequence must open with a patch "
                             "that closes, such as BOS)")
        allowed = self._decoder_cross_mask(closed_by)
        if model.token_to_decoder is not None:
            hidden = model.token_to_decoder(hidden)
        freqs = self.decoder_tables.at(positions)
        for index, (cross, window) in enumerate(zip(decoder.stack.cross_layers, decoder.stack.window_layers)):
            cache = self.decoder_cross_caches[index]
            hidden = cross_attention_layer_step(cross, hidden, cache.keys, cache.values, allowed)
            hidden = self_attention_chunk_step(window, hidden, freqs, self.decoder_caches[index])
        logits = linear(decoder.output_layer, decoder.final_norm(hidden))
        self.position += steps
        return logits.transpose(0, 1)

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
