"""KVCache storage: appends of any size land in order, whatever the storage held before."""

from __future__ import annotations

import pytest
import torch

from megatron_lst.inference.kv_cache import KVCache


@pytest.mark.parametrize("chunks", [[3, 200], [1, 1, 500, 2], [70, 64, 1000]])
def test_a_chunk_longer_than_the_storage_grows_it_and_keeps_every_slot(chunks):
    """A prompt's shared part read first, then an ending longer than the whole storage (the demo's
    1,020-token StoryCloze endings after a short prompt failed here)."""
    cache = KVCache()
    written = []
    for index, steps in enumerate(chunks):
        keys = torch.full((2, 1, steps, 4), float(index)) + torch.arange(steps, dtype=torch.float32)[None, None, :, None]
        cache.append(keys, keys + 0.5)
        written.append(keys)
    expected = torch.cat(written, dim=2)
    assert cache.length == sum(chunks)
    torch.testing.assert_close(cache.keys, expected)
    torch.testing.assert_close(cache.values, expected + 0.5)
    assert cache.valid.all()


def test_a_window_keeps_the_newest_slots_across_a_long_chunk():
    cache = KVCache(window_size=8)
    cache.append(torch.zeros(1, 1, 5, 2), torch.zeros(1, 1, 5, 2))
    long = torch.arange(100, dtype=torch.float32).view(1, 1, 100, 1).expand(1, 1, 100, 2)
    cache.append(long, long)
    assert cache.length == 8
    torch.testing.assert_close(cache.keys, long[:, :, -8:])
