"""Packing bounds, the sample schema, blending through megatron-core, and exact resume."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from megatron_lst.data.blending import blend_from_data_path, build_lst_datasets
from megatron_lst.data.datasets import LSTDatasetConfig
from megatron_lst.data.packing import PackingConfig, count_global_positions, plan_packing
from megatron_lst.data.sampler import collate_packed
from megatron_lst.data.synthetic import random_aligned_records, random_sentence
from megatron_lst.tokenizer import JointTokenizer
from megatron_lst.training.sampler import PretrainingBatchSampler

TOOL = Path(__file__).resolve().parents[2] / "tools" / "preprocess_data.py"


@pytest.fixture(scope="module")
def corpora(tmp_path_factory, sentencepiece_model):
    spec = importlib.util.spec_from_file_location("preprocess_data_for_datasets", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    root = tmp_path_factory.mktemp("corpora")
    speech = root / "speech.jsonl"
    speech.write_text("".join(json.dumps(r) + "\n" for r in random_aligned_records(120, seed=11)))
    text = root / "text.jsonl"
    rng = __import__("random").Random(2)
    text.write_text("".join(json.dumps({"text": random_sentence(rng, rng.randint(1, 60))}) + "\n" for _ in range(200)))
    for source, prefix in ((speech, "sp"), (text, "tx")):
        assert tool.main(["--input", str(source), "--output-prefix", str(root / prefix),
                          "--tokenizer-model", sentencepiece_model, "--append-eod", "--quiet"]) == 0
    return str(root / "sp_speech_document"), str(root / "tx_text_document")


def make_config(tokenizer: JointTokenizer, blend, seq_length=64, **kwargs) -> LSTDatasetConfig:
    return LSTDatasetConfig(random_seed=5, sequence_length=seq_length, blend=blend, split="1,0,0",
                            vocab=tokenizer.vocab, max_tokens=4 * seq_length, **kwargs)


def test_count_global_positions_static_patches():
    is_speech = np.array([0, 1, 1, 1, 1, 1, 0, 1, 1, 0], bool)  # runs of 5 and 2
    assert count_global_positions({"is_speech": is_speech}, 4) == 3 + 2 + 1
    assert count_global_positions({"is_speech": is_speech}, 1) == len(is_speech)


def test_plan_respects_both_bounds_and_splits_long_documents():
    rng = np.random.default_rng(0)
    masks = [rng.random(int(rng.integers(3, 400))) < 0.7 for _ in range(200)]
    config = PackingConfig(seq_length=50, max_tokens=120, patch_size=4)
    plan = plan_packing(masks, config)
    covered = {d: 0 for d in range(len(masks))}
    for sample in range(len(plan)):
        pieces = plan.pieces(sample)
        tokens = sum(end - start for _, start, end in pieces)
        positions = sum(count_global_positions({"is_speech": masks[d][s:e]}, 4) for d, s, e in pieces)
        assert tokens <= 120 and positions <= 50
        for document, start, end in pieces:
            assert start == covered[document]
            covered[document] = end
    assert all(covered[d] == len(mask) for d, mask in enumerate(masks))
    assert 0.0 <= plan.padding_fraction < 0.5


def test_samples_follow_the_schema(corpora, sentencepiece_model):
    tokenizer = JointTokenizer.from_file(sentencepiece_model)
    train, _, _ = build_lst_datasets(make_config(tokenizer, blend_from_data_path([corpora[0]])), [40, 0, 0])
    assert len(train) == 40
    for index in range(40):
        sample = train[index]
        tokens, speech = sample["tokens"], sample["is_speech"]
        assert speech.tolist() == tokenizer.vocab.is_unit(tokens).tolist()
        assert np.all(np.diff(sample["document_ids"]) >= 0) and sample["document_ids"][0] == 0
        assert np.all(np.diff(sample["segment_ids"][speech]) >= 0) and np.all(sample["segment_ids"][~speech] == -1)
        assert not np.any(sample["is_silence"] & ~speech)
        assert sample["num_positions"] <= 64 and len(tokens) <= 256
        starts = np.flatnonzero(np.diff(sample["document_ids"]) > 0) + 1
        assert np.all(tokens[starts] == tokenizer.bos_id)
        assert tokens[0] == tokenizer.bos_id  # a continued document reopens with BOS too


def test_blend_follows_weights_and_resume_is_exact(corpora, sentencepiece_model):
    tokenizer = JointTokenizer.from_file(sentencepiece_model)
    blend = blend_from_data_path(["0.33", corpora[0], "0.67", corpora[1]])
    train, _, _ = build_lst_datasets(make_config(tokenizer, blend), [300, 0, 0])
    dataset_ids = np.array([train[i]["dataset_id"] for i in range(300)])
    assert abs((dataset_ids == 0).mean() - 0.33) < 0.02
    text_sample = train[int(np.flatnonzero(dataset_ids == 1)[0])]
    assert not text_sample["is_speech"].any()

    def batches(dataset, consumed_samples, count):
        sampler = iter(PretrainingBatchSampler(len(dataset), consumed_samples, 4, 0, 1, 4))
        return [collate_packed([dataset[key.index] for key in next(sampler)], tokenizer.pad_id, pad_to=256)
                for _ in range(count)]

    uninterrupted = batches(train, 0, 10)
    rebuilt, _, _ = build_lst_datasets(make_config(tokenizer, blend), [300, 0, 0])
    resumed = batches(rebuilt, 6 * 4, 4)  # a resumed run: a rebuilt dataset, six steps of 4 consumed
    for expected, got in zip(uninterrupted[6:], resumed):
        for name in expected:
            assert np.array_equal(expected[name].numpy(), got[name].numpy()), name


def test_epochs_reshuffle_and_reinterleave(corpora, sentencepiece_model):
    tokenizer = JointTokenizer.from_file(sentencepiece_model)
    train, _, _ = build_lst_datasets(make_config(tokenizer, blend_from_data_path([corpora[0]])), [400, 0, 0])
    first_epoch = int(train.epoch_sizes[0])
    assert first_epoch < 400
    assert not np.array_equal(train[0]["tokens"], train[first_epoch]["tokens"])


def test_packing_counts_agree_with_the_patching_kernel(corpora, sentencepiece_model):
    """Packing budgets global positions with its own vectorised count; the model patches with the
    C++ kernel. They must agree, or samples would overflow --seq-length in the global model."""
    from megatron_lst.patching import PatchingConfig, compute_patches

    tokenizer = JointTokenizer.from_file(sentencepiece_model)
    blend = blend_from_data_path(["0.5", corpora[0], "0.5", corpora[1]])
    for patch_size in (1, 4, 6):
        train, _, _ = build_lst_datasets(make_config(tokenizer, blend, patch_size=patch_size), [30, 0, 0])
        for index in range(30):
            sample = train[index]
            unfolded, folded = (
                int(compute_patches(sample["tokens"], sample["is_speech"],
                                    PatchingConfig(patch_size=patch_size, fold_speech_marker=fold),
                                    tokenizer.vocab, document_ids=sample["document_ids"]).num_patches)
                for fold in ("never", "static"))
            assert unfolded == count_global_positions(sample, patch_size) == sample["num_positions"]
            # folding <s> into its span's first patch only merges patches: the budget is an upper bound
            markers_before_units = int(((sample["tokens"][:-1] == tokenizer.vocab.speech_marker_id)
                                        & sample["is_speech"][1:]
                                        & (sample["document_ids"][:-1] == sample["document_ids"][1:])).sum())
            assert folded == unfolded - markers_before_units
