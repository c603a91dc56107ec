"""ASR/TTS fine-tuning streams train on the answer only: the targets after <t> (ASR) or <s> (TTS)."""

from __future__ import annotations

import torch

from megatron_lst.training.data_modes import answer_target_mask
from megatron_lst.tokenizer import VocabLayout

LAYOUT = VocabLayout(text_vocab_size=10, num_units=4, spare_units=1)
BOS, EOS, T, S, U = LAYOUT.bos_id, LAYOUT.eos_id, LAYOUT.text_marker_id, LAYOUT.speech_marker_id, LAYOUT.unit_offset


def test_asr_mask_trains_on_transcript_and_eos_per_document():
    # doc 0: BOS <s> u u <t> 3 4 EOS | doc 1: BOS <s> u <t> 5 EOS
    tokens = torch.tensor([[BOS, S, U, U + 1, T, 3, 4, EOS, BOS, S, U, T, 5, EOS]])
    documents = torch.tensor([[0] * 8 + [1] * 6])
    mask = answer_target_mask(tokens, documents, "asr", LAYOUT)
    targets = tokens[0, 1:]
    trained = targets[mask[0].bool()].tolist()
    assert trained == [3, 4, EOS, 5, EOS]


def test_tts_mask_trains_on_units_and_eos():
    tokens = torch.tensor([[BOS, T, 3, 4, S, U, U + 2, EOS]])
    mask = answer_target_mask(tokens, None, "tts", LAYOUT)
    assert tokens[0, 1:][mask[0].bool()].tolist() == [U, U + 2, EOS]


def test_other_modes_train_on_everything():
    tokens = torch.tensor([[BOS, T, 3, EOS]])
    assert answer_target_mask(tokens, None, "interleaved", LAYOUT) is None
