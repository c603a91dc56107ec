"""Units -> waveform, for listening to generated speech.

``DemoGriffinLimVocoder`` is a *demo vocoder*: it inverts the demo's unit extractor
(demo/units.py) as far as it can be inverted — centroid -> PCA inverse -> stacked log-mel ->
mel power -> linear spectrum (pseudo-inverse of the mel filters) -> Griffin-Lim phase. Units keep
only a coarse spectral envelope and no pitch, so the result is robotic but follows the timing and
the vowel/consonant structure of the units; it is meant to check generations by ear, not to judge
quality. Real HuBERT units need a trained unit vocoder (e.g. a unit HiFi-GAN): any object with
``__call__(units) -> (waveform, sample_rate)`` plugs in, loaded by :func:`load_vocoder` from
``module:factory``.
"""

from __future__ import annotations

import importlib
import wave
from pathlib import Path
from typing import Protocol

import numpy as np

from megatron_lst.demo.units import HOP, N_FFT, SAMPLE_RATE, STACK, WINDOW, LogMelUnitExtractor, mel_filterbank
from megatron_lst.utils.atomic import atomic_file


class UnitVocoder(Protocol):
    def __call__(self, units: np.ndarray) -> tuple[np.ndarray, int]:
        """Unit ids (0-based, 25 Hz) -> (float waveform in [-1, 1], sample rate)."""


def _stft(audio: np.ndarray) -> np.ndarray:
    padded = np.pad(audio, (WINDOW // 2, WINDOW // 2))
    frames = np.lib.stride_tricks.sliding_window_view(padded, WINDOW)[::HOP]
    return np.fft.rfft(frames * np.hanning(WINDOW), n=N_FFT)


def _istft(spectrum: np.ndarray, length: int) -> np.ndarray:
    window = np.hanning(WINDOW)
    frames = np.fft.irfft(spectrum, n=N_FFT)[:, :WINDOW] * window
    output = np.zeros(length + WINDOW)
    weight = np.zeros(length + WINDOW)
    for index, frame in enumerate(frames):
        start = index * HOP
        output[start:start + WINDOW] += frame
        weight[start:start + WINDOW] += window ** 2
    output = output / np.maximum(weight, 1e-8)
    return output[WINDOW // 2: WINDOW // 2 + length]


def griffin_lim(magnitude: np.ndarray, iterations: int = 32, seed: int = 0) -> np.ndarray:
    """Waveform whose STFT magnitude approximates ``magnitude`` [frames, N_FFT // 2 + 1]."""
    length = magnitude.shape[0] * HOP
    phase = np.exp(2j * np.pi * np.random.default_rng(seed).random(magnitude.shape))
    audio = _istft(magnitude * phase, length)
    for _ in range(iterations):
        rebuilt = _stft(audio)[: magnitude.shape[0]]
        phase = np.exp(1j * np.angle(rebuilt))
        audio = _istft(magnitude * phase, length)
    return audio


class DemoGriffinLimVocoder:
    """The demo extractor's inverse plus Griffin-Lim (a demo vocoder, see the module docstring)."""

    def __init__(self, extractor: LogMelUnitExtractor, iterations: int = 32, level: float = 2.0):
        self.extractor = extractor
        self.iterations = iterations
        self.level = level  # the extractor removed each utterance's mean log-mel: put a plausible one back
        self.inverse_projection = np.linalg.pinv(extractor.projection)
        self.inverse_mel = np.linalg.pinv(mel_filterbank(extractor.config))

    @classmethod
    def from_file(cls, path: str | Path) -> "DemoGriffinLimVocoder":
        return cls(LogMelUnitExtractor.load(path))

    def __call__(self, units: np.ndarray) -> tuple[np.ndarray, int]:
        units = np.asarray(units, dtype=np.int64)
        if len(units) == 0:
            return np.zeros(0, dtype=np.float32), SAMPLE_RATE
        stacked = self.extractor.centroids[units] @ self.inverse_projection + self.extractor.mean
        log_mel = stacked.reshape(len(units) * STACK, self.extractor.config.num_mels) + self.level
        power = np.maximum(np.exp(log_mel) @ self.inverse_mel.T, 0.0)
        audio = griffin_lim(np.sqrt(power), self.iterations)
        peak = float(np.abs(audio).max()) or 1.0
        return (0.9 * audio / peak).astype(np.float32), SAMPLE_RATE


def load_vocoder(spec: str) -> UnitVocoder:
    """``demo:EXTRACTOR.npz`` (the demo vocoder) or ``package.module:factory`` (called with no
    arguments, it returns a ``UnitVocoder``)."""
    if spec.startswith("demo:"):
        return DemoGriffinLimVocoder.from_file(spec[len("demo:"):])
    module_name, _, factory = spec.partition(":")
    if not factory:
        raise ValueError(f"vocoder {spec!r}: expected demo:PATH.npz or package.module:factory")
    return getattr(importlib.import_module(module_name), factory)()


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> None:
    """16-bit mono PCM, written atomically (the folder is created; a failed write leaves no partial wav)."""
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    with atomic_file(path, "wb") as stream, wave.open(stream, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes(pcm.tobytes())
