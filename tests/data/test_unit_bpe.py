"""train_unit_bpe keeps every utterance, however long: a unit heard only there still gets a piece."""

from __future__ import annotations

import numpy as np

from megatron_lst.data.unit_bpe import UnitBPE, train_unit_bpe


def test_units_heard_only_in_a_long_utterance_get_pieces(tmp_path):
    rng = np.random.default_rng(0)
    short = [rng.integers(0, 40, 50).tolist() for _ in range(60)]
    # 3,000 units (2 minutes at 25 Hz, over 6,000 UTF-8 bytes) with units 40-49 nowhere else
    long = rng.integers(0, 50, 3000).tolist()
    model = train_unit_bpe([*short, long], tmp_path / "units", vocab_size=120, num_units=50)
    encoded = UnitBPE(model).encode_many([long])[0]  # refused if units 40-49 had no piece
    assert 0 < len(encoded) <= len(long)
