"""Packing plans built once, cached memory-mapped, and equal to the document-by-document reference.

The oracle here is the implementation the cache replaced, written out independently of the
dataset: shuffle an epoch, interleave every document, pack with ``plan_packing``, assemble.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import pickle
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_lst.data import plan_cache, stream_shapes
from megatron_lst.data.blending import blend_from_data_path, build_lst_datasets
from megatron_lst.data.datasets import (
    LSTDatasetConfig,
    PackedLSTDataset,
    text_document_stream,
)
from megatron_lst.data.interleave import (
    ASR,
    INTERLEAVED,
    MODES,
    InterleaveConfig,
    interleave_document,
)
from megatron_lst.data.packing import (
    PackingConfig,
    count_global_positions,
    pack_documents,
    patch_start_mask,
    plan_packing,
)
from megatron_lst.data.speech_documents import SpeechTextDocuments
from megatron_lst.data.synthetic import random_aligned_records, random_sentence
from megatron_lst.tokenizer import JointTokenizer

TOOL = Path(__file__).resolve().parents[2] / "tools" / "preprocess_data.py"
FIELDS = ("tokens", "is_speech", "segment_ids", "is_silence", "document_ids", "num_positions")


@pytest.fixture(scope="module")
def corpora(tmp_path_factory, sentencepiece_model) -> dict[str, str]:
    """Speech-text documents, and text documents with and without the preprocessor's EOD."""
    spec = importlib.util.spec_from_file_location("preprocess_data_for_plans", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    root = tmp_path_factory.mktemp("plan_corpora")
    (root / "speech.jsonl").write_text("".join(json.dumps(r) + "\n" for r in random_aligned_records(90, seed=4)))
    rng = random.Random(8)
    (root / "text.jsonl").write_text(
        "".join(json.dumps({"text": random_sentence(rng, rng.randint(1, 90))}) + "\n" for _ in range(150)))
    for source, prefix, extra in (("speech", "sp", []), ("text", "eod", ["--append-eod"]), ("text", "raw", [])):
        assert tool.main(["--input", str(root / f"{source}.jsonl"), "--output-prefix", str(root / prefix),
                          "--tokenizer-model", sentencepiece_model, "--quiet", *extra]) == 0
    return {"speech": str(root / "sp_speech_document"), "text_eod": str(root / "eod_text_document"),
            "text": str(root / "raw_text_document")}


@pytest.fixture(scope="module")
def tokenizer(sentencepiece_model) -> JointTokenizer:
    return JointTokenizer.from_file(sentencepiece_model)


def make_config(tokenizer, prefix: str, seq_length: int = 64, patch_size: int = 4, mode: str = INTERLEAVED,
                cache: Path | None = None, **interleave_options) -> LSTDatasetConfig:
    return LSTDatasetConfig(random_seed=5, sequence_length=seq_length, blend=blend_from_data_path([prefix]),
                            split="1,0,0", vocab=tokenizer.vocab, patch_size=patch_size,
                            max_tokens=seq_length * patch_size,
                            interleave=InterleaveConfig(mode=mode, seed=9, **interleave_options),
                            path_to_cache=str(cache) if cache else None)


def build(config: LSTDatasetConfig, samples: int) -> PackedLSTDataset:
    dataset = build_lst_datasets(config, [samples, 0, 0])[0]
    assert isinstance(dataset, PackedLSTDataset)
    return dataset


# ---------------------------------------------------------------------------- the reference
def reference_streams(dataset: PackedLSTDataset, order: np.ndarray, epoch: int) -> list:
    config = dataset.config
    if isinstance(dataset.dataset, SpeechTextDocuments):
        return [interleave_document(dataset.dataset[int(d)], config.vocab, config.interleave, epoch, int(d))
                for d in order]
    low = dataset.dataset
    streams = []
    for d in order.tolist():
        parts = [low[i] for i in range(int(low.document_indices[d]), int(low.document_indices[d + 1]))]
        streams.append(text_document_stream(np.concatenate(parts or [np.empty(0, np.int64)]), config.vocab,
                                            config.interleave.text_document_marker))
    return streams


def reference_samples(dataset: PackedLSTDataset, count: int) -> list[dict]:
    """The samples as the lazy document-by-document implementation produced them."""
    vocab, packing = dataset.config.vocab, dataset.config.packing
    samples: list[dict] = []
    epoch = 0
    while len(samples) < count:
        order = np.random.default_rng([dataset.config.random_seed, epoch]).permutation(
            np.asarray(dataset.indices, dtype=np.int64))
        streams = reference_streams(dataset, order, epoch)
        plan = plan_packing((stream.is_speech for stream in streams), packing)
        for local in range(len(plan)):
            columns = {name: [] for name in FIELDS[:-1]}
            next_segment = 0
            for number, (position, start, end) in enumerate(plan.pieces(local)):
                stream = streams[position]
                segment_ids = stream.segment_ids[start:end].copy()
                speech = segment_ids >= 0
                if speech.any():
                    segment_ids[speech] += next_segment - segment_ids[speech].min()
                    next_segment = int(segment_ids[speech].max()) + 1
                opening = 1 if start else 0
                for name, values, opener in (("tokens", stream.tokens[start:end], vocab.bos_id),
                                             ("is_speech", stream.is_speech[start:end], False),
                                             ("segment_ids", segment_ids, -1),
                                             ("is_silence", stream.is_silence[start:end], False)):
                    columns[name].append(np.concatenate([np.full(opening, opener, values.dtype), values]))
                columns["document_ids"].append(np.full(end - start + opening, number, np.int32))
            sample = {name: np.concatenate(parts) for name, parts in columns.items()}
            sample["num_positions"] = np.int64(count_global_positions(sample, packing.patch_size))
            samples.append(sample)
        epoch += 1
    return samples[:count]


def assert_same_sample(expected: dict, got: dict, where: str) -> None:
    assert set(got) == set(FIELDS), where
    for name in FIELDS:
        want, have = np.asarray(expected[name]), np.asarray(got[name])
        assert have.dtype == want.dtype and have.tobytes() == want.tobytes(), f"{where}: {name}"


# ---------------------------------------------------------------------------- tests
CASES = {  # corpus, interleaving mode, positions per sample, patch size, samples, interleaving options
    "speech-interleaved-3-epochs": ("speech", INTERLEAVED, 200, 4, 260, {}),
    "speech-cut-documents": ("speech", INTERLEAVED, 16, 6, 150, {}),
    "speech-asr-baseline": ("speech", ASR, 48, 1, 150, {}),
    "text-eod-3-epochs": ("text_eod", INTERLEAVED, 200, 4, 150, {}),
    "text-no-eod-baseline": ("text", INTERLEAVED, 33, 1, 150, {}),
    "speech-opening-uniform": ("speech", INTERLEAVED, 16, 4, 150, {"opening_speech_uniform": True}),
    "text-marked-cut-documents": ("text", INTERLEAVED, 20, 4, 150, {"text_document_marker": True}),
}


@pytest.mark.parametrize("case", CASES)
def test_cached_and_in_memory_samples_equal_the_reference(case, corpora, tokenizer, tmp_path):
    corpus, mode, seq_length, patch_size, count, options = CASES[case]
    config = make_config(tokenizer, corpora[corpus], seq_length, patch_size, mode, cache=tmp_path / "cache", **options)
    cached = build(config, count)
    in_memory = build(make_config(tokenizer, corpora[corpus], seq_length, patch_size, mode, **options), count)
    if case.endswith("3-epochs"):
        assert len(cached.epoch_sizes) >= 3
    assert isinstance(cached._plans.piece_documents, np.memmap)
    expected = reference_samples(cached, count)
    for index, want in enumerate(expected):
        for name, dataset in (("cached", cached), ("in memory", in_memory)):
            got = dataset[index]
            assert_same_sample(want, got, f"{case} {name} sample {index}")
            assert dataset.num_tokens(index) == len(want["tokens"])
            assert dataset.num_positions(index) == want["num_positions"]


def test_second_construction_loads_without_rebuilding(corpora, tokenizer, tmp_path, monkeypatch):
    builds = []
    original = PackedLSTDataset._build_plans

    def counting(self):
        builds.append(self.dataset_path)
        return original(self)

    monkeypatch.setattr(PackedLSTDataset, "_build_plans", counting)
    config = make_config(tokenizer, corpora["speech"], cache=tmp_path / "cache")
    first = build(config, 120)
    second = build(config, 120)
    assert builds == [corpora["speech"]]
    assert first.plan_build_seconds is not None and second.plan_build_seconds is None
    # DataLoader workers started with spawn get the folder, not the arrays, and memory-map it again
    assert second.__getstate__()["_plans"] is None
    revived = pickle.loads(pickle.dumps(second))
    assert isinstance(revived._plans.sample_offsets, np.memmap)
    for index in (0, 57, 119):
        assert_same_sample(first[index], second[index], f"sample {index}")
        assert_same_sample(first[index], revived[index], f"revived sample {index}")
    # another interleaving mode is another cache entry, never the interleaved one's plans
    build(make_config(tokenizer, corpora["speech"], mode="speech", cache=tmp_path / "cache"), 120)
    assert len(builds) == 2


def _damage(folder: Path, how: str) -> None:
    if how == "flipped byte":
        path = folder / "piece_ends.npy"
        data = bytearray(path.read_bytes())
        data[-3] ^= 0x5A
        path.write_bytes(bytes(data))
    elif how == "truncated file":
        path = folder / "sample_offsets.npy"
        path.write_bytes(path.read_bytes()[:-8])
    elif how == "no manifest":
        (folder / plan_cache.MANIFEST).unlink()
    elif how == "other corpus":
        manifest = json.loads((folder / plan_cache.MANIFEST).read_text())
        manifest["fingerprint"]["tokens"] += 1
        (folder / plan_cache.MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("how,reason", [("flipped byte", "piece_ends.npy.*CRC-32"),
                                        ("truncated file", "sample_offsets.npy.*bytes"),
                                        ("no manifest", "manifest.json.*never completed"),
                                        ("other corpus", "manifest.json.*built from a corpus")])
def test_damaged_cache_is_detected_and_rebuilt(how, reason, corpora, tokenizer, tmp_path, monkeypatch, caplog):
    config = make_config(tokenizer, corpora["text_eod"], cache=tmp_path / "cache")
    original = build(config, 100)
    folder = Path(original._plan_folder)
    expected = [original[index] for index in range(100)]
    _damage(folder, how)
    with pytest.raises(plan_cache.PlanCacheDamaged, match=reason):
        plan_cache.load(str(folder), original._fingerprint())
    builds = []
    build_plans = PackedLSTDataset._build_plans
    monkeypatch.setattr(PackedLSTDataset, "_build_plans", lambda self: builds.append(1) or build_plans(self))
    with caplog.at_level(logging.WARNING, logger="megatron_lst.data.datasets"):
        rebuilt = build(config, 100)
    assert builds == [1] and re.search(reason, caplog.text)
    for index, want in enumerate(expected):
        assert_same_sample(want, rebuilt[index], f"rebuilt sample {index}")
    plan_cache.load(str(folder), original._fingerprint())  # the replacement is sound
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temporary or damaged folders left


def test_only_rank_0_builds(corpora, tokenizer, tmp_path, monkeypatch):
    config = make_config(tokenizer, corpora["text"], cache=tmp_path / "cache")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 1)
    with pytest.raises(RuntimeError, match="rank 0 builds the packing plans"):
        PackedLSTDataset(*_dataset_args(config, 80))
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 0)
    built = PackedLSTDataset(*_dataset_args(config, 80))
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 3)
    loaded = PackedLSTDataset(*_dataset_args(config, 80))
    assert built.plan_build_seconds is not None and loaded.plan_build_seconds is None
    assert_same_sample(built[79], loaded[79], "sample 79")


