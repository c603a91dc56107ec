"""Data-parallel scoring: two gloo ranks split the items (7, so unevenly, two of them too long to
fit) and every rank ends with the report one process gives, for the batched whole-sequence path
and the per-item (prompt-cache) path. tools/evaluate.py under torchrun runs this code on each rank."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from evaluation_toys import BigramScorer, toy_tokenizer
from megatron_lst.evaluation.items import Item, Part
from megatron_lst.evaluation.scoring import SequenceBuilder
from megatron_lst.evaluation.story_completion import evaluate_items
from tests.conftest import free_port

pytestmark = pytest.mark.slow  # two spawned interpreters importing torch and megatron: ~30 s on a shared CPU


class PerItemBigram(BigramScorer):
    """The per-item interface (what prompt_cache.PromptCachedScorer offers) over the same table."""

    def item_logprobs(self, sequences, alignments=None):
        return self.token_logprobs(sequences)


def items() -> list[Item]:
    rng = np.random.default_rng(5)
    words = lambda n: " ".join(rng.choice(list("abcdef"), size=n))  # noqa: E731
    out = []
    for index in range(7):
        long = index in (2, 5)  # an ending of 11 units does not fit 12 tokens with the markers
        endings = tuple(Part(text=words(2), units=tuple(int(u) for u in rng.integers(0, 4, 11 if long and e else 2)))
                        for e in range(3))
        out.append(Item(f"i{index}", int(rng.integers(3)), Part(text=words(4), units=(1, 2, 3)), endings))
    return out


def report(scorer) -> dict:
    result = evaluate_items(items(), SequenceBuilder(toy_tokenizer(), max_length=12), scorer, ["ss", "tt"], 4)
    return result.to_dict()


def _worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        reports = {"flat": report(BigramScorer.random(15, seed=3)), "cached": report(PerItemBigram.random(15, seed=3))}
        Path(out, f"rank{rank}.json").write_text(json.dumps(reports))
    finally:
        dist.destroy_process_group()


def test_two_ranks_give_the_single_process_report(tmp_path):
    assert not dist.is_initialized() or dist.get_world_size() == 1
    single = {"flat": report(BigramScorer.random(15, seed=3)), "cached": report(PerItemBigram.random(15, seed=3))}
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        ranks = json.loads(Path(tmp_path, f"rank{rank}.json").read_text())
        assert ranks == json.loads(json.dumps(single))
    ss = single["flat"]["results"]["S->S"]
    assert (ss["scored"], ss["skipped"], ss["skipped_items"]) == (5, 2, ["i2", "i5"])
    assert [record["id"] for record in ss["items"]] == ["i0", "i1", "i3", "i4", "i6"]
    assert single["flat"]["results"]["T->T"]["scored"] == 7
