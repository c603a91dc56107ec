"""Score the endings of one item from a single read of their shared prompt.

All endings of an item share ``BOS m(P) prompt [m(E)]``, most of every sequence's tokens. The
whole-sequence scorer (model_scorer.CheckpointScorer) runs each ending's full sequence; this one
reads the endings' longest common prefix once with the incremental stepper of the model family
(inference/lst_stepper.py, baseline_stepper.py: ``extend`` reads many tokens per pass), copies
that state to one row per ending (``select_rows``) and reads each ending's rest in one batched
pass. Attention is causal and the stepper's caches hold exactly what a full forward pass sees, so
the log-probs equal the whole-sequence ones (tests/evaluation/test_prompt_cache.py, to 1e-5).

LST patches are decided as in the whole-sequence path: the training kernel patches each full
sequence (scoring_patch_lengths, static or aligned), and the stepper is told where each patch
ends. The prompt's patches can depend on what follows it: under the paper's boundary rule a
speech run's last, short patch closes where the next token is not a unit, so the last prompt
token ends a patch for one ending and not for another whose first token is a unit. The shared
read therefore stops where the endings' patch ends first disagree (at worst after BOS), and
everything after that point is read per ending: the cached path patches exactly like the full
forward pass, never approximately.

A model the stepper cannot run (an LST whose encoder cross-attention sees earlier patches,
``--cross-attn-window-encoder`` other than 1) is scored whole-sequence: ``prompt_cached_scorer``
returns None and says why.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from megatron_lst.inference.patch_tracker import flags_from_patch_lengths

Alignment = Optional[tuple[np.ndarray, np.ndarray]]


def common_prefix_length(rows: torch.Tensor, lengths: Sequence[int]) -> int:
    """Tokens (from the start) on which every row agrees, at most ``min(lengths) - 1`` so that
    every row keeps at least one token to predict after it."""
    agree = (rows == rows[:1]).all(dim=0)
    limit = min(lengths) - 1
    disagree = torch.nonzero(~agree[:limit])
    return int(disagree[0]) if len(disagree) else limit


class PromptCachedScorer:
    """``item_logprobs(sequences)``: log p(token t | tokens < t), t = 1 .. len - 1, for the endings
    of one item, the same numbers as ``CheckpointScorer.token_logprobs`` on those sequences."""

    def __init__(self, stepper, tokenizer, device: torch.device, patching=None):
        self.stepper = stepper
        self.tokenizer = tokenizer
        self.device = device
        self.patching = patching  # LST: the scoring PatchingConfig; baselines: None (every token its own position)
        self.shared_tokens = 0  # prefix tokens read once per item (reported by the benchmark)
        self.total_tokens = 0

    def _patch_ends(self, rows: torch.Tensor, lengths: list[int], alignments: Optional[list[Alignment]]) -> torch.Tensor:
        """completes [B, L - 1]: input token t ends its patch, from the training kernel's patching of
        each whole right-padded row (baselines: every token is a global position of its own)."""
        if self.patching is None:
            return torch.ones(rows.shape[0], rows.shape[1] - 1, dtype=torch.bool, device=rows.device)
        from megatron_lst.evaluation.model_scorer import scoring_patch_lengths

        segment_ids = is_silence = None
        if alignments is not None:
            segment_ids = torch.full(rows.shape, -1, dtype=torch.int32, device=rows.device)
            is_silence = torch.zeros(rows.shape, dtype=torch.bool, device=rows.device)
            for row, (ids, silence) in enumerate(alignments):
                segment_ids[row, :lengths[row]] = torch.as_tensor(np.asarray(ids), dtype=torch.int32)
                is_silence[row, :lengths[row]] = torch.as_tensor(np.asarray(silence), dtype=torch.bool)
        patch_lengths = scoring_patch_lengths(rows, self.patching, self.tokenizer, segment_ids, is_silence)
        return flags_from_patch_lengths(patch_lengths, rows.shape[1] - 1)

    @torch.no_grad()
    def item_logprobs(self, sequences: list[np.ndarray], alignments: Optional[list[Alignment]] = None
                      ) -> list[np.ndarray]:
        lengths = [len(sequence) for sequence in sequences]
        rows = torch.full((len(sequences), max(lengths)), self.tokenizer.pad_id, dtype=torch.long)
        for row, sequence in enumerate(sequences):
            rows[row, :lengths[row]] = torch.as_tensor(sequence, dtype=torch.long)
        rows = rows.to(self.device)
        completes = self._patch_ends(rows, lengths, alignments)
        inputs = rows[:, :-1]
        shared = common_prefix_length(inputs, lengths)
        # the shared read ends before the first token whose patch end differs between endings
        differ = torch.nonzero(~(completes[:, :shared] == completes[:1, :shared]).all(dim=0))
        if len(differ):
            shared = int(differ[0])
        shared = max(shared, 1)  # BOS is every ending's first token and its own patch
        self.shared_tokens += shared * (len(sequences) - 1)
        self.total_tokens += sum(length - 1 for length in lengths)
        stepper = self.stepper
        stepper.reset(1)
        head = stepper.extend(inputs[:1, :shared], completes[:1, :shared])[0]  # [shared, V]
        stepper.select_rows(torch.zeros(len(sequences), dtype=torch.long, device=self.device))
        tail = stepper.extend(inputs[:, shared:], completes[:, shared:]) if inputs.shape[1] > shared else None
        vocab = self.tokenizer.vocab_size
        head_logprobs = torch.log_softmax(head[:, :vocab].float(), dim=-1)
        tail_logprobs = None if tail is None else torch.log_softmax(tail[..., :vocab].float(), dim=-1)
        results = []
        for row, length in enumerate(lengths):
            logprobs = head_logprobs if tail_logprobs is None else torch.cat([head_logprobs, tail_logprobs[row]])
            logprobs = logprobs[:length - 1].gather(-1, rows[row, 1:length, None]).squeeze(-1)
            results.append(logprobs.cpu().numpy().astype(np.float64))
        return results


def prompt_cached_scorer(model: torch.nn.Module, patched: bool, tokenizer, device: torch.device,
                         patching=None) -> tuple[Optional[PromptCachedScorer], str]:
    """(the scorer, '') or (None, why not) for a loaded model; ``patched``: its registry entry
    groups speech into patches (LST), else it is a plain decoder (the baselines)."""
    if patched:
        from megatron_lst.inference.lst_stepper import LSTStepper

        try:
            stepper = LSTStepper(model)
        except ValueError as error:
            return None, str(error)
        return PromptCachedScorer(stepper, tokenizer, device, patching), ""
    from megatron_lst.inference.baseline_stepper import BaselineStepper

    return PromptCachedScorer(BaselineStepper(model), tokenizer, device), ""
