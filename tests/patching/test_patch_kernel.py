"""The C++ kernel against the numpy reference, and the properties every patching must have."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from patching_samples import LAYOUT, batches, configs, hand_sample

from megatron_lst.patching import PatchingConfig, compute_patches
from megatron_lst.patching.reference import reference_patch_batch

SEGMENT_FIELDS = ("segment_ids", "is_silence", "document_ids")


def run_both(batch: dict, config: PatchingConfig, step: int = 0, sample_ids=None):
    kernel = compute_patches(
        batch["tokens"],
        batch["is_speech"],
        config,
        LAYOUT,
        **{field: batch[field] for field in SEGMENT_FIELDS},
        step=step,
        sample_ids=sample_ids,
    )
    reference = reference_patch_batch(
        batch["tokens"],
        batch["is_speech"],
        config,
        LAYOUT,
        **{field: batch[field] for field in SEGMENT_FIELDS},
        step=step,
        sample_ids=sample_ids,
    )
    return kernel, reference


@settings(max_examples=300, deadline=None)
@given(batch=batches(), config=configs(), step=st.integers(0, 50))
def test_kernel_matches_reference(batch: dict, config: PatchingConfig, step: int) -> None:
    kernel, (lengths, starts, counts, aligned) = run_both(batch, config, step)
    np.testing.assert_array_equal(kernel.aligned, aligned)
    np.testing.assert_array_equal(kernel.num_patches, counts)
    np.testing.assert_array_equal(kernel.patch_lengths, lengths)
    np.testing.assert_array_equal(kernel.patch_starts, starts)


@settings(max_examples=200, deadline=None)
@given(batch=batches(), config=configs(), step=st.integers(0, 50))
def test_patching_properties(batch: dict, config: PatchingConfig, step: int) -> None:
    result = compute_patches(
        batch["tokens"], batch["is_speech"], config, LAYOUT, **{f: batch[f] for f in SEGMENT_FIELDS}, step=step
    )
    num_rows, seq_len = batch["tokens"].shape
    for b in range(num_rows):
        count = int(result.num_patches[b])
        lengths = result.patch_lengths[b, :count]
        starts = result.patch_starts[b, :count]
        assert (lengths > 0).all() and (result.patch_lengths[b, count:] == 0).all()
        assert lengths.sum() == seq_len
        assert lengths[0] == 1, "the first patch is BOS alone"
        np.testing.assert_array_equal(starts, np.cumsum(lengths) - lengths)
        for start, length in zip(starts.tolist(), lengths.tolist()):
            tokens = batch["tokens"][b, start : start + length]
            speech = batch["is_speech"][b, start : start + length]
            documents = batch["document_ids"][b, start : start + length]
            segments = batch["segment_ids"][b, start : start + length]
            assert (documents == documents[0]).all(), "a patch crosses a document boundary"
            if length == 1:
                continue
            folded = config.folds_marker(bool(result.aligned[b])) and tokens[0] == LAYOUT.speech_marker_id
            body = speech[1:] if folded else speech
            # causal boundaries: the non-speech token that ends an open static patch is its last token
            closed_by_next = config.patch_boundary == "causal" and not body[-1]
            units = body[:-1] if closed_by_next else body
            assert units.all(), "a text token or marker is inside a multi-token patch"
            if closed_by_next:
                assert not result.aligned[b] and len(units) < config.patch_size, "only a short open patch takes the next token"
            if config.max_patch_length is not None:
                assert length <= config.max_patch_length
            unit_count = len(units)
            if not result.aligned[b]:
                assert unit_count <= config.patch_size
            elif config.silence_mode == "sil_sep":
                unit_segments = segments[1:] if folded else segments
                assert (unit_segments == unit_segments[0]).all(), "sil_sep patch spans two segments"


@settings(max_examples=50, deadline=None)
@given(batch=batches(max_rows=1), config=configs())
def test_training_convention_next_token(batch: dict, config: PatchingConfig) -> None:
    """Patching the N+1 tokens of a training sample: BOS alone first, lengths sum to N+1."""
    result = compute_patches(batch["tokens"][0], batch["is_speech"][0], config, LAYOUT,
                             **{f: batch[f][0] for f in SEGMENT_FIELDS})
    assert result.patch_lengths.ndim == 1
    assert result.patch_lengths[0] == 1
    assert result.patch_lengths.sum() == batch["tokens"].shape[1]


SPEC = "B T t t S w3 s2 w6 T t E P P"


@pytest.mark.parametrize(
    "config, expected",
    [
        (PatchingConfig(fold_speech_marker="never"), [1, 1, 1, 1, 1, 4, 4, 3, 1, 1, 1, 1, 1]),
        (PatchingConfig(fold_speech_marker="always"), [1, 1, 1, 1, 5, 4, 3, 1, 1, 1, 1, 1]),
        (PatchingConfig(fold_speech_marker="never", patch_size=5, max_patch_length=3), [1, 1, 1, 1, 1, 3, 2, 3, 2, 1, 1, 1, 1, 1, 1]),
        (PatchingConfig(strategy="aligned"), [1, 1, 1, 1, 1, 3, 2, 6, 1, 1, 1, 1, 1]),
        (PatchingConfig(strategy="aligned", silence_mode="sil_merged"), [1, 1, 1, 1, 1, 5, 6, 1, 1, 1, 1, 1]),
        (PatchingConfig(strategy="aligned", fold_speech_marker="always"), [1, 1, 1, 1, 4, 2, 6, 1, 1, 1, 1, 1]),
        (PatchingConfig(strategy="aligned", max_patch_length=4), [1, 1, 1, 1, 1, 3, 2, 4, 2, 1, 1, 1, 1, 1]),
        # causal: the short last run (3 units) takes the <t> that ends the span
        (PatchingConfig(fold_speech_marker="never", patch_boundary="causal"), [1, 1, 1, 1, 1, 4, 4, 4, 1, 1, 1, 1]),
        (PatchingConfig(patch_boundary="causal", fold_speech_marker="always"), [1, 1, 1, 1, 5, 4, 4, 1, 1, 1, 1]),
        # 11 units at p=5: 5, 5, 1+<t> = 2, then the cap of 3 splits each 5 into 3 + 2
        (PatchingConfig(fold_speech_marker="never", patch_size=5, max_patch_length=3, patch_boundary="causal"),
         [1, 1, 1, 1, 1, 3, 2, 3, 2, 2, 1, 1, 1, 1]),
        (PatchingConfig(strategy="aligned", patch_boundary="causal"), [1, 1, 1, 1, 1, 3, 2, 6, 1, 1, 1, 1, 1]),
    ],
)
def test_hand_computed_patches(config: PatchingConfig, expected: list) -> None:
    batch = hand_sample(SPEC)
    kernel, reference = run_both(batch, config)
    assert kernel.patch_lengths[0].tolist() == expected
    assert reference[0][0].tolist() == expected
    assert kernel.patch_starts[0].tolist() == np.concatenate([[0], np.cumsum(expected)[:-1]]).tolist()


@pytest.mark.parametrize(
    "aligned_probability, expected",
    [(0.0, [1, 1, 1, 1, 5, 4, 3, 1, 1, 1, 1, 1]), (1.0, [1, 1, 1, 1, 1, 3, 2, 6, 1, 1, 1, 1, 1])],
)
def test_default_folds_the_marker_in_static_rows_only(aligned_probability: float, expected: list) -> None:
    """The reference code's rule, per row of a mixed batch: <s> joins a static row's first speech
    patch and stays a patch of its own in an aligned row."""
    config = PatchingConfig(strategy="mixed", mixed_aligned_probability=aligned_probability)
    kernel, reference = run_both(hand_sample(SPEC), config)
    assert kernel.patch_lengths[0].tolist() == expected
    assert reference[0][0].tolist() == expected


def test_fold_mode_reads_old_switches_and_refuses_unknown_modes() -> None:
    assert PatchingConfig(fold_speech_marker=True).fold_speech_marker == "always"
    assert PatchingConfig(fold_speech_marker=False).fold_speech_marker == "never"
    with pytest.raises(ValueError, match="fold_speech_marker"):
        PatchingConfig(fold_speech_marker="sometimes")


@pytest.mark.parametrize(
    "spec, silence_mode, expected",
    [
        ("B S s2 w3 s1 w2 E", "sil_merged", [1, 1, 6, 2, 1]),  # leading silence joins the first word
        ("B S s2 s3 E", "sil_merged", [1, 1, 5, 1]),  # silence only: one patch
        ("B S w2 w3 | w4 E", "sil_sep", [1, 1, 2, 3, 4, 1]),  # document boundary splits the span
    ],
)
def test_silence_and_documents(spec: str, silence_mode: str, expected: list) -> None:
    config = PatchingConfig(strategy="aligned", silence_mode=silence_mode)
    kernel, reference = run_both(hand_sample(spec), config)
    assert kernel.patch_lengths[0].tolist() == expected
    assert reference[0][0].tolist() == expected


def test_static_document_boundary_and_marker_not_folded_across_documents() -> None:
    batch = hand_sample("B S w3 | w3 S | w2")
    kernel, _ = run_both(batch, PatchingConfig(patch_size=4, fold_speech_marker="always"))
    assert kernel.patch_lengths[0].tolist() == [1, 4, 3, 1, 2]


def test_torch_in_torch_out_and_padding_width() -> None:
    batch = hand_sample(SPEC)
    tensors = {field: torch.from_numpy(array) for field, array in batch.items()}
    result = compute_patches(tensors["tokens"], tensors["is_speech"], PatchingConfig(), LAYOUT, max_num_patches=16)
    assert isinstance(result.patch_lengths, torch.Tensor) and result.patch_lengths.dtype == torch.int64
    assert result.patch_lengths.shape == (1, 16)
    assert result.patch_lengths[0, 13:].tolist() == [0, 0, 0]
    seq_len = batch["tokens"].shape[1]
    assert result.patch_starts[0, 13:].tolist() == [seq_len] * 3, "padded slots start at the row total"
    with pytest.raises(ValueError, match="max_num_patches"):
        compute_patches(tensors["tokens"], tensors["is_speech"], PatchingConfig(), LAYOUT, max_num_patches=4)


def test_static_needs_no_segments_but_aligned_does() -> None:
    batch = hand_sample(SPEC)
    static = compute_patches(batch["tokens"], batch["is_speech"], PatchingConfig(), LAYOUT)
    assert static.patch_lengths.sum() == batch["tokens"].size
    with pytest.raises(ValueError, match="segment_ids"):
        compute_patches(batch["tokens"], batch["is_speech"], PatchingConfig(strategy="aligned"), LAYOUT)


@pytest.mark.parametrize(
    "spec, config, expected",
    [
        # a span that fills its last patch leaves nothing open: <t> stays a patch of its own
        ("B S w4 w4 T t E", PatchingConfig(fold_speech_marker="never", patch_boundary="causal"), [1, 1, 4, 4, 1, 1, 1]),
        ("B S w3 E P P", PatchingConfig(fold_speech_marker="never", patch_boundary="causal"), [1, 1, 4, 1, 1]),  # EOS ends the run
        # a folded <s> with no unit after it waits for the token that decides it
        ("B S T t E", PatchingConfig(fold_speech_marker="always", patch_boundary="causal"), [1, 2, 1, 1]),
        ("B S T t E", PatchingConfig(fold_speech_marker="always"), [1, 1, 1, 1, 1]),
        # an open run never takes a token of the next document, nor one past the row's end
        ("B S w3 | w3 S | w2", PatchingConfig(fold_speech_marker="always", patch_boundary="causal"), [1, 4, 4, 2]),
        ("B S w3 | w3 S | w2", PatchingConfig(fold_speech_marker="always"), [1, 4, 3, 1, 2]),
    ],
)
def test_causal_boundaries_by_hand(spec: str, config: PatchingConfig, expected: list) -> None:
    kernel, reference = run_both(hand_sample(spec), config)
    assert kernel.patch_lengths[0].tolist() == expected
    assert reference[0][0].tolist() == expected


def boundaries_up_to_flipped_token(batch: dict, config: PatchingConfig, cut: int, next_is_unit: bool) -> set:
    """Patch ends <= ``cut`` of the row's first ``cut`` tokens followed by one more token at ``cut``
    (a unit, or ``<t>``) in the same document: what position ``cut - 1``'s decoder may see."""
    tokens = np.append(batch["tokens"][0, :cut], LAYOUT.unit_offset if next_is_unit else LAYOUT.text_marker_id)
    documents = np.append(batch["document_ids"][0, :cut], batch["document_ids"][0, cut - 1])
    lengths = compute_patches(tokens, LAYOUT.is_unit(tokens), config, LAYOUT, document_ids=documents).patch_lengths
    return {end for end in np.cumsum(lengths).tolist() if end <= cut}


