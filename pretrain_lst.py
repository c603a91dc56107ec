"""Pretrain LST or an interleaved baseline (``--model lst|baseline|bpe-baseline``) on megatron-core.

Single process:      python pretrain_lst.py --config examples/configs/debug.yaml --data-path ...
Tensor/pipeline/DP:  torchrun --nproc-per-node 2 pretrain_lst.py --tensor-model-parallel-size 2 ...
Plan only (layout, FLOPs, memory): python pretrain_lst.py --config examples/configs/7b.yaml --dry-run --world-size 128
DeepSpeed ZeRO:      torchrun ... pretrain_lst.py --engine deepspeed --deepspeed-config examples/deepspeed/zero1.json
Every flag is listed, with its meaning, by ``--help``.
"""

from __future__ import annotations

import sys

from megatron_lst.training.arguments import Config, parse_args


def task_factory(config: Config):
    """The TrainingTask for ``--model``."""
    if config.train.model == "baseline":
        from megatron_lst.training.baseline_task import BaselineTask

        return BaselineTask(config)
    if config.train.model == "bpe-baseline":
        from megatron_lst.training.bpe_baseline_task import BPEBaselineTask

        return BPEBaselineTask(config)
    from megatron_lst.training.lst_task import LSTTask

    return LSTTask(config)


def main(argv: list[str] | None = None) -> int:
    from megatron_lst.training.checkpoint_manifest import CheckpointError

    try:
        return train(argv)
    except CheckpointError as error:  # a checkpoint refused, or a --save folder that would be overwritten
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2


def train(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    if config.train.dry_run:
        from megatron_lst.training.dry_run import run_dry_run

        return run_dry_run(config)
    from megatron_lst.training.hardware import check_hardware

    check_hardware(config)
    if config.train.engine == "deepspeed":
        from megatron_lst.training.deepspeed_engine import run_deepspeed

        return run_deepspeed(config, task_factory)
    from megatron_lst.training.initialize import destroy_distributed
    from megatron_lst.training.loop import Trainer

    trainer = Trainer(config, task_factory)
    trainer.train()
    destroy_distributed()
    return 0


if __name__ == "__main__":  # dist_checkpointing's writer uses multiprocessing: keep this guard
    sys.exit(main())
