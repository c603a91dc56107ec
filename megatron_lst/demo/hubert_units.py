"""Units from a user's HuBERT checkpoint (Hugging Face format) and k-means centroids (.npy).

This is the path real users take: LST's units are HuBERT features quantised with k-means
(docs/method.md §4). No weights can be downloaded on this project's machines, so the checkpoint must be a
local folder that ``transformers.HubertModel.from_pretrained`` reads; the centroids are a
``(num_units, hidden_size)`` array for the chosen layer.

Frame rate: HuBERT downsamples 16 kHz audio 320x, giving 50 Hz frames, while LST's units are 25 Hz.
``frame_reduction`` decides how two 50 Hz frames become one 25 Hz unit:

* ``"average"`` (default): average each pair of hidden vectors, then take the nearest centroid;
  uses both frames and suits centroids fitted on 50 Hz or on pair-averaged features alike.
* ``"subsample"``: quantise every frame and keep every second unit (frames 0, 2, 4, ...).

A trailing odd frame is kept on its own in both modes, so ``n`` frames give ``ceil(n / 2)`` units.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from megatron_lst.demo.units import SAMPLE_RATE, resample

FRAME_REDUCTIONS = ("average", "subsample")


def reduce_to_25hz(hidden: np.ndarray, mode: str) -> np.ndarray:
    """``(frames, dim)`` at 50 Hz -> ``(ceil(frames / 2), dim)`` vectors for the ``"average"`` mode,
    or the even frames for ``"subsample"``."""
    if mode not in FRAME_REDUCTIONS:
        raise ValueError(f"frame_reduction must be one of {FRAME_REDUCTIONS}, got {mode!r}")
    if mode == "subsample":
        return hidden[::2]
    num_pairs = math.ceil(len(hidden) / 2)
    padded = np.concatenate([hidden, hidden[-1:]]) if len(hidden) % 2 else hidden
    return padded.reshape(num_pairs, 2, hidden.shape[1]).mean(axis=1)


class HubertUnitExtractor:
    """A local HuBERT checkpoint + centroids; maps audio to 25 Hz unit ids."""

    def __init__(self, checkpoint_dir: str | Path, centroids_path: str | Path, layer: int = 6,
                 frame_reduction: str = "average", device: str = "cpu") -> None:
        """``layer`` indexes ``hidden_states`` (0 = the CNN features after projection, ``L`` =
        output of transformer layer ``L``); 6 is the usual choice for HuBERT base units."""
        try:
            import torch
            from transformers import HubertModel
        except ImportError as error:
            raise ImportError("HuBERT units need `pip install transformers`") from error
        if frame_reduction not in FRAME_REDUCTIONS:
            raise ValueError(f"frame_reduction must be one of {FRAME_REDUCTIONS}")
        self._torch = torch
        self.model = HubertModel.from_pretrained(str(checkpoint_dir), local_files_only=True)
        self.model.eval().to(device)
        self.device = device
        num_layers = self.model.config.num_hidden_layers
        if not 0 <= layer <= num_layers:
            raise ValueError(f"layer {layer} outside 0..{num_layers} of this checkpoint")
        self.layer = layer
        self.frame_reduction = frame_reduction
        self.centroids = np.load(centroids_path).astype(np.float32)
        if self.centroids.ndim != 2 or self.centroids.shape[1] != self.model.config.hidden_size:
            raise ValueError(f"centroids of shape {self.centroids.shape} do not match hidden size "
                             f"{self.model.config.hidden_size}")
        self._centroid_norms = (self.centroids**2).sum(axis=1)

    @property
    def num_units(self) -> int:
        return len(self.centroids)

    def hidden_states(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        """``(frames, hidden_size)`` at 50 Hz from the chosen layer."""
        audio = resample(np.asarray(waveform, dtype=np.float32), sample_rate, SAMPLE_RATE)
        with self._torch.inference_mode():
            inputs = self._torch.from_numpy(audio)[None].to(self.device)
            outputs = self.model(inputs, output_hidden_states=True)
        return outputs.hidden_states[self.layer][0].float().cpu().numpy()

    def transform(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        """Unit ids (int32) at 25 Hz for one utterance."""
        vectors = reduce_to_25hz(self.hidden_states(waveform, sample_rate), self.frame_reduction)
        distances = self._centroid_norms[None, :] - 2.0 * vectors @ self.centroids.T
        return distances.argmin(axis=1).astype(np.int32)
