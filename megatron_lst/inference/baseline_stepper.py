"""The baseline (megatron-core ``GPTModel``) decoded one token per step with a KV cache.

Every token is one global position, so each step runs the whole global transformer once; the
LST runs it once per patch. Same interface as ``LSTStepper`` (the patch flags are ignored).
"""

from __future__ import annotations

import torch
from megatron.core.models.gpt import GPTModel

from megatron_lst.inference.kv_cache import KVCache
from megatron_lst.inference.layer_steps import linear, self_attention_chunk_step, self_attention_layer_step
from megatron_lst.inference.rotary import RotaryTable


class BaselineStepper:
    """Incremental GPTModel: ``step(tokens, ...)`` -> next-token logits [B, V]."""

    def __init__(self, model: GPTModel):
        if not (model.pre_process and model.post_process):
            raise ValueError("incremental decoding needs the whole model in one stage (PP = 1)")
        self.model = model
        self.rotary = RotaryTable(model.rotary_pos_emb)
        self.batch_size = 0

    def reset(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.position = 0
        self.caches = [KVCache() for _ in self.model.decoder.layers]
        device = next(self.model.parameters()).device
        self.global_positions = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.global_calls = 0

    def finish(self, rows: torch.Tensor) -> None:
        """Nothing is pending: every token was its own global position."""

    def select_rows(self, index: torch.Tensor) -> None:
        """Row ``index[i]`` becomes row i (rows may repeat): a prompt's state copied per ending."""
        for cache in self.caches:
            cache.select_rows(index)
        self.global_positions = self.global_positions.index_select(0, index)
        self.batch_size = int(index.shape[0])

    @torch.no_grad()
    def extend(self, tokens: torch.Tensor, completes: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, S] read in one pass (a prompt, or the endings after it) -> logits [B, S, V]
        at every new position, equal to S ``step`` calls."""
        model = self.model
        steps = tokens.shape[1]
        positions = self.position + torch.arange(steps, device=tokens.device)[None].expand_as(tokens)
        hidden = model.embedding(input_ids=tokens, position_ids=positions)  # [S, B, H]
        freqs = self.rotary.at(positions)
        for layer, cache in zip(model.decoder.layers, self.caches):
            hidden = self_attention_chunk_step(layer, hidden, freqs, cache)
        logits = linear(model.output_layer, model.decoder.final_layernorm(hidden))
        self.position += steps
        self.global_positions += steps
        self.global_calls += 1
        return logits.transpose(0, 1)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, close_before: torch.Tensor | None = None,
             completes: torch.Tensor | None = None) -> torch.Tensor:
        model = self.model
        positions = torch.full((tokens.shape[0],), self.position, dtype=torch.long, device=tokens.device)
        hidden = model.embedding(input_ids=tokens[:, None], position_ids=positions[:, None])  # [1, B, H]
        freqs = self.rotary.at(positions)
        for layer, cache in zip(model.decoder.layers, self.caches):
            hidden = self_attention_layer_step(layer, hidden, freqs, cache)
        hidden = model.decoder.final_layernorm(hidden)
        logits = linear(model.output_layer, hidden)
        self.position += 1
        # rows that stopped step with their flags off: their padding is not generated speech
        self.global_positions += 1 if completes is None else completes.long()
        self.global_calls += 1
        return logits[0]
