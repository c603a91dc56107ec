"""Speech units at 25 Hz from a log-mel front end, PCA and k-means (no downloaded weights).

LST trains on HuBERT units at 25 Hz (docs/method.md §4). No HuBERT weights can be downloaded here, so the
demo quantises a plain front end instead (the recipe measured in docs/demo_data.md):

    audio -> 16 kHz -> STFT (400-sample Hann window, hop 160) -> 80 mel bins (20-7600 Hz) -> log
          -> 4 frames stacked (40 ms, 320 dims) -> per-utterance mean subtraction
          -> PCA to 64 dims with whitening -> nearest of K=500 k-means centroids

Unit frame ``j`` covers audio ``[j * 40 ms, (j + 1) * 40 ms)``; an utterance of ``n`` samples at
16 kHz has ``ceil(n / 640)`` units (the tail is zero padded). Units are NOT deduplicated.
:class:`LogMelUnitExtractor` saves its PCA and centroids, so audio seen later maps to the same ids.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

FRAME_RATE = 25
SAMPLE_RATE = 16_000
HOP = 160
WINDOW = 400
N_FFT = 512
STACK = 4
SAMPLES_PER_UNIT = HOP * STACK
FORMAT_VERSION = 1


@dataclass(frozen=True)
class FrontEndConfig:
    """What the extractor was fitted with; saved next to the matrices."""

    num_mels: int = 80
    min_hz: float = 20.0
    max_hz: float = 7600.0
    pca_dim: int = 64
    num_units: int = 500


@functools.lru_cache(maxsize=8)
def _anti_alias_filter(up: int, down: int) -> np.ndarray:
    """The Kaiser FIR filter ``resample_poly`` would design on every call, designed once (it
    dominates resampling time for 320/441)."""
    from scipy.signal import firwin

    max_rate = max(up, down)
    return firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))


def resample(waveform: np.ndarray, sample_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling (22.05 kHz espeak audio -> 16 kHz is ``resample_poly(x, 320, 441)``)."""
    if sample_rate == target_rate:
        return np.asarray(waveform, dtype=np.float32)
    from scipy.signal import resample_poly

    divisor = math.gcd(sample_rate, target_rate)
    up, down = target_rate // divisor, sample_rate // divisor
    resampled = resample_poly(waveform, up, down, window=_anti_alias_filter(up, down))
    return resampled.astype(np.float32)


