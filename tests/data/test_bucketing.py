"""Length bucketing and patching in the DataLoader on a demo-like speech-text blend.

The blend and the reader are ``tests/data/demo_blend.py``'s: the demo's settings over synthetic
corpora, read through the loop's own reader (``build_data_iterator`` with the LST collate).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_lst.data.bucketing import sample_token_counts
from megatron_lst.patching import PatchingConfig, compute_patches
from tests.data.demo_blend import GLOBAL, build_demo_like_corpora, demo_like_dataset, demo_like_reader


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("demo_like")
    build_demo_like_corpora(folder)
    return folder


def pad_fraction(batches, pad_id: int) -> float:
    pads = total = 0
    for batch in batches:
        pads += int((batch["tokens"] == pad_id).sum())
        total += batch["tokens"].numel()
    return pads / total


def real_patches(batch: dict, row: int) -> list[int]:
    """A row's patches up to its last real token (the merged padding patch left out)."""
    lengths = batch["patch_lengths"][row]
    lengths = lengths[lengths > 0]  # a row with fewer patches than the widest ends in zeros
    ends = torch.cumsum(lengths, 0)
    return lengths[: int((ends <= batch["num_tokens"][row]).sum())].tolist()


def test_token_counts_are_the_collated_row_lengths(corpus):
    """Bucketing sorts by these counts: they must be what the collate pads to (BOS openers included)."""
    train, _ = demo_like_dataset(str(corpus))
    counts = sample_token_counts(train, np.arange(len(train)))
    seen = 0
    for batch in demo_like_reader(corpus, steps=12):
        assert batch["num_tokens"].tolist() == counts[batch["sample_index"].numpy()].tolist()
        seen += len(batch["num_tokens"])
    assert seen == 12 * GLOBAL
    assert counts.min() < 300 < 600 < counts.max()  # text rows and speech-text rows both present


def test_bucketing_keeps_padding_under_ten_percent_on_the_demo_blend(corpus):
    _, tokenizer = demo_like_dataset(str(corpus))
    index_order = pad_fraction(demo_like_reader(corpus, window=0), tokenizer.pad_id)
    bucketed = pad_fraction(demo_like_reader(corpus), tokenizer.pad_id)
    assert index_order > 0.3, index_order  # what mixing text and speech-text rows costs
    assert bucketed < 0.10, bucketed


def test_resume_inside_a_window_reads_exactly_the_batches_of_the_straight_run(corpus):
    """Window 4: a checkpoint at step 6 resumes mid-window; curriculum draws (tau 2..8) keyed by step."""
    for dp in (1, 2):
        for rank in range(dp):
            straight = list(demo_like_reader(corpus, steps=12, window=4, micro=2, rank=rank, dp=dp))
            resumed = list(demo_like_reader(corpus, steps=12, window=4, micro=2, rank=rank, dp=dp,
                                            consumed=6 * GLOBAL, workers=1))
            per_step = GLOBAL // (2 * dp)
            assert len(resumed) == 6 * per_step
            for expected, got in zip(straight[6 * per_step:], resumed, strict=True):
                assert expected.keys() == got.keys()
                for name in expected:
                    assert torch.equal(expected[name], got[name]), (dp, rank, name)


def test_patching_draw_is_a_function_of_seed_step_and_sample_only(corpus):
    """Mixed patching (aligned with p = 0.5): each sample is patched the same whatever the micro-batch
    size, DP size and workers, and as the kernel patches it alone under its own (step, index)."""
    _, tokenizer = demo_like_dataset(str(corpus))
    mixed = PatchingConfig(strategy="mixed", patch_size=4, mixed_aligned_probability=0.5, seed=1)
    layouts = [dict(micro=4, dp=1, workers=0), dict(micro=2, dp=2, workers=2), dict(micro=1, dp=4, workers=1)]
    patches: list[dict[int, list[int]]] = []
    rows: dict[int, tuple] = {}
    for layout in layouts:
        found: dict[int, list[int]] = {}
        for rank in range(layout["dp"]):
            for batch in demo_like_reader(corpus, steps=16, window=1, micro=layout["micro"], rank=rank,
                                          dp=layout["dp"], workers=layout["workers"], patching=mixed):
                for row, index in enumerate(batch["sample_index"].tolist()):
                    found[index] = real_patches(batch, row)
                    rows[index] = ({k: batch[k][row, :int(batch["num_tokens"][row])] for k in
                                    ("tokens", "is_speech", "segment_ids", "is_silence", "document_ids")})
        patches.append(found)
    assert sorted(patches[0]) == list(range(16 * GLOBAL))
    assert patches[0] == patches[1] == patches[2]
    aligned = []
    for index, row in rows.items():
        alone = compute_patches(row["tokens"], row["is_speech"], mixed, tokenizer.vocab,
                                segment_ids=row["segment_ids"], is_silence=row["is_silence"],
                                document_ids=row["document_ids"], step=index // GLOBAL,
                                sample_ids=torch.tensor([index]))
        assert alone.patch_lengths.tolist()[: int(alone.num_patches)] == patches[0][index], index
        if row["is_speech"].any():
            aligned.append(bool(alone.aligned))
    assert 0 < sum(aligned) < len(aligned)  # both choices occur, so keying the wrong id would show
