"""Command-line flags (Megatron-LM's names) and YAML configs, parsed into explicit config objects.

Every flag comes from a dataclass field whose metadata carries its help text, so ``--help``
documents every flag and the code receives small typed objects instead of one global ``args``.
Precedence: dataclass default < flavour (``--model-flavour``) < YAML (``--config``) < command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from megatron_lst.choices import (BlendWeighting, DataMode, DistributedBackend, Engine, FoldSpeechMarker,
                                  LocalAttentionImpl, LrDecayStyle, NanPolicy, PatchBoundary, PatchingStrategy,
                                  RecomputeGranularity, SilenceMode, TokenizerType, TransformerImpl, check_choices,
                                  literal_choices)
from megatron_lst.models.config import MODEL_FLAVOURS, ModelConfig, model_flavour
from megatron_lst.training.registry import MODELS, ModelName, model_spec
from megatron_lst.validation import ArgumentParser

# Global batches whose samples are sorted together by token count. On a demo-like blend (33%
# speech-text by samples, --seq-length 256, micro-batch 4, global batch 8; bench/bench_bucketing.py)
# index order pads 53% of the tokens, one global batch 34%, 4 about 10%, 16 about 3%: only the
# micro-batches that straddle the text -> speech jump of a window mix lengths.
DEFAULT_BUCKET_WINDOW = 16


def micro_batches_per_step(global_batch_size: int, micro_batch_size: int, data_parallel_size: int = 1) -> int:
    """Micro-batches each data-parallel rank runs per optimizer step; ValueError (naming the flags)
    when the global batch is not a whole number of micro-batches on every rank."""
    if micro_batch_size < 1 or data_parallel_size < 1 or global_batch_size % (micro_batch_size * data_parallel_size):
        raise ValueError(f"--global-batch-size {global_batch_size} is not divisible by --micro-batch-size x "
                         f"data-parallel size = {micro_batch_size} x {data_parallel_size}")
    return global_batch_size // (micro_batch_size * data_parallel_size)


class Section:
    """A config section: its ``Literal`` fields hold one of their choices (checked on construction,
    so a YAML file, a saved run config and the command line are refused alike)."""

    def __post_init__(self) -> None:
        check_choices(self)




@dataclass
class ParallelConfig(Section):
    tensor_model_parallel_size: int = field(default=1, metadata={"help": "tensor-parallel ranks (TP)"})
    pipeline_model_parallel_size: int = field(default=1, metadata={"help": "pipeline stages (PP)"})
    sequence_parallel: bool = field(default=False, metadata={"help": "sequence parallel with TP (GPU only)"})
    use_distributed_optimizer: bool = field(
        default=False, metadata={"help": "ZeRO-1 style sharded optimizer (GPU only in megatron-core)"}
    )
    distributed_backend: Optional[DistributedBackend] = field(default=None, metadata={"help": "nccl or gloo (default: by device)"})
    decoder_first_pipeline_num_layers: Optional[int] = field(
        default=None,
        metadata={"help": "LST: global layers on the first pipeline stage, which also holds the patch encoder "
                          "(default: an even split)"},
    )
    decoder_last_pipeline_num_layers: Optional[int] = field(
        default=None,
        metadata={"help": "LST: global layers on the last pipeline stage, which also holds the patch decoder "
                          "(default: an even split)"},
    )
    overlap_grad_reduce: bool = field(default=False, metadata={
        "help": "GPU, --engine megatron: all-reduce (or reduce-scatter) each gradient bucket while the backward "
                "pass still runs (megatron-core's DDP overlap)"})
    overlap_param_gather: bool = field(default=False, metadata={
        "help": "GPU, with --use-distributed-optimizer: all-gather the updated parameters of each bucket during the "
                "next forward pass"})
    world_size: Optional[int] = field(
        default=None, metadata={"help": "with --dry-run: GPUs to plan for (default: WORLD_SIZE of the launcher, or 1)"}
    )


@dataclass
class OptimizerArgs(Section):
    """The AdamW and LR-schedule flags (megatron-core's own ``OptimizerConfig`` is built from them)."""

    lr: float = field(default=4e-4, metadata={"help": "peak learning rate (paper: 4e-4)"})
    min_lr: Optional[float] = field(default=None, metadata={
        "help": "the floor the LR decays to (Megatron-LM's default is 0.0; here, when not given: --lr x "
                "--min-lr-ratio, the paper's 1% of the peak)"})
    min_lr_ratio: float = field(default=0.01, metadata={"help": "the LR floor as a fraction of --lr when --min-lr "
                                                               "is not given (paper: 1%)"})
    lr_warmup_iters: int = field(default=2000, metadata={"help": "linear warm-up iterations (paper: 2000)"})
    lr_decay_iters: Optional[int] = field(default=None, metadata={"help": "decay length (default: --train-iters)"})
    lr_decay_style: LrDecayStyle = field(default="cosine", metadata={"help": "cosine, linear or constant"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (paper: 0.1)"})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2"})
    adam_eps: float = field(default=1e-8, metadata={"help": "AdamW epsilon"})
    clip_grad: float = field(default=1.0, metadata={"help": "global gradient-norm clip (0 = off)"})

    def floor_lr(self) -> float:
        """The LR the decay ends at: ``--min-lr`` when given, else ``--lr x --min-lr-ratio``."""
        return self.min_lr if self.min_lr is not None else self.lr * self.min_lr_ratio


@dataclass
class DataConfig(Section):
    data_path: list = field(
        default_factory=list,
        metadata={"help": "dataset prefixes, optionally weighted: '0.33 speech_prefix 0.67 text_prefix'"},
    )
    valid_data_path: Optional[list] = field(default=None, metadata={
        "help": "validation dataset prefixes, weighted like --data-path; when given, validation reads them "
                "(whole) instead of the --split share of --data-path"})
    tokenizer_model: Optional[str] = field(default=None, metadata={
        "help": "the text tokenizer: a SentencePiece .model, a .tiktoken file, or a Hugging Face tokenizer.json "
                "(or its folder)"})
    tokenizer_type: TokenizerType = field(default="auto", metadata={
        "help": "how to read --tokenizer-model: auto (by its file name), sentencepiece, tiktoken or huggingface"})
    num_units: int = field(default=501, metadata={"help": "speech unit codebook size"})
    unit_bpe: Optional[str] = field(default=None, metadata={
        "help": "--model bpe-baseline: the unit BPE .model (tools/train_unit_bpe.py) that encodes every speech "
                "segment of the raw-unit speech-text datasets into pieces"})
    split: str = field(default="98,2,0", metadata={"help": "train,valid,test split of each dataset"})
    seq_length: int = field(default=256, metadata={"help": "global positions per sample"})
    micro_batch_size: int = field(default=4, metadata={"help": "samples per micro-batch per data-parallel rank"})
    global_batch_size: int = field(default=8, metadata={"help": "samples per optimizer step (all ranks)"})
    seed: int = field(default=1234, metadata={"help": "seed for initialisation, data order and patching"})
    data_cache_path: Optional[str] = field(default=None, metadata={"help": "where dataset index caches go"})
    blend_weights: BlendWeighting = field(
        default="tokens",
        metadata={"help": "what --data-path weights share out: tokens (the paper's 1:2 interleaved:text by "
                          "tokens; each dataset's sample weight is corrected by its tokens per sample) or samples "
                          "(megatron-core's plain sample draw)"},
    )
    data_mode: DataMode = field(
        default="interleaved",
        metadata={"help": "how speech-text documents become streams: interleaved (pre-training), speech, text, "
                          "asr (speech then <t> transcript, loss on the transcript) or tts (text then <s> units, "
                          "loss on the units)"},
    )
    opening_speech_uniform: bool = field(
        default=True,
        metadata={"help": "interleaving: a document that opens in speech draws that span as 2-15 words, the "
                          "reference code's rule (--no-opening-speech-uniform: the rest of a length-biased first "
                          "text+speech cycle)"},
    )
    text_document_marker: bool = field(
        default=True,
        metadata={"help": "text-corpus documents in a speech-text blend read BOS <t> text EOS, as the reference "
                          "code marks every text run (--no-text-document-marker: BOS text EOS); text-only runs "
                          "read megatron's GPTDataset streams unchanged"},
    )
    num_workers: int = field(default=0, metadata={
        "help": "DataLoader worker processes per rank (0: read in the training process)"})
    bucket_window: int = field(default=DEFAULT_BUCKET_WINDOW, metadata={
        "help": "LST on speech-text blends: the samples of this many consecutive global batches are grouped "
                "into micro-batches of similar token counts, so rows need little padding (0: index order)"})

    def micro_batches_per_step(self, data_parallel_size: int = 1) -> int:
        return micro_batches_per_step(self.global_batch_size, self.micro_batch_size, data_parallel_size)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_workers < 0 or self.bucket_window < 0:
            raise ValueError(f"--num-workers and --bucket-window must be >= 0, got {self.num_workers} and "
                             f"{self.bucket_window}")


@dataclass
class TrainConfig(Section):
    model: ModelName = field(default="baseline", metadata={
        "help": "; ".join(f"{spec.name}: {spec.help}" for spec in MODELS.values())})
    train_iters: int = field(default=100, metadata={"help": "optimizer steps to train"})
    train_samples: Optional[int] = field(default=None, metadata={
        "help": "train this many samples instead of --train-iters (which becomes train-samples // "
                "--global-batch-size, as in Megatron-LM; the LR decays over them)"})
    train_flops: Optional[float] = field(default=None, metadata={"help": "stop when this many FLOPs were spent"})
    train_tokens: Optional[float] = field(default=None, metadata={"help": "stop when this many raw tokens were seen"})
    bf16: bool = field(default=False, metadata={"help": "bf16 params and compute (GPU)"})
    transformer_impl: TransformerImpl = field(default="auto", metadata={"help": "auto, local (SDPA) or transformer_engine"})
    local_attention_impl: LocalAttentionImpl = field(
        default="auto",
        metadata={"help": "kernel of the LST's local attention: auto (FlexAttention on CUDA, blocked SDPA "
                          "elsewhere), flex or blocked; all are linear in tokens"},
    )
    recompute_granularity: Optional[RecomputeGranularity] = field(default=None, metadata={"help": "activation recompute: full or selective"})
    nan_policy: NanPolicy = field(default="skip", metadata={"help": "on a NaN/Inf loss: skip the step or stop"})
    debug_inject_nan_iter: Optional[int] = field(
        default=None, metadata={"help": "testing aid: make the loss NaN at this iteration"}
    )
    skip_train: bool = field(default=False, metadata={"help": "only evaluate (after --load), do not train"})
    exit_interval: Optional[int] = field(default=None, metadata={"help": "exit after this iteration (saving first when --save is set)"})
    exit_duration_in_mins: Optional[float] = field(default=None, metadata={
        "help": "exit (saving first when --save is set) after the first step that ends this many minutes after "
                "the run started; all ranks stop at the same step"})
    engine: Engine = field(
        default="megatron", metadata={"help": "megatron (TP/PP/DP on megatron-core) or deepspeed (ZeRO data parallel)"}
    )
    deepspeed_config: Optional[str] = field(
        default=None, metadata={"help": "--engine deepspeed: ds_config JSON (ZeRO stage and its options)"}
    )
    dry_run: bool = field(
        default=False,
        metadata={"help": "print the parallel layout, batch, FLOPs, parameters and memory per GPU; do not train"},
    )


@dataclass
class CheckpointConfig(Section):
    save: Optional[str] = field(default=None, metadata={"help": "checkpoint directory to write"})
    load: Optional[str] = field(default=None, metadata={"help": "checkpoint directory to resume from"})
    use_checkpoint_args: bool = field(default=False, metadata={
        "help": "take the model shape (and --model, the tokenizer, --num-units, --seq-length and the patching) "
                "from the run config saved in the --load checkpoint; command-line values of those are replaced, "
                "with a note"})
    save_interval: Optional[int] = field(default=None, metadata={"help": "save every N iterations"})
    load_optim: bool = field(default=True, metadata={
        "help": "load the optimizer state with the weights (--no-load-optim: weights only)"})
    finetune: bool = field(default=False, metadata={"help": "load weights, restart iteration and data at 0"})
    overwrite_save: bool = field(default=False, metadata={
        "help": "let a run that does not resume from --save write there although it holds later checkpoints "
                "(they are deleted at the start; default: refused)"})
    keep_last: Optional[int] = field(default=None, metadata={
        "help": "after each save keep only the newest N checkpoints of --save (and the one this run loaded)"})
    override_opt_param_scheduler: bool = field(default=False, metadata={
        "help": "on resume, use the command line's LR schedule (--lr, --min-lr/--min-lr-ratio, --lr-warmup-iters, "
                "--lr-decay-iters/--train-iters, --lr-decay-style, --weight-decay) where the checkpoint's differs"})
    use_checkpoint_opt_param_scheduler: bool = field(default=False, metadata={
        "help": "on resume, keep the checkpoint's LR schedule where the command line's differs "
                "(default: a difference is an error)"})


@dataclass
class LoggingConfig(Section):
    log_interval: int = field(default=10, metadata={"help": "iterations between log lines"})
    tensorboard_dir: Optional[str] = field(default=None, metadata={"help": "TensorBoard event directory"})
    eval_interval: int = field(default=100, metadata={"help": "iterations between validation runs"})
    eval_iters: int = field(default=10, metadata={"help": "validation micro-batch groups per run"})
    log_json: Optional[str] = field(default=None, metadata={"help": "also append every logged metric to this jsonl"})


@dataclass
class PatchingArgs(Section):
    """How LST groups speech units into patches (docs/method.md §3); ignored by the baseline."""

    patching: PatchingStrategy = field(default="static", metadata={"help": "static, aligned, mixed or curriculum"})
    patch_size: int = field(default=4, metadata={"help": "speech units per static patch (paper's best: 4)"})
    silence_mode: SilenceMode = field(
        default="sil_sep", metadata={"help": "aligned: sil_sep (silence its own patch) or sil_merged (joins a word)"}
    )
    max_patch_length: Optional[int] = field(default=None, metadata={"help": "split longer patches (None = no cap)"})
    curriculum_tau1: float = field(
        default=0.0,
        metadata={"help": "curriculum: all aligned until here; a value <= 1 is a fraction of the run's planned "
                          "steps (--train-iters, or the steps a --train-flops/--train-tokens budget lasts, whichever "
                          "ends the run first), larger values are iterations"},
    )
    curriculum_tau2: float = field(
        default=0.0,
        metadata={"help": "curriculum: all static from here (linear in between); same units as tau1"},
    )
    fold_speech_marker: FoldSpeechMarker = field(
        default="static",
        metadata={"help": "when <s> joins the first patch of its speech span: static (rows patched static, the "
                          "reference code's rule), always, never (<s> is a patch of its own)"},
    )
    patch_boundary: PatchBoundary = field(
        default="paper",
        metadata={"help": "paper: a speech span's short last patch closes where the span ends, so predicting "
                          "the token after it sees that patch (a one-token look-ahead, the paper's rule); "
                          "causal: that patch stays open and takes the non-speech token that ends the span, "
                          "so no patch boundary depends on the token after it (docs/method.md §2)"},
    )
    mixed_aligned_probability: float = field(
        default=0.5, metadata={"help": "mixed: probability that a sequence is patched aligned"}
    )

    def to_patching_config(self, planned_steps: int, seed: int):
        """The ``PatchingConfig`` of a run, with the curriculum boundaries in optimizer steps
        (fractions of ``planned_steps``: ``dry_run.planned_steps``)."""
        from megatron_lst.patching.config import PatchingConfig

        def steps(value: float) -> float:
            return value * planned_steps if value <= 1.0 else value

        return PatchingConfig(
            strategy=self.patching, patch_size=self.patch_size, silence_mode=self.silence_mode,
            max_patch_length=self.max_patch_length, fold_speech_marker=self.fold_speech_marker,
            patch_boundary=self.patch_boundary,
            tau1=steps(self.curriculum_tau1), tau2=steps(self.curriculum_tau2), seed=seed,
            mixed_aligned_probability=self.mixed_aligned_probability,
        )


@dataclass
class Config:
    """Everything one training run is told."""

    model_config: ModelConfig
    parallel: ParallelConfig
    optimizer: OptimizerArgs
    data: DataConfig
    train: TrainConfig
    checkpoint: CheckpointConfig
    logging: LoggingConfig
    patching: PatchingArgs = field(default_factory=PatchingArgs)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = {
    "parallel": ParallelConfig,
    "optimizer": OptimizerArgs,
    "data": DataConfig,
    "train": TrainConfig,
    "checkpoint": CheckpointConfig,
    "logging": LoggingConfig,
    "patching": PatchingArgs,
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(annotation: Any) -> Any:
    """The type a flag parses into: ``Optional[X]`` -> X; a ``Literal``'s choices are strings."""
    if literal_choices(annotation) is not None:
        return str
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def _help(f: dataclasses.Field, defaults: Any) -> str:
    """A field's help text with the value it takes when the flag is not given (the dataclass default,
    or the model flavour's); none is shown for None, whose meaning the help text itself says."""
    text = f.metadata.get("help", "")
    default = getattr(defaults, f.name) if defaults is not None else f.default
    if default is not dataclasses.MISSING and default is not None:
        shown = ("on" if default else "off") if isinstance(default, bool) else default
        text += f" (default: {shown})"
    return text.replace("%", "%%")


def _add_fields(group: argparse._ArgumentGroup, cls: type, defaults: Any = None) -> None:
    """One flag per field of ``cls``; the parsed default is None so that only given flags override
    the flavour and the YAML. ``defaults``: an instance whose values ``--help`` shows (the flavour)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = _base_type(hints[f.name])
        help_text = _help(f, defaults)
        if kind is bool:  # --x / --no-x
            action = group.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                                        default=None)
            action.help = help_text  # set after: some Pythons append "(default: None)" to a given help
        elif kind is list:
            group.add_argument(_flag(f.name), dest=f.name, nargs="+", default=None, help=help_text)
        else:
            group.add_argument(_flag(f.name), dest=f.name, type=kind, default=None, help=help_text,
                               choices=literal_choices(hints[f.name]))


def build_parser(description: str = "Pretrain LST or an interleaved baseline on megatron-core.") -> argparse.ArgumentParser:
    parser = ArgumentParser(description=description)  # defaults are in each flag's help (_add_fields)
    parser.add_argument("--config", default=None, help="YAML file of flag values (sections or flat keys)")
    parser.add_argument("--model-flavour", default=None, choices=sorted(MODEL_FLAVOURS),
                        help="named model shape (debug, demo, 1b-mini, 420m, 1b, 7b)")
    _add_fields(parser.add_argument_group("model shape (overrides the flavour; defaults: the debug flavour's)"),
                ModelConfig, model_flavour("debug"))
    for title, cls in SECTIONS.items():
        _add_fields(parser.add_argument_group(title), cls)
    return parser


def _flatten_yaml(values: dict) -> dict:
    flat: dict = {}
    for key, value in (values or {}).items():
        if isinstance(value, dict) and key in (*SECTIONS, "model"):
            flat.update({k.replace("-", "_"): v for k, v in value.items()})
        else:
            flat[key.replace("-", "_")] = value
    return flat


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    with path.open() as handle:
        loaded = yaml.safe_load(handle)
    if loaded is not None and not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping of flag names to values")
    return _flatten_yaml(loaded or {})


def config_from_values(values: dict, flavour: Optional[str] = None) -> Config:
    """Build a Config from flat {field: value}; unknown keys are an error naming them."""
    values = dict(values)
    flavour = values.pop("model_flavour", None) or flavour or "debug"
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    model_overrides = {k: values.pop(k) for k in list(values) if k in model_fields}
    sections = {}
    for name, cls in SECTIONS.items():
        names = {f.name for f in dataclasses.fields(cls)}
        sections[name] = cls(**{k: values.pop(k) for k in list(values) if k in names})
    if values:
        raise ValueError(f"unknown configuration keys: {sorted(values)}")
    data = sections["data"]
    if isinstance(data.data_path, str):
        data.data_path = data.data_path.split()
    if isinstance(data.valid_data_path, str):
        data.valid_data_path = data.valid_data_path.split()
    train = sections["train"]
    if train.train_samples is not None:  # Megatron-LM's rule (constant batch): whole global batches
        train.train_iters = train.train_samples // data.global_batch_size
    return Config(model_config=model_flavour(flavour, **model_overrides), **sections)


def parse_args(argv: Optional[list[str]] = None, extra_parser_hook=None) -> Config:
    """Parse flags (and ``--config`` YAML) into a validated Config."""
    parser = build_parser()
    if extra_parser_hook is not None:
        extra_parser_hook(parser)
    namespace = parser.parse_args(argv)
    values = load_yaml(namespace.config) if namespace.config else {}
    cli = {k: v for k, v in vars(namespace).items() if v is not None and k != "config"}
    values.update(cli)
    if values.get("train_samples") is not None and values.get("train_iters") is not None:
        parser.error("--train-samples and --train-iters exclude each other (give the run's length once)")
    try:
        if values.get("use_checkpoint_args"):
            from megatron_lst.training.checkpoint_args import with_checkpoint_args

            values = with_checkpoint_args(values)
        config = config_from_values(values)
    except (TypeError, ValueError, OSError, KeyError) as error:
        parser.error(str(error.args[0]) if isinstance(error, KeyError) else str(error))
    validate(config, parser)
    return config


def validate(config: Config, parser: Optional[argparse.ArgumentParser] = None) -> None:
    """Refuse settings that cannot work, with the reason."""
    problems = []
    spec = model_spec(config.train.model)
    if spec.unit_bpe and not config.data.unit_bpe:
        problems.append(f"--model {spec.name} needs --unit-bpe MODEL (a unit BPE from tools/train_unit_bpe.py)")
    if config.data.unit_bpe and not spec.unit_bpe:
        problems.append(f"--unit-bpe is for models over unit BPE pieces (bpe-baseline), not {spec.name!r}")
    ckpt = config.checkpoint
    if ckpt.override_opt_param_scheduler and ckpt.use_checkpoint_opt_param_scheduler:
        problems.append("--override-opt-param-scheduler and --use-checkpoint-opt-param-scheduler exclude each other")
    parallel = config.parallel
    if parallel.overlap_param_gather and not (parallel.use_distributed_optimizer and parallel.overlap_grad_reduce):
        problems.append("--overlap-param-gather needs --use-distributed-optimizer and --overlap-grad-reduce "
                        "(the parameters it gathers are the distributed optimizer's shards)")
    if config.train.engine == "deepspeed" and (parallel.overlap_grad_reduce or parallel.overlap_param_gather):
        problems.append("--overlap-grad-reduce / --overlap-param-gather are --engine megatron's; DeepSpeed overlaps "
                        "through its ds_config (zero_optimization.overlap_comm)")
    if config.train.exit_duration_in_mins is not None and config.train.exit_duration_in_mins <= 0:
        problems.append(f"--exit-duration-in-mins must be > 0, got {config.train.exit_duration_in_mins}")
    if config.train.train_samples is not None and config.train.train_samples < config.data.global_batch_size:
        problems.append(f"--train-samples {config.train.train_samples} is less than one global batch "
                        f"(--global-batch-size {config.data.global_batch_size})")
    if ckpt.keep_last is not None and ckpt.keep_last < 1:
        problems.append(f"--keep-last must be >= 1, got {ckpt.keep_last}")
    data, optimizer = config.data, config.optimizer
    for flag, value in (("--seq-length", data.seq_length), ("--micro-batch-size", data.micro_batch_size),
                        ("--global-batch-size", data.global_batch_size), ("--train-iters", config.train.train_iters)):
        if value < 1:  # 0 ends in a division by zero or an assertion deep inside (a SIGFPE for --seq-length)
            problems.append(f"{flag} must be >= 1, got {value}")
    if not (math.isfinite(optimizer.lr) and optimizer.lr >= 0):
        problems.append(f"--lr must be a finite number >= 0, got {optimizer.lr}")
    if not (math.isfinite(optimizer.min_lr_ratio) and 0 <= optimizer.min_lr_ratio <= 1):
        problems.append(f"--min-lr-ratio must be in [0, 1], got {optimizer.min_lr_ratio}")
    if optimizer.lr_warmup_iters < 0:
        problems.append(f"--lr-warmup-iters must be >= 0, got {optimizer.lr_warmup_iters}")
    try:
        config.data.micro_batches_per_step()  # the data-parallel size is checked once the world is known
    except ValueError as error:
        problems.append(str(error))
    if spec.patched:
        shape = config.model_config
        if shape.encoder_num_layers < 1 or shape.decoder_num_layers < 1:
            problems.append(f"--model {spec.name} needs --encoder-num-layers and --decoder-num-layers >= 1; "
                            "a model without local modules is the baseline: use --model baseline")
        try:
            problems += check_curriculum_reaches_static(config)
        except ValueError as error:
            problems.append(str(error))
    if problems:
        message = "; ".join(problems)
        if parser is not None:
            parser.error(message)
        raise ValueError(message)


def run_patching_config(config: Config):
    """The run's ``PatchingConfig``: curriculum fractions are of the run's planned steps."""
    from megatron_lst.training.dry_run import planned_steps

    return config.patching.to_patching_config(planned_steps(config).steps, config.data.seed)


def check_curriculum_reaches_static(config: Config) -> list[str]:
    """Problems (refusals) of a curriculum that cannot reach its static phase before the run ends.

    Evaluation always patches statically, so a curriculum run that stops while still drawing
    aligned patches is scored on patches it was barely trained on. With ``--train-iters`` ending
    the run the step count is exact and such a schedule is refused; with a FLOPs or token budget
    it is an estimate and the numbers are printed as a warning.
    """
    from megatron_lst.training.dry_run import planned_steps

    plan = planned_steps(config)  # once: with a FLOPs budget it reads the tokenizer for the vocabulary
    patching = config.patching.to_patching_config(plan.steps, config.data.seed)
    if patching.strategy != "curriculum" or patching.tau2 <= plan.steps:
        return []
    message = (f"the curriculum reaches static patching at step {patching.tau2:.0f} (--curriculum-tau2 "
               f"{config.patching.curriculum_tau2:g}) but the run is planned to end after {plan.describe()}")
    if not plan.estimated:
        return [message + ": lower --curriculum-tau2 (a fraction <= 1 is of the planned steps) or train longer"]
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"warning: {message}; the budget's steps are an estimate, check the schedule", file=sys.stderr, flush=True)
    return []
