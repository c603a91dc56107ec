"""The global model and the baseline over packed documents (megatron's THD path) vs the document mask.

On GPU the transformer-engine spec would drop a [B, 1, S, S] document mask, so the global model of
LST and the baseline pack their documents instead (``models/packed_sequences.py``). On CPU the same
packed path runs through ``SDPACoreAttention``'s THD support, which lets these tests hold it to the
dense mask path: outputs and every parameter gradient to 1e-5 in fp32, over random documents, row
padding, patchings and TP = 2, and never a document attending across a pack boundary.

The TP = 2 case runs this file as a script under torchrun (gloo): ``python -m torch.distributed.run
--nproc-per-node 2 tests/models/test_packed_sequences.py OUT.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb  # noqa: E402
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding  # noqa: E402
from megatron.core.transformer.enums import AttnMaskType  # noqa: E402
from megatron.core.transformer.transformer_block import TransformerBlock  # noqa: E402

from megatron_lst.data.sampler import collate_packed  # noqa: E402
from megatron_lst.models.attention import SDPACoreAttention, causal_window_mask, varlen_attention  # noqa: E402
from megatron_lst.models.baseline import build_baseline_model  # noqa: E402
from megatron_lst.models.config import model_flavour  # noqa: E402
from megatron_lst.models.lst import LSTModel, global_packing_documents, lst_transformer_configs  # noqa: E402
from megatron_lst.models.packed_sequences import pack_documents, thd_params, unpack_token_values  # noqa: E402
from megatron_lst.models.specs import gpt_layer_spec, transformer_config  # noqa: E402
from megatron_lst.training.baseline_task import BaselineTask, packed_to_gpt_batch  # noqa: E402
from tests.models.test_lst import LAYOUT, VOCAB, training_batch  # noqa: E402
from tests.models.test_lst import random_sample as lst_random_sample  # noqa: E402

TOLERANCE = 1e-5


# ---------------------------------------------------------------------------------------- data
def random_document_ids(rng: np.random.Generator, batch: int, seq_len: int) -> torch.Tensor:
    """[B, S] ids: 1-4 documents of random lengths per row, then right padding (-1) in most rows.
    Every row reuses the ids 0, 1, ... so that joining rows would be caught."""
    rows = []
    for _ in range(batch):
        filled = int(rng.integers(seq_len // 2, seq_len + 1))
        cuts = np.sort(rng.choice(np.arange(1, filled), size=int(rng.integers(0, 4)), replace=False))
        row = np.full(seq_len, -1)
        for document, (start, end) in enumerate(zip([0, *cuts], [*cuts, filled])):
            row[start:end] = document
        rows.append(row)
    return torch.tensor(np.stack(rows))


def random_sample(rng: np.random.Generator, length: int) -> dict:
    """A packed speech-text sample of ``length`` tokens: 1-3 documents, each opened with BOS, of
    text spans and aligned speech spans (the schema the patching kernel checks)."""
    cuts = sorted(rng.choice(np.arange(4, length - 3), size=int(rng.integers(0, 3)), replace=False).tolist())
    sample = lst_random_sample(rng, length, document_starts=cuts)
    sample["num_positions"] = np.int64(length)
    return sample


def random_samples(seed: int, lengths: tuple[int, ...]) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [random_sample(rng, length) for length in lengths]


def lst_batch(seed: int, strategy: str = "static", patch_size: int = 4, lengths=(41, 23, 34)) -> dict:
    """An LST micro-batch as ``LSTTask`` builds it: right-padded rows of packed documents, patched,
    each row's padding one patch; inputs/targets shifted by one."""
    return training_batch(random_samples(seed, lengths), strategy, patch_size)


def max_difference(first: torch.Tensor, second: torch.Tensor) -> float:
    return float((first - second).abs().max())


def gradients(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in module.named_parameters() if p.grad is not None}


def gradient_differences(reference: dict, other: dict) -> tuple[float, float]:
    assert reference.keys() == other.keys()
    difference = max(max_difference(reference[name], other[name]) for name in reference)
    scale = max(float(g.abs().max()) for g in reference.values())
    return difference, scale