def _eigh_single_thread(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.linalg.eigh`` with BLAS limited to one thread: on small 2-core machines OpenBLAS'
    threaded eigensolver was measured at 3.5 s for a 320x320 matrix, 20 ms single-threaded."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return np.linalg.eigh(matrix)
    with threadpool_limits(limits=1, user_api="blas"):
        return np.linalg.eigh(matrix)


def num_unit_frames(num_samples: int, sample_rate: int) -> int:
    """How many 25 Hz units an utterance of ``num_samples`` at ``sample_rate`` yields."""
    return math.ceil(num_samples * SAMPLE_RATE / sample_rate / SAMPLES_PER_UNIT)


def mel_filterbank(config: FrontEndConfig) -> np.ndarray:
    """``(num_mels, N_FFT // 2 + 1)`` triangular filters on the HTK mel scale."""
    def to_mel(hz: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    def to_hz(mel: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)

    edges = to_hz(np.linspace(to_mel(np.array(config.min_hz)), to_mel(np.array(config.max_hz)),
                              config.num_mels + 2))
    bins = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def log_mel_features(waveform: np.ndarray, sample_rate: int,
                     config: FrontEndConfig = FrontEndConfig()) -> np.ndarray:
    """``(num_unit_frames, 4 * num_mels)`` stacked log-mel features, utterance mean removed."""
    audio = resample(np.asarray(waveform, dtype=np.float32), sample_rate)
    num_frames = math.ceil(len(audio) / SAMPLES_PER_UNIT)
    padded_length = num_frames * SAMPLES_PER_UNIT + WINDOW - HOP
    audio = np.pad(audio, (0, padded_length - len(audio)))
    windows = np.lib.stride_tricks.sliding_window_view(audio, WINDOW)[::HOP][: num_frames * STACK]
    spectrum = np.abs(np.fft.rfft(windows * np.hanning(WINDOW).astype(np.float32), n=N_FFT)) ** 2
    log_mel = np.log(spectrum.astype(np.float32) @ mel_filterbank(config).T + 1e-6)
    stacked = log_mel.reshape(num_frames, STACK * config.num_mels)
    return (stacked - stacked.mean(axis=0, keepdims=True)).astype(np.float32)


def _kmeans(points: np.ndarray, num_clusters: int, seed: int) -> np.ndarray:
    """Centroids from faiss-cpu when installed (faster), else scikit-learn's MiniBatchKMeans."""
    try:
        import faiss
    except ImportError:
        from sklearn.cluster import MiniBatchKMeans

        model = MiniBatchKMeans(num_clusters, random_state=seed, batch_size=4096, n_init=3)
        return model.fit(points).cluster_centers_.astype(np.float32)
    kmeans = faiss.Kmeans(points.shape[1], num_clusters, niter=25, seed=seed, verbose=False,
                          max_points_per_centroid=100_000)
    kmeans.train(np.ascontiguousarray(points, dtype=np.float32))
    return kmeans.centroids.astype(np.float32)


class LogMelUnitExtractor:
    """Fitted PCA + centroids; maps audio to unit ids in ``[0, num_units)`` at 25 Hz."""

    def __init__(self, config: FrontEndConfig, mean: np.ndarray, projection: np.ndarray,
                 centroids: np.ndarray) -> None:
        self.config = config
        self.mean = mean.astype(np.float32)
        self.projection = projection.astype(np.float32)
        self.centroids = centroids.astype(np.float32)
        self._centroid_norms = (self.centroids**2).sum(axis=1)

    @property
    def num_units(self) -> int:
        return len(self.centroids)

    @classmethod
    def fit(cls, features: Sequence[np.ndarray], config: FrontEndConfig = FrontEndConfig(),
            max_frames: int = 200_000, seed: int = 0) -> "LogMelUnitExtractor":
        """Fit whitening PCA and k-means on (a seeded sample of at most ``max_frames``) frames
        from :func:`log_mel_features`."""
        frames = np.concatenate(list(features)).astype(np.float32)
        if len(frames) > max_frames:
            frames = frames[np.random.default_rng(seed).choice(len(frames), max_frames,
                                                               replace=False)]
        if len(frames) < config.num_units:
            raise ValueError(f"{len(frames)} frames cannot fit {config.num_units} clusters")
        mean = frames.mean(axis=0)
        covariance = np.cov(frames - mean, rowvar=False).astype(np.float64)
        eigenvalues, eigenvectors = _eigh_single_thread(covariance)
        order = np.argsort(eigenvalues)[::-1][: config.pca_dim]
        projection = eigenvectors[:, order] / np.sqrt(np.maximum(eigenvalues[order], 1e-8))
        projected = ((frames - mean) @ projection).astype(np.float32)
        return cls(config, mean, projection, _kmeans(projected, config.num_units, seed))

    def project(self, features: np.ndarray) -> np.ndarray:
        return (features - self.mean) @ self.projection

    def units_from_features(self, features: np.ndarray) -> np.ndarray:
        """Nearest centroid of each frame (int32); plain numpy so results never depend on which
        k-means library fitted the centroids."""
        projected = self.project(features)
        distances = self._centroid_norms[None, :] - 2.0 * projected @ self.centroids.T
        return distances.argmin(axis=1).astype(np.int32)

    def transform(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        """Unit ids of one utterance, ``num_unit_frames(len(waveform), sample_rate)`` of them."""
        return self.units_from_features(log_mel_features(waveform, sample_rate, self.config))

    def save(self, path: str | Path) -> None:
        """One ``.npz`` holding the matrices and the front-end config."""
        meta = {"format_version": FORMAT_VERSION, "kind": "log_mel", "frame_rate": FRAME_RATE,
                **asdict(self.config)}
        with open(path, "wb") as handle:
            np.savez(handle, mean=self.mean, projection=self.projection,
                     centroids=self.centroids, meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path: str | Path) -> "LogMelUnitExtractor":
        with np.load(path) as archive:
            meta = json.loads(str(archive["meta"]))
            if meta.get("kind") != "log_mel" or meta.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"{path} is not a log-mel unit extractor of format "
                                 f"{FORMAT_VERSION}: {meta}")
            fields = {name: meta[name] for name in FrontEndConfig.__dataclass_fields__}
            return cls(FrontEndConfig(**fields), archive["mean"], archive["projection"],
                       archive["centroids"])
