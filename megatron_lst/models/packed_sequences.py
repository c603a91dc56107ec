"""Documents packed in batch rows -> megatron-core's packed-sequence (THD) layout, and back.

Why this exists: the LST's global model and the baseline attend block-causally over the documents
packed into a row. The transformer-engine layer spec gives its core attention the ``causal`` mask
type, and TE reads ``attention_mask`` only for the ``padding``/``arbitrary`` types, so a
[B, 1, S, S] document mask would be dropped silently there and documents would attend across
pack boundaries. megatron-core's packed-sequence path carries the boundaries instead: every
document of every row becomes one sequence of a single packed "batch" [T, 1, H], described by
``PackedSeqParams(qkv_format="thd", cu_seqlens_*, max_seqlen_*)``. TE then runs its varlen
flash/fused kernels with ``padding_causal`` (megatron's ``TEDotProductAttention`` switches
``causal`` to ``padding_causal`` for THD), and rotary embeddings restart at every document
(``apply_rotary_pos_emb(..., cu_seqlens=...)``). Under a block-causal mask RoPE only sees
relative positions, so restarting positions per document gives the same function as per-row
positions (up to rounding; tested). ``SDPACoreAttention`` implements the same THD contract on CPU.

Conventions:

- ``document_ids`` [B, S]: a non-negative id per position; a negative id marks a position that
  belongs to no document (right padding). Such positions are left out of the pack: they cost
  nothing, and unpacking gives them zeros. Rows are never joined: two rows' documents are
  separate sequences even when their ids coincide.
- A document must occupy one contiguous run of its row (the data pipeline packs documents
  whole, one after another). The dense mask path would let two separated runs of one id attend
  each other, the packed path would not, so a non-contiguous id is an error, not a guess.
- ``pad_to_multiple``: megatron's sequence parallelism splits the packed length T across the
  tensor-parallel ranks, so T must divide by the TP size. Filler positions are appended as one
  extra sequence of their own (no real position ever attends them) and dropped on unpacking.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core.packed_seq_params import PackedSeqParams


@dataclass(frozen=True)
class PackedDocuments:
    """Where each document of a [B, S] batch sits in the packed [T + filler] layout.

    ``rows``/``columns`` [T] give the batch row and position of every packed position (real
    positions first, row by row, in order); ``num_filler`` positions follow them as a separate
    sequence. ``params`` is what megatron-core's attention and rotary code read.
    """

    params: PackedSeqParams
    rows: torch.Tensor
    columns: torch.Tensor
    position_in_document: torch.Tensor
    batch_size: int
    seq_len: int
    num_filler: int

    @property
    def num_real(self) -> int:
        """Packed positions that belong to a document (T, without filler)."""
        return int(self.rows.numel())

    @property
    def total(self) -> int:
        """Length of the packed sequence dimension (T + filler)."""
        return self.num_real + self.num_filler

    @property
    def max_seqlen(self) -> int:
        """Longest packed sequence: the rotary table megatron needs has this many positions."""
        return int(self.params.max_seqlen_q)

    @property
    def token_index(self) -> torch.Tensor:
        """[T] flat index of each packed position into a row-major [B, S] tensor."""
        return self.rows * self.seq_len + self.columns

    @property
    def state_index(self) -> torch.Tensor:
        """[T] flat index of each packed position into a sequence-major [S, B] tensor."""
        return self.columns * self.batch_size + self.rows

    def pack(self, states: torch.Tensor) -> torch.Tensor:
        """Hidden states [S, B, ...] (megatron's layout) -> [T + filler, 1, ...] (filler: zeros)."""
        self._check_leading(states.shape[:2], (self.seq_len, self.batch_size), "states [S, B, ...]")
        flat = states.reshape(self.seq_len * self.batch_size, *states.shape[2:])
        packed = flat.index_select(0, self.state_index)
        if self.num_filler:
            packed = torch.cat([packed, packed.new_zeros(self.num_filler, *packed.shape[1:])])
        return packed.unsqueeze(1)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """[T + filler, 1, ...] -> [S, B, ...]; positions outside every document get zeros."""
        self._check_leading(packed.shape[:2], (self.total, 1), "packed states [T, 1, ...]")
        real = packed[: self.num_real, 0]
        out = real.new_zeros(self.seq_len * self.batch_size, *real.shape[1:])
        out = out.index_copy(0, self.state_index, real)
        return out.view(self.seq_len, self.batch_size, *real.shape[1:])

    def pack_tokens(self, values: torch.Tensor, fill: int | float = 0) -> torch.Tensor:
        """Per-token values [B, S] (tokens, labels, masks) -> [1, T + filler] (filler: ``fill``)."""
        self._check_leading(values.shape, (self.batch_size, self.seq_len), "token values [B, S]")
        packed = values.reshape(-1).index_select(0, self.token_index)
        if self.num_filler:
            packed = torch.cat([packed, packed.new_full((self.num_filler,), fill)])
        return packed.unsqueeze(0)

    def unpack_tokens(self, packed: torch.Tensor) -> torch.Tensor:
        """[1, T + filler] or [T + filler] -> [B, S]; positions outside every document get zeros."""
        return unpack_token_values(packed, self.token_index, self.batch_size, self.seq_len)

    def position_ids(self) -> torch.Tensor:
        """[1, T + filler] position of each packed token inside its own document (filler: 0, 1, ...)."""
        positions = self.position_in_document
        if self.num_filler:
            positions = torch.cat([positions, torch.arange(self.num_filler, device=positions.device)])
        return positions.unsqueeze(0)

    @staticmethod
    def _check_leading(shape, expected: tuple[int, int], what: str) -> None:
        if tuple(shape[:2]) != expected:
            raise ValueError(f"{what}: expected leading shape {expected}, got {tuple(shape)}")


def pack_documents(document_ids: torch.Tensor, pad_to_multiple: int = 1) -> PackedDocuments:
    """The THD packing of a batch's documents (see the module docstring for the conventions).

    Runs on ``document_ids``'s device; reading the sequence count and lengths back to build the
    Python ints megatron and TE expect (``max_seqlen``) synchronises once with that device.
    """
    if document_ids.dim() != 2:
        raise ValueError(f"document_ids must be [batch, seq], got shape {tuple(document_ids.shape)}")
    if pad_to_multiple < 1:
        raise ValueError(f"pad_to_multiple must be >= 1, got {pad_to_multiple}")
    batch, seq_len = document_ids.shape
    device = document_ids.device
    flat = document_ids.reshape(-1).long()
    kept = torch.nonzero(flat >= 0).squeeze(1)  # row-major: row by row, positions in order
    total = int(kept.numel())
    if total == 0:
        raise ValueError("no position belongs to a document (all document ids are negative): nothing to pack")
    rows = torch.div(kept, seq_len, rounding_mode="floor")
    columns = kept - rows * seq_len
    documents = flat[kept]
    opens = torch.ones(total, dtype=torch.bool, device=device)
    opens[1:] = (rows[1:] != rows[:-1]) | (documents[1:] != documents[:-1]) | (columns[1:] != columns[:-1] + 1)
    starts = torch.nonzero(opens).squeeze(1)
    runs = torch.stack([rows[starts], documents[starts]])
    if torch.unique(runs, dim=1).shape[1] != starts.numel():
        unique, counts = torch.unique(runs, dim=1, return_counts=True)
        row, document = unique[:, counts > 1][:, 0].tolist()
        raise ValueError(
            f"document {document} of row {row} is not one contiguous run of positions; packed attention "
            "keeps each run separate, the document mask would join them"
        )
    lengths = torch.diff(starts, append=torch.tensor([total], device=device))
    sequence_of = torch.cumsum(opens.long(), 0) - 1
    position_in_document = torch.arange(total, device=device) - starts[sequence_of]
    num_filler = (-total) % pad_to_multiple
    if num_filler:
        lengths = torch.cat([lengths, torch.tensor([num_filler], device=device)])
    cu_seqlens = torch.zeros(lengths.numel() + 1, dtype=torch.int32, device=device)
    cu_seqlens[1:] = torch.cumsum(lengths, 0)
    max_seqlen = int(lengths.max())
    params = PackedSeqParams(
        qkv_format="thd",
        cu_seqlens_q=cu_seqlens,
        cu_seqlens_kv=cu_seqlens,
        max_seqlen_q=max_seqlen,
        max_seqlen_kv=max_seqlen,
    )
    return PackedDocuments(
        params=params, rows=rows, columns=columns, position_in_document=position_in_document,
        batch_size=batch, seq_len=seq_len, num_filler=num_filler,
    )


def thd_params(cu_seqlens: torch.Tensor, max_seqlen: int, device: torch.device | str | None = None) -> PackedSeqParams:
    """``PackedSeqParams`` for self-attention from cu_seqlens and ``max_seqlen`` built elsewhere
    (e.g. in a DataLoader worker, so the training step does no packing work of its own)."""
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be 1-D with at least 2 entries, got shape {tuple(cu_seqlens.shape)}")
    cu_seqlens = cu_seqlens.to(device=device, dtype=torch.int32)
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu_seqlens, cu_seqlens_kv=cu_seqlens,
                           max_seqlen_q=int(max_seqlen), max_seqlen_kv=int(max_seqlen))


def unpack_token_values(packed: torch.Tensor, token_index: torch.Tensor, batch_size: int, seq_len: int) -> torch.Tensor:
    """Packed per-token values [1, T + filler] (or [T + filler]) -> [B, S], zeros outside documents.

    ``token_index`` [T] is ``PackedDocuments.token_index``; filler positions (after the first T)
    are dropped. Differentiable, so a per-token loss can be masked in the [B, S] layout.
    """
    values = packed.reshape(-1)
    count = int(token_index.numel())
    if values.numel() < count:
        raise ValueError(f"{values.numel()} packed values for {count} packed positions")
    out = values.new_zeros(batch_size * seq_len)
    out = out.index_copy(0, token_index.to(values.device), values[:count])
    return out.view(batch_size, seq_len)
