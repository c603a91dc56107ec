"""Fixtures of the GPU tests: a one-rank NCCL group with megatron's parallel state."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module")
def gpu_parallel_state():
    from tests.conftest import free_port
    from megatron_lst.training.initialize import destroy_distributed, initialize_distributed

    saved = {name: os.environ.get(name) for name in ("MASTER_ADDR", "MASTER_PORT")}
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(free_port())
    initialize_distributed(1, 1, seed=3)
    yield
    destroy_distributed()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
