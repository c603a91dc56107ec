"""tools/extract_units.py reads FLAC and OGG trees as well as WAV (LibriSpeech ships FLAC)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

soundfile = pytest.importorskip("soundfile")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

from extract_units import audio_files, read_audio  # noqa: E402


def clip(seed: int, seconds: float = 1.0, rate: int = 16000) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * rate)) * 3000).astype(np.int16)


def test_wav_and_flac_read_the_same_samples(tmp_path):
    samples = clip(0)
    soundfile.write(tmp_path / "a.wav", samples, 16000, subtype="PCM_16")
    soundfile.write(tmp_path / "a.flac", samples, 16000, subtype="PCM_16")  # lossless
    (wav, wav_rate), (flac, flac_rate) = read_audio(tmp_path / "a.wav"), read_audio(tmp_path / "a.flac")
    assert wav_rate == flac_rate == 16000 and wav.dtype == np.float32
    np.testing.assert_array_equal(wav, flac)
    np.testing.assert_allclose(wav, samples / 32768.0, atol=1e-7)


def test_stereo_is_averaged_to_mono(tmp_path):
    left, right = clip(1).astype(np.float32) / 32768, clip(2).astype(np.float32) / 32768
    soundfile.write(tmp_path / "s.flac", np.stack([left, right], axis=1), 16000, subtype="PCM_24")
    mono, _ = read_audio(tmp_path / "s.flac")
    np.testing.assert_allclose(mono, (left + right) / 2, atol=1e-4)


def test_folders_yield_every_audio_suffix_in_any_case_and_nothing_else(tmp_path):
    (tmp_path / "book" / "chapter").mkdir(parents=True)
    for name in ("book/chapter/2.flac", "book/chapter/1.FLAC", "book/x.ogg", "a.wav", "notes.txt", "book/trans.txt"):
        (tmp_path / name).write_bytes(b"")
    found = [path.relative_to(tmp_path).as_posix() for path in audio_files([str(tmp_path)])]
    assert found == ["a.wav", "book/chapter/1.FLAC", "book/chapter/2.flac", "book/x.ogg"]


def test_cli_extracts_units_from_a_flac_tree(tmp_path):
    from megatron_lst.demo.units import FrontEndConfig, LogMelUnitExtractor, log_mel_features

    config = FrontEndConfig(pca_dim=8, num_units=4)
    extractor = LogMelUnitExtractor.fit([log_mel_features(clip(3).astype(np.float32) / 32768, 16000, config)],
                                        config)
    extractor.save(tmp_path / "extractor.npz")
    (tmp_path / "audio" / "speaker").mkdir(parents=True)
    soundfile.write(tmp_path / "audio" / "speaker" / "utt.flac", clip(4), 16000, subtype="PCM_16")
    subprocess.run([sys.executable, str(ROOT / "tools/extract_units.py"), "--log-mel", str(tmp_path / "extractor.npz"),
                    "--output", str(tmp_path / "units.jsonl"), str(tmp_path / "audio")],
                   check=True, capture_output=True)
    rows = [json.loads(line) for line in (tmp_path / "units.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == ["utt"] and len(rows[0]["units"]) == 25
    assert all(0 <= unit < 4 for unit in rows[0]["units"])
