"""One reader per tensor-parallel group: TP rank 0 loads, the other ranks receive every micro-batch.

The two-rank tests run in-process on gloo (``torch.multiprocessing.spawn``) with megatron's
parallel state at TP = 2, the layout ``training/loop.py`` reads under.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from megatron_lst.training.batch_broadcast import (
    DTYPES, TensorParallelBatches, decode_header, encode_header, pack, tensor_parallel_data_iterator, unpack,
)
from tests.conftest import free_port


def make_batches() -> list[dict[str, torch.Tensor]]:
    """Micro-batches of LST-like fields whose shapes change from batch to batch, every dtype carried."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for rows, width in ((2, 5), (3, 17), (1, 1)):
        batch = {
            "tokens": torch.randint(0, 1000, (rows, width), generator=generator),
            "is_speech": torch.rand(rows, width, generator=generator) > 0.5,
            "document_ids": torch.randint(-1, 4, (rows, width), generator=generator, dtype=torch.int32),
            "patch_lengths": torch.randint(0, 5, (rows, width // 2 + 1), generator=generator),
            "num_tokens": torch.tensor([width] * rows),
            "scalar": torch.tensor(7, dtype=torch.int16),
            "empty": torch.zeros(0, 3, dtype=torch.int8),
            "weights": torch.rand(rows, 3, generator=generator).to(torch.bfloat16),
        }
        batches.append(batch)
    return batches


def assert_same_batch(expected: dict, got: dict) -> None:
    assert list(got) == list(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape, name
        assert torch.equal(got[name], tensor), name


def test_header_and_buffer_round_trip_every_field():
    for batch in make_batches():
        fields = decode_header(encode_header(batch))
        assert [name for name, _, _ in fields] == list(batch)
        assert_same_batch(batch, unpack(pack(batch, torch.device("cpu")), fields))
    assert {dtype for batch in make_batches() for dtype in (t.dtype for t in batch.values())} <= set(DTYPES)


def test_fields_that_cannot_be_broadcast_are_named():
    with pytest.raises(TypeError, match="'step' is a int"):
        encode_header({"tokens": torch.zeros(2, 3), "step": 4})
    with pytest.raises(TypeError, match="complex64"):
        encode_header({"spectrum": torch.zeros(2, dtype=torch.complex64)})


def _two_rank_worker(rank: int, port: int, out: str, which: str) -> None:
    from megatron.core import parallel_state

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=2)
        if which == "real":  # every rank builds the datasets, as the Trainer does (megatron's builder syncs)
            from tests.data.demo_blend import demo_like_dataset

            demo_like_dataset(str(Path(out) / "corpus"))
        built = []

        def build():
            built.append(rank)
            return iter(make_batches()) if which == "synthetic" else _real_lst_iterator(out)

        iterator = tensor_parallel_data_iterator(build)
        received = list(iterator)  # every rank stops together when the source runs dry
        torch.save({"built": built, "received": received, "type": type(iterator).__name__,
                    "source": None if not isinstance(iterator, TensorParallelBatches) else iterator.source is not None},
                   Path(out) / f"rank{rank}.pt")
    finally:
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()


def _real_lst_iterator(out: str):
    """The loop's LST reader on a speech-text blend: sampler, keys, bucketing, collate with patching."""
    from tests.data.demo_blend import demo_like_reader

    return demo_like_reader(Path(out) / "corpus", steps=3)


def run_two_ranks(tmp_path: Path, which: str) -> list[dict]:
    mp.spawn(_two_rank_worker, args=(free_port(), str(tmp_path), which), nprocs=2, join=True)
    return [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(2)]


def test_tp_rank_1_builds_no_loader_and_receives_every_batch(tmp_path):
    rank0, rank1 = run_two_ranks(tmp_path, "synthetic")
    assert rank0["built"] == [0] and rank1["built"] == []
    assert rank0["type"] == rank1["type"] == "TensorParallelBatches"
    assert rank0["source"] is True and rank1["source"] is False
    expected = make_batches()
    assert len(rank0["received"]) == len(rank1["received"]) == len(expected)
    for want, got0, got1 in zip(expected, rank0["received"], rank1["received"], strict=True):
        assert_same_batch(want, got0)
        assert_same_batch(want, got1)


@pytest.mark.slow
def test_real_lst_batches_reach_tp_rank_1_bitwise(tmp_path):
    """Rank 1 gets rank 0's patched, bucketed LST micro-batches without reading or patching anything."""
    from tests.data.demo_blend import demo_like_reader

    (tmp_path / "corpus").mkdir()
    reference = list(demo_like_reader(tmp_path / "corpus", steps=3))  # builds (and caches) the corpus once
    rank0, rank1 = run_two_ranks(tmp_path, "real")
    assert rank0["built"] == [0] and rank1["built"] == []
    assert len(rank1["received"]) == len(reference) == 6
    for want, got in zip(reference, rank1["received"], strict=True):
        assert "patch_lengths" in got and "sample_index" in got
        assert_same_batch(want, got)
