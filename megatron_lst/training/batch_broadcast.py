"""One reader per tensor-parallel group: rank 0 loads each micro-batch and broadcasts it.

The ranks of a TP group hold slices of the same model and consume identical batches, so reading
(and patching, which happens in the collate) on each of them repeats the same work and takes a
DataLoader (workers, memory) per GPU. As Megatron-LM's ``get_batch_on_this_tp_rank`` does, only
TP rank 0 builds a DataLoader; it sends every micro-batch to the other ranks of its group. Under
pipeline parallelism each stage has its own TP group and reads on its own TP rank 0: every stage
needs the batch's patch count, and stages run their micro-batches at different times.

LST batches are dicts of integer/bool tensors whose shapes change per micro-batch (rows are
padded to the longest; the patch count varies), so each micro-batch goes as three broadcasts:
the header's length, the header (field names, dtypes, shapes) and one byte buffer holding every
field, each field aligned to 8 bytes. A header length of -1 means the source has no more data,
and every rank raises ``StopIteration`` together. All collectives go through
``training/collectives.py``, so the tensors are on the device the group's backend takes; every
rank, the source included, returns the fields decoded from the broadcast buffer on that device,
so all ranks of a group see bitwise the same batch.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_lst.training import collectives

# dtype codes of the header; the order is the wire format, append only
DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
          torch.float16, torch.bfloat16, torch.float32, torch.float64)
_CODES = {dtype: code for code, dtype in enumerate(DTYPES)}
_ALIGN = 8  # bytes: every field starts at a multiple, so it can be viewed as its dtype
END_OF_DATA = -1


def _aligned(nbytes: int) -> int:
    return -(-nbytes // _ALIGN) * _ALIGN


def encode_header(batch: dict[str, torch.Tensor]) -> list[int]:
    """[fields, then per field: name length, name bytes (UTF-8), dtype code, ndim, shape...]."""
    header = [len(batch)]
    for name, tensor in batch.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"batch field {name!r} is a {type(tensor).__name__}; only tensors can be broadcast "
                            "to the tensor-parallel ranks (make the collate return tensors)")
        if tensor.dtype not in _CODES:
            raise TypeError(f"batch field {name!r} has dtype {tensor.dtype}, which the batch broadcast does not carry")
        encoded = name.encode("utf-8")
        header += [len(encoded), *encoded, _CODES[tensor.dtype], tensor.dim(), *tensor.shape]
    return header


def decode_header(header: list[int]) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """The inverse of ``encode_header``: [(name, dtype, shape)] in the batch's order."""
    fields, position = [], 1
    for _ in range(header[0]):
        length = header[position]
        name = bytes(header[position + 1:position + 1 + length]).decode("utf-8")
        position += 1 + length
        dtype, ndim = DTYPES[header[position]], header[position + 1]
        shape = tuple(header[position + 2:position + 2 + ndim])
        position += 2 + ndim
        fields.append((name, dtype, shape))
    return fields


def _nbytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    return int(torch.Size(shape).numel()) * torch.empty(0, dtype=dtype).element_size()


def pack(batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """Every field's bytes, each at an 8-byte-aligned offset, in one uint8 tensor on ``device``."""
    sizes = [_aligned(t.numel() * t.element_size()) for t in batch.values()]
    buffer = torch.zeros(sum(sizes), dtype=torch.uint8, device=device)
    offset = 0
    for tensor, size in zip(batch.values(), sizes, strict=True):
        data = tensor.detach().reshape(-1).contiguous().view(torch.uint8)
        buffer[offset:offset + data.numel()] = data.to(device)
        offset += size
    return buffer


def unpack(buffer: torch.Tensor, fields: list[tuple[str, torch.dtype, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    """The fields of ``pack``'s buffer with their dtype and shape.

    Each field is copied out of the buffer: views of one storage under several dtypes could not
    be saved or pickled, and a field written in place would alias its neighbours' bytes.
    """
    batch, offset = {}, 0
    for name, dtype, shape in fields:
        nbytes = _nbytes(dtype, shape)
        batch[name] = buffer[offset:offset + nbytes].view(dtype).reshape(shape).clone()
        offset += _aligned(nbytes)
    return batch


def broadcast_batch(batch: Optional[dict[str, torch.Tensor]], src: int,
                    group: Optional[dist.ProcessGroup] = None) -> Optional[dict[str, torch.Tensor]]:
    """Broadcast ``batch`` from global rank ``src`` over ``group``; returns it on every rank.

    The source passes its batch (``None`` for end of data), the others anything (ignored). Every
    rank gets the fields on the group's collective device, or ``None`` at end of data.
    """
    device = collectives.group_device(group)
    is_source = dist.get_rank() == src
    header = encode_header(batch) if is_source and batch is not None else []
    length = collectives.new_tensor([len(header) if is_source and batch is not None else END_OF_DATA],
                                    group, dtype=torch.int64)
    collectives.broadcast(length, src, group, what="batch header length")
    count = int(length.item())
    if count == END_OF_DATA:
        return None
    header_tensor = (collectives.new_tensor(header, group, dtype=torch.int64) if is_source
                     else torch.empty(count, dtype=torch.int64, device=device))
    collectives.broadcast(header_tensor, src, group, what="batch header")
    fields = decode_header(header_tensor.tolist())
    if is_source:
        buffer = pack(batch, device)
    else:
        buffer = torch.empty(sum(_aligned(_nbytes(d, s)) for _, d, s in fields), dtype=torch.uint8, device=device)
    collectives.broadcast(buffer, src, group, what="batch data")
    return unpack(buffer, fields)


class TensorParallelBatches:
    """An iterator of micro-batches that reads on TP rank 0 and broadcasts to its TP group.

    ``source`` is the DataLoader iterator on the group's source rank and ``None`` elsewhere; every
    rank of the group must call ``next`` the same number of times (they run the same schedule).
    """

    def __init__(self, source: Optional[Iterator[dict]], src: int, group: Optional[dist.ProcessGroup]):
        self.source = source
        self.src = src
        self.group = group
        self.is_source = dist.get_rank() == src
        if self.is_source and source is None:
            raise ValueError("the tensor-parallel source rank needs a data iterator")

    def __iter__(self) -> "TensorParallelBatches":
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        batch = next(self.source, None) if self.is_source else None
        received = broadcast_batch(batch, self.src, self.group)
        if received is None:
            raise StopIteration
        return received


def tensor_parallel_data_iterator(build: Callable[[], Iterator[dict]]) -> Iterator[dict]:
    """``build()`` (a DataLoader iterator) on TP rank 0 of this rank's TP group, broadcast to the rest.

    Without tensor parallelism this is just ``build()``; the other TP ranks never call it, so they
    build no DataLoader (no workers, no reads, no patching).
    """
    if parallel_state.get_tensor_model_parallel_world_size() == 1:
        return build()
    src = parallel_state.get_tensor_model_parallel_src_rank()
    group = parallel_state.get_tensor_model_parallel_group()
    return TensorParallelBatches(build() if dist.get_rank() == src else None, src, group)
