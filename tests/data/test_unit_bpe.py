"""train_unit_bpe keeps every utterance, however long: a unit heard only there still gets a piece."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_lst.data.unit_bpe import UnitBPE, train_unit_bpe


def test_units_heard_only_in_a_long_utterance_get_pieces(tmp_path):
    rng = np.random.default_rng(0)
    short = [rng.integers(0, 40, 50).tolist() for _ in range(60)]
    # 3,000 units (2 minutes at 25 Hz, over 6,000 UTF-8 bytes) with units 40-49 nowhere else
    long = rng.integers(0, 50, 3000).tolist()
    model = train_unit_bpe([*short, long], tmp_path / "units", vocab_size=120, num_units=50)
    encoded = UnitBPE(model).encode_many([long])[0]  # refused if units 40-49 had no piece
    assert 0 < len(encoded) <= len(long)


def test_training_replaces_the_files_whole_and_leaves_no_temporary(tmp_path, monkeypatch):
    import sentencepiece as spm

    rng = np.random.default_rng(1)
    sequences = [rng.integers(0, 20, 40).tolist() for _ in range(30)]
    model = train_unit_bpe(sequences, tmp_path / "units.v1", vocab_size=40, num_units=20)
    assert model == tmp_path / "units.v1.model"  # a dot in the prefix is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["units.v1.json", "units.v1.model", "units.v1.vocab"]
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def interrupted(**kwargs):
        with open(kwargs["model_prefix"] + ".model", "wb") as handle:
            handle.write(b"half a model")
        raise RuntimeError("interrupted")

    monkeypatch.setattr(spm.SentencePieceTrainer, "train", interrupted)
    with pytest.raises(RuntimeError, match="interrupted"):
        train_unit_bpe(sequences, tmp_path / "units.v1", vocab_size=40, num_units=20)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
