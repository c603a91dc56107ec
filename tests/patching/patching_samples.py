"""Hypothesis strategies for random interleaved speech-text samples that follow the schema."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from megatron_lst.patching import PatchingConfig
from megatron_lst.patching.config import FOLD_MODES
from megatron_lst.tokenizer import VocabLayout

LAYOUT = VocabLayout(text_vocab_size=40, num_units=12, spare_units=1)
FIELDS = ("tokens", "is_speech", "segment_ids", "is_silence", "document_ids")


@st.composite
def sample_rows(draw, max_documents: int = 3, max_blocks: int = 5) -> dict:
    """One sample as lists per field: documents of text blocks and speech spans.

    Later documents sometimes open straight with speech (no BOS) so that speech runs meet
    document boundaries; consecutive speech blocks without a marker merge into one span.
    """
    row = {field: [] for field in FIELDS}
    next_segment = 0

    def push(token: int, document: int, speech: bool = False, segment: int = -1, silence: bool = False) -> None:
        for field, value in zip(FIELDS, (token, speech, segment, silence, document)):
            row[field].append(value)

    for document in range(draw(st.integers(1, max_documents))):
        if document == 0 or draw(st.booleans()):
            push(LAYOUT.bos_id, document)
        for _ in range(draw(st.integers(0, max_blocks))):
            if draw(st.booleans()):
                if draw(st.integers(0, 3)):
                    push(LAYOUT.text_marker_id, document)
                for token in draw(st.lists(st.integers(0, LAYOUT.text_vocab_size - 1), min_size=1, max_size=4)):
                    push(token, document)
                continue
            if draw(st.integers(0, 3)):
                push(LAYOUT.speech_marker_id, document)
            segments = draw(st.lists(st.tuples(st.integers(1, 9), st.booleans()), min_size=1, max_size=5))
            for length, silence in segments:
                for _ in range(length):
                    unit = draw(st.integers(0, LAYOUT.num_units + LAYOUT.spare_units - 1))
                    push(LAYOUT.unit_offset + unit, document, True, next_segment, silence)
                next_segment += draw(st.integers(1, 2))
        if draw(st.booleans()):
            push(LAYOUT.eos_id, document)
    return row


@st.composite
def batches(draw, max_rows: int = 4) -> dict:
    """A [B, N] batch of samples right-padded with PAD (is_speech False, segment -1)."""
    rows = draw(st.lists(sample_rows(), min_size=1, max_size=max_rows))
    width = max(len(row["tokens"]) for row in rows) + draw(st.integers(0, 3))
    padding = {"tokens": LAYOUT.pad_id, "is_speech": False, "segment_ids": -1, "is_silence": False}
    batch = {}
    for field, dtype in zip(FIELDS, (np.int64, bool, np.int32, bool, np.int32)):
        padded = []
        for row in rows:
            fill = padding.get(field, row["document_ids"][-1])
            padded.append(row[field] + [fill] * (width - len(row[field])))
        batch[field] = np.array(padded, dtype=dtype)
    return batch


@st.composite
def configs(draw, strategies=("static", "aligned", "mixed", "curriculum")) -> PatchingConfig:
    tau1 = draw(st.integers(0, 20))
    return PatchingConfig(
        strategy=draw(st.sampled_from(strategies)),
        patch_size=draw(st.integers(1, 6)),
        silence_mode=draw(st.sampled_from(("sil_sep", "sil_merged"))),
        max_patch_length=draw(st.one_of(st.none(), st.integers(1, 10))),
        fold_speech_marker=draw(st.sampled_from(FOLD_MODES)),
        patch_boundary=draw(st.sampled_from(("paper", "causal"))),
        tau1=tau1,
        tau2=tau1 + draw(st.integers(0, 20)),
        seed=draw(st.integers(0, 2**64 - 1)),
        mixed_aligned_probability=draw(st.floats(0.0, 1.0)),
    )


def hand_sample(spec: str) -> dict:
    """Build a one-row batch from a compact spec: B bos, E eos, T <t>, S <s>, t text,
    w<k>/s<k> a word/silence segment of k units, P pad, | next document (no token)."""
    tokens, speech, segments, silence, documents = [], [], [], [], []
    document, segment = 0, 0
    for item in spec.split():
        if item == "|":
            document += 1
            continue
        if item[0] in "ws":
            count = int(item[1:])
            tokens += [LAYOUT.unit_offset] * count
            speech += [True] * count
            segments += [segment] * count
            silence += [item[0] == "s"] * count
            documents += [document] * count
            segment += 1
            continue
        ids = {"B": LAYOUT.bos_id, "E": LAYOUT.eos_id, "T": LAYOUT.text_marker_id,
               "S": LAYOUT.speech_marker_id, "t": 3, "P": LAYOUT.pad_id}
        tokens.append(ids[item])
        speech.append(False)
        segments.append(-1)
        silence.append(False)
        documents.append(document)
    return {
        "tokens": np.array([tokens], np.int64),
        "is_speech": np.array([speech]),
        "segment_ids": np.array([segments], np.int32),
        "is_silence": np.array([silence]),
        "document_ids": np.array([documents], np.int32),
    }
