"""How long a scoring sequence is for the model it is scored with.

A baseline's ``--seq-length`` counts tokens. An LST's counts patches, the global model's
positions, which is what limits it: one static patch holds up to ``--patch-size`` speech units.
Capping an LST's sequences at its ``--seq-length`` in tokens threw most of its context away (a
264-token spoken ending did not fit 256 "tokens" although it is about 70 patches), so LST
sequences are measured in the patches the training kernel makes of them (static or aligned, the
scoring patching), counted over the whole sequence, BOS, markers and padding-free.
"""

from __future__ import annotations

from typing import Callable

import torch

from megatron_lst.evaluation.scoring import ScoringSequence


def patch_counter(patching, tokenizer) -> Callable[[ScoringSequence], int]:
    """``measure`` for ``SequenceBuilder``: the number of patches of one sequence under ``patching``
    (a PatchingConfig, training.checkpoint_loading.fixed_patching_config)."""
    from megatron_lst.evaluation.model_scorer import scoring_patch_lengths

    def count(sequence: ScoringSequence) -> int:
        tokens = torch.as_tensor(sequence.tokens, dtype=torch.long)[None]
        segment_ids = is_silence = None
        if sequence.segment_ids is not None:
            segment_ids = torch.as_tensor(sequence.segment_ids, dtype=torch.int32)[None]
            is_silence = torch.as_tensor(sequence.is_silence, dtype=torch.bool)[None]
        lengths = scoring_patch_lengths(tokens, patching, tokenizer, segment_ids, is_silence)
        return int((lengths > 0).sum())

    return count
