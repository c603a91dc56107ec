"""Run by tests/models/test_local_attention_paths.py under torchrun (TP = 2 on gloo): the LST's
interval-attention fast path against its dense reference, in outputs and every parameter gradient,
with each tensor-parallel rank attending its own half of the heads. Writes the worst rank's
differences as JSON."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from megatron_lst.models.config import model_flavour  # noqa: E402
from megatron_lst.models.lst import LSTModel, lst_transformer_configs  # noqa: E402
from megatron_lst.training.initialize import destroy_distributed, initialize_distributed  # noqa: E402
from tests.conftest import worst_over_ranks  # noqa: E402
from tests.models.test_local_attention_paths import OVERRIDES, VOCAB, compare_paths, random_batch  # noqa: E402


def main(output: str) -> None:
    initialize_distributed(tensor_model_parallel_size=2, seed=11)
    shape = model_flavour("debug", **OVERRIDES)
    configs = lst_transformer_configs(shape, tensor_model_parallel_size=2)
    model = LSTModel(shape, *configs, vocab_size=VOCAB)
    differences = worst_over_ranks(compare_paths(model, random_batch(seed=3)))
    if torch.distributed.get_rank() == 0:
        Path(output).write_text(json.dumps(differences))
    destroy_distributed()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(sys.argv[1])
