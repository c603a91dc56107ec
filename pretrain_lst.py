"""Pretrain LST or an interleaved baseline (``--model lst|baseline|bpe-baseline``) on megatron-core.

Single process:      python pretrain_lst.py --config examples/configs/debug.yaml --data-path ...
Tensor/pipeline/DP:  torchrun --nproc-per-node 2 pretrain_lst.py --tensor-model-parallel-size 2 ...
Plan only (layout, FLOPs, memory): python pretrain_lst.py --config examples/configs/7b.yaml --dry-run --world-size 128
DeepSpeed ZeRO:      torchrun ... pretrain_lst.py --engine deepspeed --deepspeed-config examples/deepspeed/zero1.json
Every flag is listed, with its meaning, by ``--help``.
"""

from __future__ import annotations

import sys

from megatron_lst.training import orphans

if __name__ == "__mp_main__":  # a helper process multiprocessing spawned (dist_checkpointing's writer queue)
    orphans.adopt_spawned_child()  # first, before the heavy imports: it must not outlive the trainer

from megatron_lst.training.arguments import Config, parse_args  # noqa: E402
from megatron_lst.training.registry import build_task  # noqa: E402
from megatron_lst.validation import InputError, exit_on_input_error  # noqa: E402


def check_inputs(config: Config) -> None:
    """The data against the flags, before any process group or model exists (one line, exit 2)."""
    from megatron_lst.data.input_checks import check_training_data
    from megatron_lst.tokenizer import load_text_model

    if not config.data.tokenizer_model:
        raise InputError("is required (a SentencePiece .model, a .tiktoken file or a tokenizer.json)",
                         field="--tokenizer-model")
    try:
        text_model = load_text_model(config.data.tokenizer_model, config.data.tokenizer_type)
    except (OSError, RuntimeError) as error:
        raise InputError(f"cannot be loaded: {error}", field="--tokenizer-model") from None
    check_training_data(config.data.data_path, text_model, config.data.num_units)
    if config.data.valid_data_path:
        check_training_data(config.data.valid_data_path, text_model, config.data.num_units)


@exit_on_input_error  # bad data or flags, a refused checkpoint or --save folder (CheckpointError): one line, exit 2
def main(argv: list[str] | None = None) -> int:
    orphans.install()  # no checkpoint writer or DataLoader worker outlives this process, even after kill -9
    return train(argv)


def train(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    if config.train.dry_run:
        from megatron_lst.training.dry_run import run_dry_run

        return run_dry_run(config)
    from megatron_lst.training.hardware import check_hardware

    check_hardware(config)
    check_inputs(config)
    from megatron_lst.training.loop import run_training  # either --engine: one loop

    run_training(config, build_task)
    return 0


if __name__ == "__main__":  # dist_checkpointing's writer uses multiprocessing: keep this guard
    sys.exit(main())
