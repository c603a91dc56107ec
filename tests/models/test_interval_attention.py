"""interval_attention: the blocked (and FlexAttention) kernels equal the dense masked reference."""

from __future__ import annotations

import pytest
import torch

from megatron_lst.models.interval_attention import (
    IntervalMask,
    interval_attention,
    resolve_implementation,
)


def random_intervals(batch: int, num_queries: int, num_keys: int, generator: torch.Generator,
                     monotone: bool = True, max_width: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-empty [lo, hi) per query; non-decreasing in the query index when ``monotone``."""
    if monotone:
        steps = torch.randint(0, 3, (batch, num_queries), generator=generator)
        hi = (steps.cumsum(1) + 1).clamp(max=num_keys)
        widths = torch.randint(1, max_width + 1, (batch, num_queries), generator=generator)
        lo = (hi - widths).clamp(min=0).cummax(1).values
        lo = torch.minimum(lo, hi - 1)
    else:
        lo = torch.randint(0, num_keys - 1, (batch, num_queries), generator=generator)
        hi = lo + 1 + torch.randint(0, max_width, (batch, num_queries), generator=generator)
        hi = hi.clamp(max=num_keys)
    return lo, hi


def qkv(num_queries: int, num_keys: int, batch: int, heads: int, groups: int, dim: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(num_queries, batch, heads, dim, generator=generator, requires_grad=True)
    key = torch.randn(num_keys, batch, groups, dim, generator=generator, requires_grad=True)
    value = torch.randn(num_keys, batch, groups, dim, generator=generator, requires_grad=True)
    return query, key, value


def output_and_grads(implementation: str, mask: IntervalMask, query, key, value, scale: float = 0.3):
    for tensor in (query, key, value):
        tensor.grad = None
    context = interval_attention(query, key, value, mask, scale, implementation)
    weights = torch.linspace(-1.0, 1.0, context.numel()).view_as(context)  # a loss that weighs every output
    (context * weights).sum().backward()
    return context.detach(), [tensor.grad.clone() for tensor in (query, key, value)]


@pytest.mark.parametrize("monotone", [True, False])
@pytest.mark.parametrize("block_size", [1, 5, 16, 64])
@pytest.mark.parametrize("groups", [4, 2])
def test_blocked_equals_dense_in_outputs_and_gradients(monotone, block_size, groups):
    generator = torch.Generator().manual_seed(block_size * 10 + groups + monotone)
    num_queries, num_keys, batch = 37, 29, 3
    lo, hi = random_intervals(batch, num_queries, num_keys, generator, monotone)
    empty = torch.rand(batch, num_queries, generator=generator) < 0.1
    mask = IntervalMask(lo, hi, num_keys, block_size, empty=empty)
    query, key, value = qkv(num_queries, num_keys, batch, 4, groups, 8, seed=block_size)
    dense, dense_grads = output_and_grads("dense", mask, query, key, value)
    blocked, blocked_grads = output_and_grads("blocked", mask, query, key, value)
    torch.testing.assert_close(blocked, dense, atol=1e-5, rtol=1e-5)
    for got, expected in zip(blocked_grads, dense_grads):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert blocked[empty.T].abs().max() == 0  # empty rows: nothing to attend, zero output


def test_a_sliding_window_is_computed_on_spans_not_the_whole_sequence():
    """Worked by hand: 10 tokens, window 3, blocks of 4. Queries 0-3 need keys [0, 4), 4-7 [2, 8),
    8-9 (padded to 4 with the last interval) [6, 10): span 6, the last block's start moved back to
    4 to stay inside the keys; 3 blocks x 4 queries x 6 keys = 72 pairs for the 27 it attends."""
    positions = torch.arange(10)[None]
    mask = IntervalMask((positions - 2).clamp(min=0), positions + 1, 10, block_size=4)
    layout = mask.blocked()
    assert (layout.num_blocks, layout.span) == (3, 6)
    assert layout.key_index.view(3, 6)[:, 0].tolist() == [0, 2, 4]
    assert mask.computed_pairs() == 72 and mask.attended_pairs() == 27
    assert mask.computed_pairs("dense") == 100


def test_blocked_cost_grows_linearly_with_the_sequence():
    def pairs(seq_len: int) -> int:
        positions = torch.arange(seq_len)[None]
        return IntervalMask((positions - 511).clamp(min=0), positions + 1, seq_len, 128).computed_pairs()

    assert pairs(16384) == 4 * pairs(4096) == 16384 * (512 + 127)


def test_shape_mismatch_and_unknown_implementation_are_clear_errors():
    mask = IntervalMask(torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.long), 6)
    query, key, value = qkv(5, 6, 1, 2, 2, 4, seed=0)
    with pytest.raises(ValueError, match="5 queries|4 queries"):
        interval_attention(query, key, value, mask, 0.5)
    with pytest.raises(ValueError, match="implementation"):
        resolve_implementation("fast", torch.device("cpu"))
    with pytest.raises(ValueError, match=r"\[B, Nq\]"):
        IntervalMask(torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long), 6)


def test_auto_is_blocked_on_cpu():
    assert resolve_implementation("auto", torch.device("cpu")) == "blocked"


@pytest.mark.slow
def test_flex_attention_forward_equals_dense_on_cpu():
    """FlexAttention's CPU backend runs forward only (torch 2.13), enough to pin the block mask."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    generator = torch.Generator().manual_seed(7)
    lo, hi = random_intervals(2, 150, 140, generator)
    mask = IntervalMask(lo, hi, 140)
    query, key, value = (tensor.detach() for tensor in qkv(150, 140, 2, 4, 4, 16, seed=1))
    with torch.no_grad():
        flex = interval_attention(query, key, value, mask, 0.25, "flex")
        dense = interval_attention(query, key, value, mask, 0.25, "dense")
    torch.testing.assert_close(flex, dense, atol=1e-5, rtol=1e-5)


def _tile_grid(counts: torch.Tensor, indices: torch.Tensor, key_tiles: int) -> torch.Tensor:
    """[B, Tq, Tk] bool of the tiles a (counts, indices) block list names."""
    grid = torch.zeros(*counts.shape, key_tiles, dtype=torch.bool)
    for position in range(indices.shape[-1]):
        listed = position < counts
        grid.scatter_reduce_(-1, indices[..., position:position + 1].long(), listed[..., None], reduce="amax")
    return grid


@pytest.mark.parametrize("monotone", [True, False])
@pytest.mark.parametrize("shape", [(300, 280), (128, 128), (40, 700)])
def test_flex_tiles_read_off_the_intervals_cover_create_block_masks(monotone, shape):
    """interval_kv_blocks against torch's own create_block_mask (which evaluates the mask on the
    whole grid): the same full tiles, and partial tiles that cover every tile it marks (equal when
    the intervals grow with the query, as LST's do)."""
    flex_attention = pytest.importorskip("torch.nn.attention.flex_attention")
    from megatron_lst.models.interval_attention import interval_kv_blocks

    num_queries, num_keys = shape
    generator = torch.Generator().manual_seed(num_queries + monotone)
    lo, hi = random_intervals(2, num_queries, num_keys, generator, monotone, max_width=300)

    def interval(batch, head, query_index, key_index):
        return (key_index >= lo[batch, query_index]) & (key_index < hi[batch, query_index])

    reference = flex_attention.create_block_mask(interval, 2, None, num_queries, num_keys, device="cpu")
    key_tiles = -(-num_keys // 128)
    counts, indices, full_counts, full_indices = interval_kv_blocks(lo, hi, num_keys)
    ours_partial, ours_full = _tile_grid(counts, indices, key_tiles), _tile_grid(full_counts, full_indices, key_tiles)
    their_partial = _tile_grid(reference.kv_num_blocks[:, 0], reference.kv_indices[:, 0], key_tiles)
    their_full = _tile_grid(reference.full_kv_num_blocks[:, 0], reference.full_kv_indices[:, 0], key_tiles)
    assert torch.equal(ours_full, their_full)
    assert not (their_partial & ~ours_partial).any()
    if monotone:
        assert torch.equal(ours_partial, their_partial)
    # every listed index is ascending among the listed ones (FlexAttention walks them in order)
    for row_counts, row_indices in ((counts, indices), (full_counts, full_indices)):
        for b, t in zip(*torch.nonzero(row_counts > 1, as_tuple=True)):
            listed = row_indices[b, t, :row_counts[b, t]]
            assert (listed[1:] > listed[:-1]).all()
