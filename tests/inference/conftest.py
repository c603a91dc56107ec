"""Fixtures for the inference tests: megatron's one-rank model-parallel state, small models."""

from __future__ import annotations

import pytest
import torch

from megatron_lst.models.baseline import build_baseline_model
from megatron_lst.models.config import model_flavour
from megatron_lst.models.lst import LSTModel, lst_transformer_configs
from megatron_lst.models.specs import transformer_config
from megatron_lst.tokenizer import VocabLayout

LAYOUT = VocabLayout(text_vocab_size=40, num_units=12, spare_units=1)
VOCAB = 128  # padded joint vocabulary (LAYOUT.vocab_size rounded up)


@pytest.fixture(scope="module")
def model_parallel(single_rank_parallel_state):
    """megatron's one-rank parallel state (tests/conftest.py), single-threaded.

    Decoding multiplies tiny matrices; on a loaded CI machine torch's second thread spins far
    longer than the work takes, so these tests run single-threaded.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build_lst(seed: int = 0, **overrides) -> LSTModel:
    torch.manual_seed(seed)
    shape = model_flavour("debug", **overrides)
    global_config, encoder_config, decoder_config = lst_transformer_configs(shape)
    model = LSTModel(shape, global_config, encoder_config, decoder_config, vocab_size=VOCAB)
    # megatron's CPU init draws small weights: make them larger so differences show in the logits
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.15)
    return model.eval()


def build_baseline(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    shape = model_flavour("debug", **overrides)
    model = build_baseline_model(shape, transformer_config(shape), VOCAB, max_sequence_length=4096, use_te=False)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.15)
    return model.eval()