# ----------------------------------------------------------------------------- global block
def build_global_block(tensor_parallel: int = 1, **overrides) -> tuple[TransformerBlock, RotaryEmbedding]:
    shape = model_flavour("debug", **overrides)
    # transformer_config takes the key/value groups as an argument, not from the shape
    config = transformer_config(shape, tensor_model_parallel_size=tensor_parallel,
                                num_query_groups=shape.num_query_groups)
    block = TransformerBlock(config=config, spec=gpt_layer_spec(False, shape.normalization))
    rotary = RotaryEmbedding(kv_channels=config.kv_channels, rotary_percent=1.0, rotary_base=int(shape.rotary_base),
                             use_cpu_initialization=True)
    return block, rotary


def block_forward(block, rotary, hidden: torch.Tensor, documents: torch.Tensor, packed: bool) -> torch.Tensor:
    """[S, B, H] -> [S, B, H] block-causal over ``documents`` [B, S]: mask path or packed path."""
    if not packed:
        mask = (documents[:, :, None] != documents[:, None, :])[:, None]
        return block(hidden, attention_mask=mask, rotary_pos_emb=rotary(hidden.shape[0]))
    layout = pack_documents(documents)
    output = block(layout.pack(hidden), attention_mask=None,
                   rotary_pos_emb=rotary(layout.max_seqlen, packed_seq=True), packed_seq_params=layout.params)
    return layout.unpack(output)


def compare_global_block(block, rotary, seed: int, batch: int = 3, seq_len: int = 29) -> dict[str, float]:
    """Packed vs mask path of one block: outputs at document positions, input and parameter gradients.

    The mask path uses row positions for RoPE, the packed path restarts them in every document;
    the two agree because under a block-causal mask RoPE only sees relative positions."""
    generator = torch.Generator().manual_seed(seed)
    documents = random_document_ids(np.random.default_rng(seed), batch, seq_len)
    hidden = torch.randn(seq_len, batch, block.config.hidden_size, generator=generator)
    weights = torch.randn(seq_len, batch, block.config.hidden_size, generator=generator)
    inside = (documents >= 0).T[:, :, None].float()
    results = {}
    for packed in (False, True):
        block.zero_grad(set_to_none=True)
        states = hidden.clone().requires_grad_(True)
        output = block_forward(block, rotary, states, documents, packed)
        ((output * weights * inside).sum() / inside.sum()).backward()  # a mean, as training uses
        results[packed] = (output.detach() * inside, states.grad.clone(), gradients(block))
    grad_difference, grad_scale = gradient_differences(results[False][2], results[True][2])
    return {
        "output": max_difference(results[False][0], results[True][0]),
        "input_gradient": max_difference(results[False][1], results[True][1]),
        "gradients": grad_difference,
        "gradient_scale": grad_scale,
    }


# ------------------------------------------------------------------------------------- LST
def build_lst(tensor_parallel: int = 1, pack_global: bool = False) -> LSTModel:
    shape = model_flavour("debug", local_window_size=6)
    configs = lst_transformer_configs(shape, tensor_model_parallel_size=tensor_parallel)
    return LSTModel(shape, *configs, vocab_size=VOCAB, pack_global=pack_global)


def compare_lst(model: LSTModel, batch: dict) -> dict[str, float]:
    """The whole LST forward with the global model packed vs masked: per-token loss on real
    targets and every parameter gradient of the masked loss."""
    results = {}
    for packed in (False, True):
        model.pack_global = packed
        model.zero_grad(set_to_none=True)
        loss = model(batch["inputs"], batch["patch_lengths"], labels=batch["labels"], document_ids=batch["documents"])
        ((loss * batch["loss_mask"]).sum() / batch["loss_mask"].sum()).backward()
        results[packed] = ((loss * batch["loss_mask"]).detach(), gradients(model))
    grad_difference, grad_scale = gradient_differences(results[False][1], results[True][1])
    return {"loss": max_difference(results[False][0], results[True][0]), "gradients": grad_difference,
            "gradient_scale": grad_scale}


# -------------------------------------------------------------------------------- baseline
def build_baseline(tensor_parallel: int = 1):
    shape = model_flavour("debug")
    config = transformer_config(shape, tensor_model_parallel_size=tensor_parallel, num_query_groups=2)
    return build_baseline_model(shape, config, vocab_size=VOCAB, max_sequence_length=64, use_te=False)