def test_a_split_of_zero_samples_builds_no_epoch(corpora, tokenizer, tmp_path):
    for _ in range(2):  # built, then loaded
        empty = PackedLSTDataset(*_dataset_args(make_config(tokenizer, corpora["speech"], cache=tmp_path), 0))
        assert len(empty) == 0 and len(empty.epoch_sizes) == 0
        with pytest.raises(IndexError):
            empty.num_tokens(0)


def _dataset_args(config: LSTDatasetConfig, samples: int) -> tuple:
    from megatron.core.datasets.utils import Split

    prefix = config.blend[0][0]
    low = PackedLSTDataset.build_low_level_dataset(prefix, config)
    indices = np.arange(PackedLSTDataset.numel_low_level_dataset(low), dtype=np.int32)
    return low, prefix, indices, samples, Split.train, config


def test_reading_a_sample_does_no_corpus_wide_work(corpora, tokenizer, tmp_path, monkeypatch):
    dataset = build(make_config(tokenizer, corpora["speech"], cache=tmp_path / "cache"), 150)

    def forbidden(*args, **kwargs):
        raise AssertionError("O(corpus) work while reading a sample")

    monkeypatch.setattr(PackedLSTDataset, "document_order", forbidden)
    monkeypatch.setattr(PackedLSTDataset, "_build_plans", forbidden)
    monkeypatch.setattr("megatron_lst.data.datasets.stream_shapes", forbidden)
    for index in (0, 75, 149):
        dataset[index]
        dataset.num_tokens(index)
    with pytest.raises(IndexError):
        dataset[150]


