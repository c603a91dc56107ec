"""Bad input is refused with a clear ValueError, by the kernel and by the reference alike."""

from __future__ import annotations

import numpy as np
import pytest
from patching_samples import LAYOUT, hand_sample

from megatron_lst import _patching
from megatron_lst.patching import PatchingConfig, compute_patches, segment_metadata_from_spans
from megatron_lst.patching.reference import reference_patch_batch

ALIGNED = PatchingConfig(strategy="aligned")


def broken(spec: str, field: str, position: int, value) -> dict:
    batch = hand_sample(spec)
    batch[field] = batch[field].copy()
    batch[field][0, position] = value
    return batch


CASES = {
    "unit id above the vocabulary": (broken("B S w3", "tokens", 2, LAYOUT.vocab_size), "outside the joint vocabulary"),
    "negative token id": (broken("B S w3", "tokens", 2, -1), "outside the joint vocabulary"),
    "is_speech on a text token": (broken("B S w3", "tokens", 2, 5), "unit id out of range"),
    "unit id without is_speech": (broken("B S w3 t", "tokens", 5, LAYOUT.unit_offset), "is_speech is False"),
    "no BOS": (broken("B S w3", "tokens", 0, 3), "BOS"),
    "overlapping segments": (broken("B S w2 w2", "segment_ids", 5, 0), "overlap"),
    "segment resumes after text": (broken("B S w2 t w2", "segment_ids", 5, 0), "contiguous"),
    "speech unit without segment": (broken("B S w2", "segment_ids", 2, -1), "no segment id"),
    "segment id on text": (broken("B t S w2", "segment_ids", 1, 4), "expected -1"),
    "silence flag on text": (broken("B t S w2", "is_silence", 1, True), "non-speech"),
    "silence changes inside a segment": (broken("B S w3", "is_silence", 3, True), "is_silence changes"),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_metadata_is_refused(name: str) -> None:
    batch, message = CASES[name]
    fields = {field: batch[field] for field in ("segment_ids", "is_silence", "document_ids")}
    with pytest.raises(ValueError, match=message):
        compute_patches(batch["tokens"], batch["is_speech"], ALIGNED, LAYOUT, **fields)
    with pytest.raises(ValueError):
        reference_patch_batch(batch["tokens"], batch["is_speech"], ALIGNED, LAYOUT, **fields)


def test_error_names_row_and_position() -> None:
    good, (bad, _) = hand_sample("B S w3"), CASES["is_speech on a text token"]
    tokens = np.concatenate([good["tokens"], bad["tokens"]])
    is_speech = np.concatenate([good["is_speech"], bad["is_speech"]])
    with pytest.raises(ValueError, match="row 1, position 2"):
        compute_patches(tokens, is_speech, PatchingConfig(), LAYOUT)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"patch_size": 0}, "patch_size"),
        ({"tau1": 10, "tau2": 5}, "tau1 <= tau2"),
        ({"max_patch_length": 0}, "max_patch_length"),
        ({"strategy": "entropy"}, "strategy"),
        ({"silence_mode": "sil_dropped"}, "silence_mode"),
        ({"mixed_aligned_probability": 1.5}, "mixed_aligned_probability"),
    ],
)
def test_bad_config_is_refused(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PatchingConfig(**settings)


def test_kernel_refuses_bad_options_on_its_own() -> None:
    batch = hand_sample("B S w3")
    arrays = [batch[f] for f in ("tokens", "is_speech", "segment_ids", "is_silence", "document_ids")]
    vocab = (LAYOUT.bos_id, LAYOUT.speech_marker_id, LAYOUT.unit_offset, LAYOUT.vocab_size)

    def call(patch_size: int, tau1: float, tau2: float) -> None:
        options = (0, patch_size, 0, 0, False, tau1, tau2, 0.5, 0, 0, -1)
        _patching.patch_batch(*arrays, np.arange(1), True, *vocab, *options)

    call(4, 0.0, 0.0)
    with pytest.raises(ValueError, match="patch_size"):
        call(0, 0.0, 0.0)
    with pytest.raises(ValueError, match="tau1 <= tau2"):
        call(4, 2.0, 1.0)


def test_shape_mismatch_is_refused() -> None:
    batch = hand_sample("B S w3")
    with pytest.raises(ValueError, match="is_speech has shape"):
        compute_patches(batch["tokens"], batch["is_speech"][:, :2], PatchingConfig(), LAYOUT)


@pytest.mark.parametrize(
    "spans, message",
    [
        ([[2, 2]], "zero-length"),
        ([[3, 1]], "zero-length"),
        ([[0, 11]], "exceeds the sequence"),
        ([[-1, 2]], "exceeds the sequence"),
        ([[1, 4], [3, 5]], "overlaps"),
        ([[5, 6], [1, 2]], "overlaps"),
    ],
)
def test_bad_alignment_spans(spans: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        segment_metadata_from_spans(spans, 10)


def test_alignment_spans_to_metadata() -> None:
    segment_ids, is_silence = segment_metadata_from_spans([[2, 4], [4, 5], [5, 8]], 9, [False, True, False], 10)
    assert segment_ids.tolist() == [-1, -1, 10, 10, 11, 12, 12, 12, -1]
    assert is_silence.tolist() == [False] * 4 + [True] + [False] * 4
