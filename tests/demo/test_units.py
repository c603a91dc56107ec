"""Log-mel units: 25 Hz frame counts, stable units for the same audio, identical after save/load."""

import numpy as np
import pytest

from megatron_lst.demo.units import (
    FrontEndConfig,
    LogMelUnitExtractor,
    log_mel_features,
    mel_filterbank,
    num_unit_frames,
    resample,
)

SMALL = FrontEndConfig(pca_dim=16, num_units=20)


def _tones(seconds: float, sample_rate: int, seed: int) -> np.ndarray:
    """A sequence of 0.2 s tones and noise bursts: distinct spectra for k-means to find."""
    rng = np.random.default_rng(seed)
    pieces = []
    for _ in range(int(seconds / 0.2)):
        t = np.arange(int(0.2 * sample_rate)) / sample_rate
        if rng.random() < 0.3:
            pieces.append(0.1 * rng.standard_normal(len(t)))
        else:
            pieces.append(0.5 * np.sin(2 * np.pi * rng.uniform(100, 4000) * t))
    return np.concatenate(pieces).astype(np.float32)


@pytest.fixture(scope="module")
def fitted():
    audio = [_tones(8.0, 22050, seed) for seed in range(3)]
    features = [log_mel_features(a, 22050, SMALL) for a in audio]
    return LogMelUnitExtractor.fit(features, SMALL, seed=0), audio


def test_frame_count_is_25_hz():
    assert num_unit_frames(16_000, 16_000) == 25
    assert num_unit_frames(22050, 22050) == 25
    assert num_unit_frames(22051, 22050) == 26
    for samples in (1, 640, 641, 22050 * 3 + 17):
        assert len(log_mel_features(np.zeros(samples, np.float32), 22050)) == \
            num_unit_frames(samples, 22050)
    assert log_mel_features(np.zeros(22050, np.float32), 22050).shape == (25, 320)


def test_resample_22050_to_16000_keeps_a_tone():
    t = np.arange(22050) / 22050
    tone = resample(np.sin(2 * np.pi * 440 * t), 22050)
    assert len(tone) == 16000
    peak_hz = np.argmax(np.abs(np.fft.rfft(tone))) * 16000 / len(tone)
    assert abs(peak_hz - 440) < 2


def test_mel_filterbank_shape_and_coverage():
    bank = mel_filterbank(FrontEndConfig())
    assert bank.shape == (80, 257)
    assert (bank.sum(axis=1) > 0).all()


def test_units_are_stable_and_in_range(fitted):
    extractor, audio = fitted
    first = extractor.transform(audio[0], 22050)
    assert first.dtype == np.int32
    assert len(first) == num_unit_frames(len(audio[0]), 22050)
    assert first.min() >= 0 and first.max() < 20
    assert np.array_equal(first, extractor.transform(audio[0].copy(), 22050))
    assert len(np.unique(first)) > 5


def test_save_load_round_trip_gives_identical_units(fitted, tmp_path):
    extractor, audio = fitted
    path = tmp_path / "extractor.npz"
    extractor.save(path)
    loaded = LogMelUnitExtractor.load(path)
    assert loaded.config == SMALL and loaded.num_units == 20
    for clip in audio:
        assert np.array_equal(extractor.transform(clip, 22050), loaded.transform(clip, 22050))


def test_a_steady_tone_maps_to_few_units(fitted):
    """The same sound gives the same unit: a steady tone uses far fewer distinct units than the
    varied training audio."""
    extractor, audio = fitted
    t = np.arange(22050 * 2) / 22050
    steady = extractor.transform((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), 22050)
    assert len(np.unique(steady[1:-1])) <= 3


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, meta=np.array('{"kind": "hubert"}'))
    with pytest.raises(ValueError, match="log-mel"):
        LogMelUnitExtractor.load(path)