@pytest.mark.parametrize("mode, options", [(mode, {}) for mode in MODES] + [
    (INTERLEAVED, {"opening_speech_uniform": True}),
    (INTERLEAVED, {"opening_speech_uniform": True, "min_opening_speech_words": 1, "max_opening_speech_words": 2}),
])
def test_stream_shapes_match_the_interleaver(mode, options, corpora, tokenizer):
    dataset = build(make_config(tokenizer, corpora["speech"], mode=mode, **options), 10)
    shapes = stream_shapes.stream_shapes(dataset.dataset, tokenizer.vocab, dataset.config.interleave, 4)
    for epoch in (0, 3):
        order = dataset.document_order(epoch)
        epoch_shapes = shapes.epoch(order, epoch)
        for position, stream in enumerate(reference_streams(dataset, order, epoch)):
            assert epoch_shapes.num_tokens[position] == len(stream.tokens)
            assert epoch_shapes.num_positions[position] == patch_start_mask(stream.is_speech, 4).sum()
            assert np.array_equal(epoch_shapes.speech_mask(position), stream.is_speech), (mode, epoch, position)


@pytest.mark.parametrize("corpus", ["text", "text_eod"])
@pytest.mark.parametrize("marker", [False, True])
def test_text_shapes_come_from_the_index(corpus, marker, corpora, tokenizer):
    dataset = build(make_config(tokenizer, corpora[corpus], text_document_marker=marker), 10)
    order = dataset.document_order(0)
    shapes = stream_shapes.stream_shapes(dataset.dataset, tokenizer.vocab, dataset.config.interleave, 4).epoch(order, 0)
    streams = reference_streams(dataset, order, 0)
    lengths = [len(stream.tokens) for stream in streams]
    assert shapes.num_tokens.tolist() == lengths == shapes.num_positions.tolist()
    assert all((stream.tokens[1] == tokenizer.vocab.text_marker_id) == (marker and len(stream.tokens) > 2)
               for stream in streams)


