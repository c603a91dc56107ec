"""Attention where every query sees one contiguous range of keys: LST's local patterns, at linear cost.

All of LST's local attentions are *interval* patterns: query i attends the keys ``lo[i] <= j < hi[i]``.

- sliding-window self-attention with documents: ``[max(i - W + 1, first token of i's document), i + 1)``;
- encoder cross-attention: a patch query sees the tokens of its own patch (and of a window of earlier
  patches of its document), a contiguous run of tokens;
- decoder cross-attention: a token sees the global outputs of the patches from its document's first
  (or the window's first) up to its lagged patch, a contiguous run of patches.

Masking a dense [queries x keys] score matrix (what a boolean ``attn_mask`` does) costs O(N^2) time
and memory although each query sees at most a window of keys. ``IntervalMask`` carries the
intervals once per forward (shared by every layer) and ``interval_attention`` runs one of:

- ``blocked`` (CPU, and any device): queries in blocks of ``block_size``; each block gathers the
  contiguous span of keys its queries need, and one SDPA call over [rows x blocks, heads, block,
  span] computes them with a small [block, span] mask. Time and memory O(N * (window + block)).
- ``flex`` (CUDA): FlexAttention with a block mask built from the same intervals, so fully masked
  tiles are skipped.
- ``dense``: SDPA with the full boolean mask, the exact reference the tests compare against;
  never chosen for training.

Rows whose interval is empty (``lo >= hi``: a patch with no input token, a token whose document
has no complete patch yet) get a zero output, as a softmax over nothing would have no value.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

IMPLEMENTATIONS = ("auto", "blocked", "flex", "dense")


@dataclass
class BlockedLayout:
    """The gathers and the per-block mask of the blocked kernel, built once per ``IntervalMask``."""

    num_blocks: int
    span: int
    key_index: torch.Tensor  # [B * blocks * span] rows of the [Nk * B] flattened keys
    allowed: torch.Tensor  # [B * blocks, 1, block, span] bool, True = attend


@dataclass
class IntervalMask:
    """Query i of row b attends keys ``lo[b, i] <= j < hi[b, i]`` of ``num_keys``.

    ``lo``/``hi`` are [B, Nq] int64 on the attention's device, non-empty in every row (builders
    point an empty row at one real key and set ``empty``, whose outputs are zeroed). Intervals
    that grow with the query index (as all of LST's do) make the blocked kernel's spans short;
    any intervals are computed exactly.
    """

    lo: torch.Tensor
    hi: torch.Tensor
    num_keys: int
    block_size: int = 128
    empty: Optional[torch.Tensor] = None  # [B, Nq] bool: rows whose real interval is empty
    implementation: str = "auto"  # the kernel: see ``resolve_implementation``
    _blocked: Optional[BlockedLayout] = field(default=None, repr=False)
    _flex: Optional[object] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.lo.shape != self.hi.shape or self.lo.dim() != 2:
            raise ValueError(f"lo and hi must both be [B, Nq], got {tuple(self.lo.shape)} and {tuple(self.hi.shape)}")
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(f"attention implementation must be one of {IMPLEMENTATIONS}, got {self.implementation!r}")

    @property
    def batch_size(self) -> int:
        return self.lo.shape[0]

    @property
    def num_queries(self) -> int:
        return self.lo.shape[1]

    def dense(self) -> torch.Tensor:
        """[B, Nq, Nk] bool, True = attend: the same pattern as a full mask (reference and tests)."""
        keys = torch.arange(self.num_keys, device=self.lo.device)
        return (keys >= self.lo[..., None]) & (keys < self.hi[..., None])

    def blocked(self) -> BlockedLayout:
        """Gather indices and block masks for the blocked kernel (cached: every layer reuses them)."""
        if self._blocked is None:
            self._blocked = _blocked_layout(self.lo, self.hi, self.num_keys, self.block_size)
        return self._blocked

    def computed_pairs(self, implementation: str = "blocked") -> int:
        """(query, key) score pairs the kernel computes per head, masked ones included: what the
        attention matmuls cost (FLOPs = 4 x pairs x head_dim x heads for QK^T and PV)."""
        if implementation == "dense":
            return self.batch_size * self.num_queries * self.num_keys
        if self._blocked is not None:
            num_blocks, span = self._blocked.num_blocks, self._blocked.span
        else:
            num_blocks, span = blocked_span(self.lo, self.hi, self.num_keys, self.block_size)
        return self.batch_size * num_blocks * self.block_size * span

    def attended_pairs(self) -> int:
        """(query, key) pairs the pattern actually allows (its ideal cost)."""
        return int((self.hi - self.lo).clamp(min=0).sum())


def _query_blocks(lo: torch.Tensor, hi: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Intervals as [B, blocks, block_size] (the last block padded with the last real interval, which
    keeps them non-decreasing; padded outputs are cut off) and the widest block's key span."""
    batch, num_queries = lo.shape
    num_blocks = -(-num_queries // block_size)
    pad = num_blocks * block_size - num_queries
    if pad:
        lo = torch.cat([lo, lo[:, -1:].expand(batch, pad)], dim=1)
        hi = torch.cat([hi, hi[:, -1:].expand(batch, pad)], dim=1)
    lo_blocks = lo.view(batch, num_blocks, block_size)
    hi_blocks = hi.view(batch, num_blocks, block_size)
    span = int((hi_blocks.amax(-1) - lo_blocks.amin(-1)).max().clamp(min=1))
    return lo_blocks, hi_blocks, span


def blocked_span(lo: torch.Tensor, hi: torch.Tensor, num_keys: int, block_size: int) -> tuple[int, int]:
    """(query blocks, keys per block) of the blocked kernel, without building its gathers."""
    lo_blocks, _, span = _query_blocks(lo, hi, block_size)
    return lo_blocks.shape[1], min(span, num_keys)


def _blocked_layout(lo: torch.Tensor, hi: torch.Tensor, num_keys: int, block_size: int) -> BlockedLayout:
    batch = lo.shape[0]
    lo_blocks, hi_blocks, span = _query_blocks(lo, hi, block_size)
    num_blocks = lo_blocks.shape[1]
    starts = lo_blocks.amin(-1)  # [B, blocks]
    starts = starts.clamp(max=max(num_keys - span, 0))  # keep the span inside the keys where possible
    span = min(span, num_keys)
    keys = starts[..., None] + torch.arange(span, device=lo.device)  # [B, blocks, span]
    allowed = (keys[:, :, None, :] >= lo_blocks[..., None]) & (keys[:, :, None, :] < hi_blocks[..., None])
    rows = torch.arange(batch, device=lo.device)[:, None, None]
    key_index = (keys.clamp(max=num_keys - 1) * batch + rows).reshape(-1)  # keys are [Nk, B] flattened
    return BlockedLayout(num_blocks, span, key_index, allowed.view(batch * num_blocks, 1, block_size, span))


def _repeat_groups(key: torch.Tensor, value: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    if key.shape[2] != heads:
        key = key.repeat_interleave(heads // key.shape[2], dim=2)
        value = value.repeat_interleave(heads // value.shape[2], dim=2)
    return key, value


def dense_interval_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: IntervalMask,
                             scale: float) -> torch.Tensor:
    """Reference: query [Nq, B, H, D], key/value [Nk, B, G, D] -> [Nq, B, H, D] with the full mask."""
    key, value = _repeat_groups(key, value, query.shape[2])
    q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense()[:, None], scale=scale)
    return context.permute(2, 0, 1, 3)


def blocked_interval_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: IntervalMask,
                               scale: float) -> torch.Tensor:
    """Query blocks over gathered key spans: query [Nq, B, H, D], key/value [Nk, B, G, D] -> [Nq, B, H, D]."""
    num_queries, batch, heads, dim = query.shape
    key, value = _repeat_groups(key, value, heads)
    layout = mask.blocked()
    block = mask.block_size
    padded = layout.num_blocks * block
    queries = query.transpose(0, 1)  # [B, Nq, H, D]
    if padded != num_queries:
        queries = F.pad(queries, (0, 0, 0, 0, 0, padded - num_queries))
    queries = queries.reshape(batch * layout.num_blocks, block, heads, dim).transpose(1, 2)

    def gather(tensor: torch.Tensor) -> torch.Tensor:
        flat = tensor.reshape(-1, heads, dim).index_select(0, layout.key_index)
        return flat.view(batch * layout.num_blocks, layout.span, heads, dim).transpose(1, 2)

    context = F.scaled_dot_product_attention(queries, gather(key), gather(value), attn_mask=layout.allowed,
                                             scale=scale)  # [B * blocks, H, block, D]
    context = context.transpose(1, 2).reshape(batch, padded, heads, dim)[:, :num_queries]
    return context.transpose(0, 1)


@functools.lru_cache(maxsize=1)
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    # default dynamism: static on the first shape, dynamic once the patch count changes (CUDA);
    # torch 2.13's CPU template does not compile with dynamic=True
    return torch.compile(flex_attention)


FLEX_BLOCK = 128  # FlexAttention's default tile, queries and keys


def interval_kv_blocks(lo: torch.Tensor, hi: torch.Tensor, num_keys: int,
                       block: int = FLEX_BLOCK) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """FlexAttention's block lists of the intervals, read off ``lo``/``hi`` in O(Nq) (no compile).

    Query tile t needs key tiles from ``min(lo)`` to ``max(hi)`` over its queries: those tiles that
    every query of t attends entirely are *full* (no mask_mod call), the others *partial*. Returns
    (partial counts [B, Tq], partial indices [B, Tq, Tk], full counts, full indices), indices
    ascending and the unused tail of each row pointing at tile 0. ``create_block_mask`` would find
    the same tiles by evaluating the mask on a grid, compiled per shape on CUDA (a recompile at
    every new batch shape, seconds each); the intervals already say where they lie.
    """
    batch, num_queries = lo.shape
    query_tiles, key_tiles = -(-num_queries // block), -(-num_keys // block)
    pad = query_tiles * block - num_queries
    # padded queries attend nothing: an empty [Nk, 0) leaves the range alone and makes their tile partial
    lo_tiles = F.pad(lo, (0, pad), value=num_keys).view(batch, query_tiles, block)
    hi_tiles = F.pad(hi, (0, pad), value=0).view(batch, query_tiles, block)
    starts = torch.arange(key_tiles, device=lo.device) * block
    ends = starts + block  # the last tile's padded keys attend nothing either: a ragged tile is never full
    touched = (starts < hi_tiles.amax(-1, keepdim=True)) & (ends > lo_tiles.amin(-1, keepdim=True))
    full = (starts >= lo_tiles.amax(-1, keepdim=True)) & (ends <= hi_tiles.amin(-1, keepdim=True))
    partial = touched & ~full

    def listed(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        order = torch.argsort((~selected).to(torch.int8), dim=-1, stable=True)  # selected tiles first, ascending
        counts = selected.sum(-1, dtype=torch.int32)
        unused = torch.arange(key_tiles, device=lo.device) >= counts[..., None]
        return counts, order.masked_fill(unused, 0).to(torch.int32)

    return (*listed(partial), *listed(full))


def flex_block_mask(mask: IntervalMask):
    """FlexAttention ``BlockMask`` of the intervals (cached on the mask: every layer reuses it)."""
    if mask._flex is None:
        from torch.nn.attention.flex_attention import BlockMask

        lo, hi = mask.lo, mask.hi

        def interval(batch, head, query_index, key_index):
            return (key_index >= lo[batch, query_index]) & (key_index < hi[batch, query_index])

        counts, indices, full_counts, full_indices = (
            t[:, None] for t in interval_kv_blocks(lo, hi, mask.num_keys))  # one head entry: all heads share it
        mask._flex = BlockMask.from_kv_blocks(counts, indices, full_counts, full_indices, BLOCK_SIZE=FLEX_BLOCK,
                                              mask_mod=interval, seq_lengths=(mask.num_queries, mask.num_keys))
    return mask._flex


def flex_interval_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: IntervalMask,
                            scale: float) -> torch.Tensor:
    """FlexAttention over the intervals (CUDA training; CPU forward only in torch 2.13)."""
    key, value = _repeat_groups(key, value, query.shape[2])
    q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
    context = _compiled_flex_attention()(q, k, v, block_mask=flex_block_mask(mask), scale=scale)
    return context.permute(2, 0, 1, 3)


_KERNELS = {"blocked": blocked_interval_attention, "flex": flex_interval_attention, "dense": dense_interval_attention}


def flex_available(device: torch.device) -> bool:
    """FlexAttention trains on CUDA (its CPU backend has no backward in torch 2.13)."""
    if device.type != "cuda":
        return False
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_implementation(implementation: str, device: torch.device) -> str:
    """``auto``: FlexAttention on CUDA, blocked SDPA elsewhere."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if implementation == "auto":
        return "flex" if flex_available(device) else "blocked"
    return implementation


def interval_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: IntervalMask,
                       scale: float, implementation: Optional[str] = None) -> torch.Tensor:
    """query [Nq, B, H, D], key/value [Nk, B, G, D] (megatron's layout) -> context [Nq, B, H, D].

    ``implementation`` overrides the mask's own choice (``auto`` by default).
    """
    if query.shape[:2] != (mask.num_queries, mask.batch_size) or key.shape[0] != mask.num_keys:
        raise ValueError(
            f"interval mask is for {mask.num_queries} queries x {mask.num_keys} keys in {mask.batch_size} rows, "
            f"got query {tuple(query.shape)} and key {tuple(key.shape)}"
        )
    chosen = resolve_implementation(implementation or mask.implementation, query.device)
    context = _KERNELS[chosen](query, key, value, mask, scale)
    if mask.empty is not None:
        context = context.masked_fill(mask.empty.transpose(0, 1)[..., None, None], 0.0)
    return context
