"""The LST collate's curriculum draw: which rows it patches aligned, and the logged share of them."""

from __future__ import annotations

import numpy as np
import torch

from megatron_lst.patching import PatchingConfig
from megatron_lst.training.lst_task import aligned_speech_rows, collate_lst_samples
from tests.patching.patching_samples import LAYOUT, hand_sample


def samples(spec: str, count: int, step: int) -> list[dict]:
    row = {name: array[0] for name, array in hand_sample(spec).items()}
    return [{**row, "num_positions": 0, "sample_index": index, "step": step} for index in range(count)]


def test_curriculum_rows_go_from_aligned_to_static_and_the_share_is_counted():
    """tau1 = 10, tau2 = 20: every speech row aligned at step 0, none at step 30; the text-only row
    counts in neither the numerator nor the denominator of "aligned rows"."""
    config = PatchingConfig(strategy="curriculum", tau1=10, tau2=20)
    speech, text = "B T t S w3 s2 w6 E", "B T t t E"
    shares, patches = {}, {}
    for step in (0, 30):
        rows = samples(speech, 3, step) + samples(text, 1, step)
        batch = collate_lst_samples(rows, LAYOUT.bos_id, LAYOUT.pad_id, config, LAYOUT)
        shares[step] = aligned_speech_rows(batch["aligned"], batch["is_speech"], torch.device("cpu")).tolist()
        patches[step] = (batch["patch_lengths"][:3] > 0).sum(dim=1).tolist()
    assert shares == {0: [3.0, 3.0], 30: [0.0, 3.0]}
    # aligned: B <t> t <s> | w3 | s2 | w6 | E = 8 patches; static p = 4 with <s> folded: B <t> t [<s> 4] [4] [3] E = 7
    assert patches == {0: [8, 8, 8], 30: [7, 7, 7]}


def test_aligned_rows_of_a_text_only_batch_count_nothing():
    config = PatchingConfig(strategy="curriculum", tau1=10, tau2=20)
    batch = collate_lst_samples(samples("B T t t E", 2, 0), LAYOUT.bos_id, LAYOUT.pad_id, config, LAYOUT)
    assert not batch["aligned"].any()
    assert aligned_speech_rows(batch["aligned"], batch["is_speech"], torch.device("cpu")).tolist() == [0.0, 0.0]
    assert np.array_equal(batch["patch_lengths"].numpy(), np.ones((2, 5), dtype=np.int64))