def baseline_step(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``BaselineTask.forward_step`` on one batch -> (per-token loss [B, S], masked loss sum)."""
    task = object.__new__(BaselineTask)  # forward_step reads only the batch and the model
    output, loss_func = task.forward_step(iter([batch]), model)
    loss_sum, _, _ = loss_func(output)
    if "cu_seqlens" in batch:
        output = unpack_token_values(output, batch["packed_index"], *batch["loss_mask"].shape)
    return output * batch["loss_mask"].to(output.device), loss_sum


def compare_baseline(model, samples: list[dict], length: int, pad_to_multiple: int = 1) -> dict[str, float]:
    """The baseline on the packed batch vs the mask batch of the same samples."""
    results = {}
    for pack in (False, True):
        batch = packed_to_gpt_batch(samples, pad_id=LAYOUT.pad_id, length=length, pack=pack,
                                    pad_to_multiple=pad_to_multiple)
        assert ("attention_mask" in batch) != pack
        model.zero_grad(set_to_none=True)
        per_token, loss_sum = baseline_step(model, batch)
        (loss_sum / batch["loss_mask"].sum()).backward()
        results[pack] = (per_token.detach(), gradients(model))
    grad_difference, grad_scale = gradient_differences(results[False][1], results[True][1])
    return {"loss": max_difference(results[False][0], results[True][0]), "gradients": grad_difference,
            "gradient_scale": grad_scale}


def assert_equal_paths(differences: dict[str, float]) -> None:
    assert all(v < TOLERANCE for k, v in differences.items() if k != "gradient_scale"), differences
    assert differences["gradient_scale"] > 1e-3, differences  # the comparison is not of zeros


@pytest.fixture(scope="module")
def model_parallel(single_rank_parallel_state):
    """megatron's one-rank parallel state (tests/conftest.py)."""
    yield


# ================================================================================== tests
def test_pack_documents_layout_round_trips_and_never_joins_rows():
    documents = torch.tensor([[0, 0, 0, 1, 1, -1, -1],
                              [0, 0, 1, 1, 1, 1, 2],
                              [5, 5, 5, 5, 5, 5, 5]])
    layout = pack_documents(documents)
    # row 0 ends with document 0 of row 1 next to it: still two sequences
    assert layout.params.qkv_format == "thd"
    assert layout.params.cu_seqlens_q.tolist() == [0, 3, 5, 7, 11, 12, 19]
    assert layout.params.cu_seqlens_q.dtype == torch.int32
    assert layout.max_seqlen == 7 and layout.params.max_seqlen_kv == 7
    assert layout.position_ids().tolist() == [[0, 1, 2, 0, 1, 0, 1, 0, 1, 2, 3, 0, 0, 1, 2, 3, 4, 5, 6]]
    states = torch.randn(7, 3, 5)
    packed = layout.pack(states)
    assert packed.shape == (19, 1, 5)
    unpacked = layout.unpack(packed)
    inside = (documents >= 0).T[:, :, None]
    torch.testing.assert_close(unpacked, states * inside, rtol=0, atol=0)
    values = torch.arange(21).view(3, 7)
    assert layout.unpack_tokens(layout.pack_tokens(values)).tolist() == (values * (documents >= 0)).tolist()


def test_pack_documents_pads_to_a_multiple_with_a_separate_filler_sequence():
    documents = torch.tensor([[0, 0, 1, -1], [0, 0, 0, 0]])
    layout = pack_documents(documents, pad_to_multiple=4)
    assert layout.total == 8 and layout.num_filler == 1
    assert layout.params.cu_seqlens_q.tolist() == [0, 2, 3, 7, 8]
    tokens = torch.tensor([[1, 2, 3, 9], [4, 5, 6, 7]])
    assert layout.pack_tokens(tokens, fill=-7).tolist() == [[1, 2, 3, 4, 5, 6, 7, -7]]
    states = torch.randn(4, 2, 3)
    packed = layout.pack(states)
    assert packed.shape == (8, 1, 3) and not packed[-1].any()
    torch.testing.assert_close(layout.unpack(packed), states * (documents >= 0).T[:, :, None])


def test_pack_documents_refuses_what_the_mask_would_treat_differently():
    with pytest.raises(ValueError, match="document 0 of row 1 is not one contiguous run"):
        pack_documents(torch.tensor([[0, 0, 1, 1], [0, 1, 1, 0]]))
    with pytest.raises(ValueError, match="not one contiguous run"):
        pack_documents(torch.tensor([[0, 0, -1, 0]]))  # a gap inside a document
    with pytest.raises(ValueError, match="nothing to pack"):
        pack_documents(torch.full((2, 3), -1))
    with pytest.raises(ValueError, match=r"\[batch, seq\]"):
        pack_documents(torch.zeros(4, dtype=torch.long))


def test_megatron_rotary_restarts_positions_in_every_packed_sequence(model_parallel):
    """What the packed path relies on: ``apply_rotary_pos_emb(cu_seqlens=...)`` rotates every
    sequence from position 0 with a table of ``max_seqlen`` positions (megatron-core 0.16.1)."""
    shape = model_flavour("debug")
    config = transformer_config(shape)
    rotary = RotaryEmbedding(kv_channels=config.kv_channels, rotary_percent=1.0, rotary_base=10000,
                             use_cpu_initialization=True)
    layout = pack_documents(torch.tensor([[0, 0, 0, 1, 1, -1], [0, 0, 0, 0, 1, 1]]))
    values = torch.randn(layout.total, 2, config.kv_channels)
    packed = apply_rotary_pos_emb(values, rotary(layout.max_seqlen, packed_seq=True), config,
                                  cu_seqlens=layout.params.cu_seqlens_q)
    table = rotary(layout.max_seqlen)
    cu = layout.params.cu_seqlens_q.tolist()
    for start, end in zip(cu[:-1], cu[1:]):
        expected = apply_rotary_pos_emb(values[start:end, None], table[: end - start], config)[:, 0]
        torch.testing.assert_close(packed[start:end], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("causal,window", [(True, None), (True, 3), (False, None)])
def test_varlen_attention_equals_a_block_diagonal_dense_reference(causal, window):
    generator = torch.Generator().manual_seed(7)
    lengths = [1, 9, 2, 17, 4, 33, 3]  # several power-of-two buckets, a single-token sequence
    cu = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int32)
    total, heads, dim = int(cu[-1]), 3, 8
    q, k, v = (torch.randn(total, heads, dim, generator=generator, requires_grad=True) for _ in range(3))
    weights = torch.randn(total, heads, dim, generator=generator)
    sequence = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    forbidden = sequence[:, None] != sequence[None, :]
    if causal:
        forbidden |= causal_window_mask(total, total, window, q.device)
    reference = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=~forbidden, scale=0.3
    ).transpose(0, 1)
    output = varlen_attention(q, k, v, cu, cu, causal=causal, window_size=window, scale=0.3)
    torch.testing.assert_close(output, reference, rtol=0, atol=TOLERANCE)
    reference_grads = torch.autograd.grad((reference * weights).sum(), (q, k, v))
    grads = torch.autograd.grad((output * weights).sum(), (q, k, v))
    for got, expected in zip(grads, reference_grads):
        torch.testing.assert_close(got, expected, rtol=0, atol=TOLERANCE)


