"""Data modes for pre-training and fine-tuning, and which targets each one trains on.

``--data-mode`` picks how a speech-text document becomes a stream (data/interleave.py):
``interleaved`` (pre-training), ``speech``, ``text``, ``asr`` (``<s> units <t> transcript``) or
``tts`` (``<t> transcript <s> units``). Fine-tuning for ASR learns the transcript given the
speech, not the speech itself, so in ``asr`` mode only the targets after the document's ``<t>``
count in the loss (the transcript and its EOS), and in ``tts`` mode only those after ``<s>``
(the units and EOS). The other modes train on every target.
"""

from __future__ import annotations

from typing import Optional

import torch

from megatron_lst.data.interleave import ASR, MODES, TTS, InterleaveConfig
from megatron_lst.tokenizer import VocabLayout

DATA_MODES = MODES


def interleave_config(data_mode: str, seed: int, opening_speech_uniform: bool = True,
                      text_document_marker: bool = True) -> InterleaveConfig:
    """The run's interleaving: ``--data-mode``, the data seed and the reference-code options."""
    return InterleaveConfig(mode=data_mode, seed=seed, opening_speech_uniform=opening_speech_uniform,
                            text_document_marker=text_document_marker)


def answer_marker(data_mode: str, vocab: VocabLayout) -> Optional[int]:
    """The marker after which targets are trained on; None: all targets."""
    return {ASR: vocab.text_marker_id, TTS: vocab.speech_marker_id}.get(data_mode)


def answer_target_mask(tokens: torch.Tensor, document_ids: Optional[torch.Tensor], data_mode: str,
                       vocab: VocabLayout) -> Optional[torch.Tensor]:
    """tokens [B, N+1] (inputs plus last target) -> [B, N] float mask of trained targets, or None.

    Target k (token k + 1) is trained on when the answer marker of its own document comes before
    it. A document piece cut off by packing before its marker trains on nothing.
    """
    marker = answer_marker(data_mode, vocab)
    if marker is None:
        return None
    is_marker = (tokens == marker).long()
    seen = torch.cumsum(is_marker, dim=1) - is_marker  # markers before each position
    if document_ids is not None:
        documents = document_ids.long()
        starts = torch.ones_like(documents, dtype=torch.bool)
        starts[:, 1:] = documents[:, 1:] != documents[:, :-1]
        before_document = torch.where(starts, seen, torch.zeros_like(seen))
        before_document = torch.cummax(before_document, dim=1).values
        seen = seen - before_document
    return (seen[:, 1:] > 0).float()
