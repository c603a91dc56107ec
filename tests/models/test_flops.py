"""models/flops.py counts what the kernels compute: checked against torch's own FLOP counter."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from megatron_lst.models.config import model_flavour
from megatron_lst.models.flops import (
    TRAIN_MULTIPLIER,
    estimated_local_attention_pairs,
    lst_training_flops,
)
from megatron_lst.models.local_patterns import local_attention_pairs
from megatron_lst.models.lst import LSTModel, lst_transformer_configs
from tests.models.test_local_attention_paths import OVERRIDES, VOCAB, random_batch


@pytest.fixture(scope="module")
def model_parallel(single_rank_parallel_state):
    yield


def counted_forward_flops(module_call) -> int:
    """FLOPs of the matmuls a forward pass runs (SDPA through its math path, which the counter sees)."""
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        module_call()
    return counter.get_total_flops()


@pytest.mark.parametrize("overrides", [OVERRIDES, dict(local_window_size=8, encoder_hidden_size=32,
                                                       decoder_hidden_size=48, decoder_num_attention_heads=2)])
def test_local_module_flops_equal_the_counted_kernels(model_parallel, overrides):
    shape = model_flavour("debug", **overrides)
    model = LSTModel(shape, *lst_transformer_configs(shape), vocab_size=VOCAB).eval()
    batch = random_batch(seed=2)
    lengths, documents, inputs = batch["patch_lengths"], batch["documents"], batch["inputs"]
    rows, seq_len = inputs.shape
    num_patches = lengths.shape[1]
    pairs = local_attention_pairs(lengths, seq_len, documents, shape)
    expected = {name: value / TRAIN_MULTIPLIER
                for name, value in lst_training_flops(shape, rows, seq_len, num_patches, VOCAB, pairs).items()}

    encoder_flops = counted_forward_flops(lambda: model.patch_encoder(inputs, lengths, documents))
    assert encoder_flops == pytest.approx(expected["encoder"], rel=1e-9)

    token_states, patch_states = model.patch_encoder(inputs, lengths, documents)
    decoder_patches = model.global_to_decoder(model.encoder_to_global(patch_states))
    if model.token_to_decoder is not None:
        token_states = model.token_to_decoder(token_states)
    decoder_flops = counted_forward_flops(lambda: model.patch_decoder(token_states, decoder_patches, lengths, documents))
    projections = 2 * shape.hidden_size * shape.decoder_hidden_size * num_patches * rows
    if shape.encoder_hidden_size != shape.decoder_hidden_size:
        projections += 2 * shape.encoder_hidden_size * shape.decoder_hidden_size * seq_len * rows
    assert decoder_flops == pytest.approx(expected["decoder"] - projections, rel=1e-9)


def test_the_shape_estimate_is_close_to_the_exact_pairs_on_long_static_rows():
    """Static p = 4 over 4,096 tokens of speech, 1,024 patches, window 512 and 512 patches."""
    shape = model_flavour("1b-mini")
    lengths = torch.full((1, 1025), 4)
    lengths[0, 0], lengths[0, -1] = 1, 4096 + 1 - 1 - 4 * 1023
    exact = local_attention_pairs(lengths, 4096, None, shape)
    estimate = estimated_local_attention_pairs(shape, 4096, 1025)
    for name in ("local_self", "encoder_cross", "decoder_cross"):
        assert getattr(estimate, name) == pytest.approx(getattr(exact, name), rel=0.05), name
    assert exact.local_self == 4096 * (512 + 127)  # 32 blocks of 128 queries x 639 keys