def test_sdpa_core_attention_thd_groups_heads_and_refuses_a_mask(model_parallel):
    from megatron.core.packed_seq_params import PackedSeqParams

    shape = model_flavour("debug")
    config = transformer_config(shape, num_query_groups=2)
    core = SDPACoreAttention(config, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
    cu = torch.tensor([0, 5, 12], dtype=torch.int32)
    params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=7, max_seqlen_kv=7)
    generator = torch.Generator().manual_seed(3)
    query = torch.randn(12, 4, 16, generator=generator)
    key, value = (torch.randn(12, 2, 16, generator=generator) for _ in range(2))
    packed = core(query, key, value, None, packed_seq_params=params)
    assert packed.shape == (12, 64)
    # the same two sequences as a padded [S, B] batch through the mask path of the same module
    rows = [(0, 5), (5, 12)]
    padded_q, padded_k, padded_v = (torch.zeros(7, 2, t.shape[1], 16) for t in (query, key, value))
    for row, (start, end) in enumerate(rows):
        padded_q[: end - start, row], padded_k[: end - start, row], padded_v[: end - start, row] = (
            query[start:end], key[start:end], value[start:end])
    dense = core(padded_q, padded_k, padded_v, None)
    for row, (start, end) in enumerate(rows):
        torch.testing.assert_close(packed[start:end], dense[: end - start, row], rtol=0, atol=TOLERANCE)
    with pytest.raises(ValueError, match="attention_mask=None"):
        core(query, key, value, torch.zeros(1, 1, 12, 12, dtype=torch.bool), packed_seq_params=params)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("overrides", [{}, {"num_query_groups": 2}])
def test_packed_global_block_equals_the_mask_path(model_parallel, seed, overrides):
    torch.manual_seed(seed)
    block, rotary = build_global_block(**overrides)
    assert_equal_paths(compare_global_block(block, rotary, seed))


