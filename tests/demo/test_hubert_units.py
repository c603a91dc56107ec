"""The HuBERT path with a tiny randomly initialised checkpoint saved locally (no downloads).

Marked slow: importing transformers alone takes ~15 s on a 2-core machine."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megatron_lst.demo.hubert_units import reduce_to_25hz

ROOT = Path(__file__).resolve().parents[2]


def test_reduce_to_25hz():
    hidden = np.arange(10, dtype=np.float32).reshape(5, 2)
    assert np.array_equal(reduce_to_25hz(hidden, "subsample"), hidden[[0, 2, 4]])
    assert np.array_equal(reduce_to_25hz(hidden, "average"),
                          np.array([[1, 2], [5, 6], [8, 9]], dtype=np.float32))
    with pytest.raises(ValueError):
        reduce_to_25hz(hidden, "max")


@pytest.fixture(scope="module")
def tiny_hubert(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    config = transformers.HubertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16, 16, 16, 16, 16, 16), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2)
    folder = tmp_path_factory.mktemp("hubert")
    transformers.HubertModel(config).save_pretrained(folder / "checkpoint")
    centroids = np.random.default_rng(0).standard_normal((20, 32)).astype(np.float32)
    np.save(folder / "centroids.npy", centroids)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["average", "subsample"])
def test_hubert_units_at_25hz_and_stable(tiny_hubert, mode):
    from megatron_lst.demo.hubert_units import HubertUnitExtractor

    extractor = HubertUnitExtractor(tiny_hubert / "checkpoint", tiny_hubert / "centroids.npy",
                                    layer=2, frame_reduction=mode)
    audio = np.random.default_rng(1).standard_normal(22050 * 2).astype(np.float32) * 0.1
    units = extractor.transform(audio, 22050)
    assert len(units) == 50  # 2 s: 100 HuBERT frames at 50 Hz (99 here, odd one kept) -> 50
    assert units.min() >= 0 and units.max() < 20
    assert np.array_equal(units, extractor.transform(audio, 22050))


@pytest.mark.slow
def test_extract_units_cli_with_hubert(tiny_hubert, tmp_path):
    from scipy.io import wavfile

    audio = (np.random.default_rng(2).standard_normal(16000) * 3000).astype(np.int16)
    wavfile.write(tmp_path / "clip.wav", 16000, audio)
    subprocess.run(
        [sys.executable, str(ROOT / "tools/extract_units.py"), "--hubert",
         str(tiny_hubert / "checkpoint"), "--centroids", str(tiny_hubert / "centroids.npy"),
         "--layer", "1", "--output", str(tmp_path / "units.jsonl"), str(tmp_path)],
        check=True, capture_output=True)
    rows = [json.loads(line) for line in (tmp_path / "units.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == ["clip"] and len(rows[0]["units"]) == 25