@settings(max_examples=100, deadline=None)
@given(batch=batches(max_rows=1), config=configs(strategies=("static",)), data=st.data())
def test_causal_boundaries_ignore_the_next_token(batch: dict, config: PatchingConfig, data) -> None:
    """Under causal boundaries whether a patch ends at position c never depends on token c."""
    config = PatchingConfig(patch_size=config.patch_size, max_patch_length=config.max_patch_length,
                            fold_speech_marker=config.fold_speech_marker, patch_boundary="causal")
    cut = data.draw(st.integers(1, batch["tokens"].shape[1]))
    assert boundaries_up_to_flipped_token(batch, config, cut, True) == \
        boundaries_up_to_flipped_token(batch, config, cut, False)


def test_paper_boundaries_look_one_token_ahead() -> None:
    """The look-ahead the causal option removes: B <s> u u | next; under paper boundaries the run
    [u u] ends at position 4 only when token 4 is not a unit."""
    batch = hand_sample("B S w2 E")
    paper = PatchingConfig(fold_speech_marker="never")
    causal = PatchingConfig(fold_speech_marker="never", patch_boundary="causal")
    assert boundaries_up_to_flipped_token(batch, paper, 4, True) == {1, 2}
    assert boundaries_up_to_flipped_token(batch, paper, 4, False) == {1, 2, 4}
    assert boundaries_up_to_flipped_token(batch, causal, 4, True) == {1, 2}
    assert boundaries_up_to_flipped_token(batch, causal, 4, False) == {1, 2}