def test_packed_global_block_keeps_documents_apart(model_parallel):
    """Changing document 1 of a row moves document 1's outputs and nothing else; the same check on
    a packing that joins each row's documents (the leak this guards against) does see a change."""
    torch.manual_seed(0)
    block, rotary = build_global_block()
    block.eval()
    documents = torch.tensor([[0] * 6 + [1] * 7 + [2] * 5, [0] * 10 + [1] * 8])
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(18, 2, block.config.hidden_size, generator=generator)
    changed = hidden.clone()
    changed[7, 0] += torch.randn(block.config.hidden_size, generator=generator)  # inside row 0, document 1
    with torch.no_grad():
        before = block_forward(block, rotary, hidden, documents, packed=True)
        after = block_forward(block, rotary, changed, documents, packed=True)
        joined = torch.zeros_like(documents)  # one sequence per row: documents would leak
        leak = block_forward(block, rotary, changed, joined, packed=True) - block_forward(
            block, rotary, hidden, joined, packed=True)
    moved = (after - before).abs().amax(-1)  # [S, B]
    assert float(moved[7:13, 0].min()) > 1e-4  # document 1 itself reacts from the change on
    untouched = torch.ones_like(moved, dtype=torch.bool)
    untouched[7:13, 0] = False
    assert float(moved[untouched].max()) < 1e-6
    assert float(leak[13:, 0].abs().max()) > 1e-4  # without the boundaries document 2 would move


@pytest.mark.parametrize("strategy,patch_size,seed", [("static", 4, 0), ("static", 1, 1), ("aligned", 4, 2)])
def test_packed_lst_forward_equals_the_mask_path(model_parallel, strategy, patch_size, seed):
    torch.manual_seed(seed)
    model = build_lst()
    batch = lst_batch(seed, strategy, patch_size)
    assert (batch["documents"] < 0).any() and int(batch["documents"].max()) >= 1  # padding and several documents
    assert_equal_paths(compare_lst(model, batch))


def test_packed_lst_keeps_documents_apart(model_parallel):
    torch.manual_seed(0)
    model = build_lst(pack_global=True).eval()
    batch = lst_batch(4, lengths=(48, 48))
    documents = batch["documents"]
    row = int(torch.nonzero((documents.amax(1) >= 1))[0])
    second = int(torch.nonzero(documents[row] == 1)[0])  # first token of document 1 (its BOS)
    # a text token or unit of document 0, swapped for another of its kind (the patching stays valid)
    position = max(p for p in range(1, second) if batch["inputs"][row, p] < LAYOUT.text_vocab_size
                   or batch["inputs"][row, p] >= LAYOUT.unit_offset)
    changed = batch["inputs"].clone()
    token = int(changed[row, position])
    changed[row, position] = ((token + 1) % LAYOUT.text_vocab_size if token < LAYOUT.text_vocab_size
                              else LAYOUT.unit_offset + (token - LAYOUT.unit_offset + 1) % LAYOUT.num_units)
    with torch.no_grad():
        before = model(batch["inputs"], batch["patch_lengths"], document_ids=documents)
        after = model(changed, batch["patch_lengths"], document_ids=documents)
    moved = (after - before).abs().amax(-1)  # [B, N]
    assert float(moved[row, position:second].max()) > 1e-4
    later = documents[row] >= 1
    assert float(moved[row][later].max()) < 1e-6, "a token of document 0 moved a later document's logits"
    assert float(moved[1 - row].max()) < 1e-6, "a token of one row moved another row's logits"


def test_lst_packs_its_global_model_by_patch_document(model_parallel):
    """Patches after a row's last non-empty patch and the padding patch are left out of the pack."""
    patch_lengths = torch.tensor([[1, 3, 3, 3, 0, 0], [1, 2, 2, 2, 2, 1]])
    documents = torch.tensor([[0, 0, 0, 0, 1, 1, 1, -1, -1, -1], [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]])
    assert global_packing_documents(patch_lengths, documents).tolist() == [[0, 0, 1, -1, -1, -1],
                                                                           [0, 0, 1, 1, 1, 1]]


@pytest.mark.parametrize("pad_to_multiple", [1, 8])
def test_packed_baseline_equals_the_mask_path(model_parallel, pad_to_multiple):
    torch.manual_seed(0)
    model = build_baseline()
    samples = random_samples(3, (40, 26, 33))
    assert_equal_paths(compare_baseline(model, samples, length=41, pad_to_multiple=pad_to_multiple))


