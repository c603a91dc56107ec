"""The demo vocoder: units -> a waveform of the units' duration whose units map back close by."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_lst.demo.units import SAMPLE_RATE, SAMPLES_PER_UNIT, FrontEndConfig, LogMelUnitExtractor, log_mel_features
from megatron_lst.inference.vocoder import DemoGriffinLimVocoder, load_vocoder, write_wav


def tone_sweep(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    time = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    pitch = 200 + 800 * np.abs(np.sin(2 * np.pi * 0.7 * time + rng.random()))
    return (np.sin(2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE) * 0.5 + 0.01 * rng.standard_normal(len(time))).astype(np.float32)


@pytest.fixture(scope="module")
def extractor():
    config = FrontEndConfig(pca_dim=16, num_units=20)
    features = [log_mel_features(tone_sweep(3.0, seed), SAMPLE_RATE, config) for seed in range(4)]
    return LogMelUnitExtractor.fit(features, config, seed=0)


def test_vocoder_output_has_the_units_duration_and_round_trips(extractor, tmp_path):
    audio = tone_sweep(2.0, seed=9)
    units = extractor.transform(audio, SAMPLE_RATE)
    vocoder = DemoGriffinLimVocoder(extractor, iterations=8)
    waveform, rate = vocoder(units)
    assert rate == SAMPLE_RATE and len(waveform) == len(units) * SAMPLES_PER_UNIT
    assert np.isfinite(waveform).all() and 0.5 < np.abs(waveform).max() <= 0.9 + 1e-6
    again = extractor.transform(waveform, SAMPLE_RATE)
    # far from exact (no phase, no pitch), but much closer than chance (1 / 20)
    assert (again == units).mean() > 0.2
    path = tmp_path / "demo.wav"
    extractor.save(tmp_path / "extractor.npz")
    write_wav(path, waveform, rate)
    assert path.stat().st_size > 2 * len(waveform)
    assert isinstance(load_vocoder(f"demo:{tmp_path / 'extractor.npz'}"), DemoGriffinLimVocoder)
    with pytest.raises(ValueError):
        load_vocoder("no_factory_given")