def test_parallel_span_drawing_equals_serial(corpora, tokenizer, monkeypatch):
    dataset = build(make_config(tokenizer, corpora["speech"]), 10)
    order = dataset.document_order(2)
    serial = stream_shapes.SpeechTextStreamShapes(dataset.dataset, dataset.config.interleave, 4, workers=1)
    parallel = stream_shapes.SpeechTextStreamShapes(dataset.dataset, dataset.config.interleave, 4, workers=2)
    monkeypatch.setattr(stream_shapes, "PARALLEL_MIN_DOCUMENTS", 1)
    for want, got in zip(serial.draw_spans(order, 2), parallel.draw_spans(order, 2)):
        assert np.array_equal(want, got)


@pytest.mark.parametrize("seq_length,max_tokens,patch_size",
                         [(50, 120, 4), (7, 40, 6), (300, 90, 3), (12, 12, 1), (20, 3, 4)])
def test_pack_documents_equals_plan_packing(seq_length, max_tokens, patch_size):
    rng = np.random.default_rng(seq_length)
    masks = []
    for _ in range(300):
        mask = rng.random(int(rng.integers(2, 500))) < rng.random()
        mask[0] = mask[-1] = False  # streams open with BOS and close with EOS
        masks.append(mask)
    config = PackingConfig(seq_length=seq_length, max_tokens=max_tokens, patch_size=patch_size)
    reference = plan_packing(masks, config)
    fast = pack_documents([len(m) for m in masks], [patch_start_mask(m, patch_size).sum() for m in masks],
                          masks.__getitem__, config)
    for name in ("piece_documents", "piece_starts", "piece_ends", "sample_offsets"):
        assert np.array_equal(getattr(fast, name), getattr(reference, name)), name
    assert fast.positions_used == reference.positions_used
    for sample in range(len(fast)):
        pieces = [np.concatenate([np.zeros(1 if s else 0, bool), masks[d][s:e]]) for d, s, e in fast.pieces(sample)]
        assembled = np.concatenate(pieces)
        assert fast.sample_num_tokens[sample] == len(assembled)
        assert fast.sample_num_positions[sample] == count_global_positions({"is_speech": assembled}, patch_size)