def test_packed_baseline_batch_leaves_padding_out_and_maps_the_loss_back():
    samples = random_samples(5, (12, 7))
    batch = packed_to_gpt_batch(samples, pad_id=LAYOUT.pad_id, length=13, pack=True)
    documents = collate_packed(samples, pad_id=LAYOUT.pad_id, pad_to=13)["document_ids"][:, :-1]
    real = int((documents >= 0).sum())
    assert batch["packed_tokens"].shape == (1, real) and (batch["packed_tokens"] != LAYOUT.pad_id).all()
    assert int(batch["cu_seqlens"][-1]) == real
    assert batch["packed_index"].tolist() == torch.nonzero((documents >= 0).reshape(-1)).squeeze(1).tolist()
    per_token = torch.arange(1.0, real + 1).unsqueeze(0)
    unpacked = unpack_token_values(per_token, batch["packed_index"], *batch["loss_mask"].shape)
    assert unpacked[documents < 0].eq(0).all()
    assert unpacked[documents >= 0].tolist() == per_token[0].tolist()


def packed_baseline_logit_moves(model, samples: list[dict], length: int,
                                device: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Change token 1 of the first row that holds two documents and run the packed baseline on both
    batches: (largest logit change of each packed token [T], True for the tokens of that row's
    first document after the change, the only ones allowed to move)."""
    row = next(i for i, s in enumerate(samples) if s["document_ids"].max() >= 1)
    second = int(np.nonzero(samples[row]["document_ids"] == 1)[0][0])
    changed = [dict(s) for s in samples]
    tokens = changed[row]["tokens"].copy()
    tokens[1] = LAYOUT.text_marker_id if tokens[1] != LAYOUT.text_marker_id else LAYOUT.speech_marker_id
    changed[row]["tokens"] = tokens
    logits = []
    for group in (samples, changed):
        batch = packed_to_gpt_batch(group, pad_id=LAYOUT.pad_id, length=length, pack=True)
        with torch.no_grad():
            output = model(batch["packed_tokens"].to(device), batch["packed_position_ids"].to(device), None,
                           packed_seq_params=thd_params(batch["cu_seqlens"], int(batch["max_seqlen"]), device))
        logits.append(output[0])  # [T, V]
    moved = (logits[1] - logits[0]).float().abs().amax(-1).cpu()
    index, width = batch["packed_index"], length - 1
    in_first = (index // width == row) & (index % width >= 1) & (index % width < second)
    return moved, in_first


def test_packed_baseline_keeps_documents_apart(model_parallel):
    torch.manual_seed(0)
    moved, in_first = packed_baseline_logit_moves(build_baseline().eval(), random_samples(8, (40, 40)), 41)
    assert float(moved[in_first].max()) > 1e-4
    assert float(moved[~in_first].max()) < 1e-6, "a token moved logits outside its own document"


def test_packed_paths_equal_the_mask_paths_at_tensor_parallel_two(tmp_path):
    """Block, whole LST and baseline at TP = 2 (each rank attends its half of the heads), run as
    this file's script under torchrun on gloo."""
    from tests.conftest import run_tensor_parallel_worker

    differences = run_tensor_parallel_worker(Path(__file__).resolve(), tmp_path / "differences.json")
    assert set(differences) == {"global_block", "lst", "baseline"}
    for values in differences.values():
        assert_equal_paths(values)


# ===================================================================== TP = 2 worker (torchrun)
def tensor_parallel_worker(output: str) -> None:
    """Each rank compares the packed and mask paths on its own shards; rank 0 writes the maxima."""
    from megatron_lst.training.initialize import destroy_distributed, initialize_distributed
    from tests.conftest import worst_over_ranks

    initialize_distributed(tensor_model_parallel_size=2, seed=11)
    results = {}
    block, rotary = build_global_block(tensor_parallel=2, num_query_groups=2)
    results["global_block"] = compare_global_block(block, rotary, seed=4)
    torch.manual_seed(1)
    results["lst"] = compare_lst(build_lst(tensor_parallel=2), lst_batch(6))
    torch.manual_seed(2)
    results["baseline"] = compare_baseline(build_baseline(tensor_parallel=2), random_samples(7, (40, 29, 35)), 41)
    results = {name: worst_over_ranks(values) for name, values in results.items()}
    if torch.distributed.get_rank() == 0:
        Path(output).write_text(json.dumps(results))
    destroy_distributed()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    tensor_parallel_worker(sys.argv[1])