def _blend_config(model: str, prefixes: list[str], cache: str | None) -> LSTDatasetConfig:
    return LSTDatasetConfig(random_seed=5, sequence_length=64, blend=(prefixes, [0.4, 0.6]), split="1,0,0",
                            vocab=JointTokenizer.from_file(model).vocab, max_tokens=256, path_to_cache=cache)


def _two_rank_worker(rank: int, port: int, model: str, prefixes: list[str], cache: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        train = build_lst_datasets(_blend_config(model, prefixes, cache), [120, 0, 0])[0]
        torch.save({"built": [member.plan_build_seconds is not None for member in train.datasets],
                    "samples": [train[index] for index in range(0, 120, 7)]}, Path(out) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_two_ranks_rank_0_builds_the_other_loads(corpora, sentencepiece_model, tmp_path):
    """Through megatron-core's builder (rank 0 first, a barrier, then the others) on a real gloo group."""
    import torch.multiprocessing as mp

    from tests.conftest import free_port

    prefixes = [corpora["speech"], corpora["text"]]
    mp.spawn(_two_rank_worker, args=(free_port(), sentencepiece_model, prefixes, str(tmp_path / "cache"),
                                     str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(2))
    assert rank0["built"] == [True, True] and rank1["built"] == [False, False]
    in_memory = build_lst_datasets(_blend_config(sentencepiece_model, prefixes, None), [120, 0, 0])[0]
    for position, index in enumerate(range(0, 120, 7)):
        want = in_memory[index]
        for got in (rank0["samples"][position], rank1["samples"][position]):
            assert int(got.pop("dataset_id")) == int(want["dataset_id"])
            assert_same_sample({k: v for k, v in want.items() if k != "dataset_id"}, got, f"sample {index}")
