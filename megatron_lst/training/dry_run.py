"""``--dry-run``: plan a run without starting it (parallel layout, batch, FLOPs, parameters, memory).

A multi-node job that dies at start-up because 32 heads do not split over TP=3, or that runs out
of memory after an hour in the queue, wastes the most expensive minutes of a project. The plan
is computed from the flags alone (no process group, no model, no data), so it runs on a laptop
for the 7B flavour: the launchers in ``examples/launch/`` call it with ``DRY_RUN=1``.

Estimates, not measurements: parameter counts are analytic (exact for the baseline, which a test
pins against the built model); memory is weights + gradients + Adam states (mixed precision keeps
fp32 master weights and fp32 gradients, as ``grad_reduce_in_fp32`` does) plus the activation
formula of Korthikanti et al. 2022 (flash attention: no ``a * s / h`` term) times the micro-batches
in flight under 1F1B; LST FLOPs assume the paper's data mix and the static patch size as the
speech compression (``SPEECH_TOKEN_FRACTION``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional

from megatron_lst.models.flops import gpt_training_flops, lst_training_flops
from megatron_lst.training.arguments import Config, micro_batches_per_step
from megatron_lst.training.registry import spec_of

# Paper's mix (docs/method.md §5): per 3.00 baseline positions 0.77 are speech units.
SPEECH_TOKEN_FRACTION = 0.77 / 3.0
# Text BPE size assumed when no --tokenizer-model is given, plus the joint specials and 502 unit ids.
ASSUMED_TEXT_VOCAB = 32000
JOINT_EXTRA_TOKENS = 5 + 502
GIB = 1024**3


class LayoutError(ValueError):
    """An impossible parallel layout; the message says which number does not divide which."""


@dataclass
class ParallelLayout:
    world_size: int
    tensor: int
    pipeline: int
    data: int
    micro_batch_size: int
    global_batch_size: int

    @property
    def micro_batches_per_step(self) -> int:
        return micro_batches_per_step(self.global_batch_size, self.micro_batch_size, self.data)


def pipeline_layer_problems(layers: int, pp: int, first: Optional[int], last: Optional[int]) -> list[str]:
    """megatron-core's rule for the global layers over PP stages: ``first``/``last`` (LST's
    ``--decoder-first/last-pipeline-num-layers``) fix the end stages, the rest split evenly."""
    if pp == 1 or (first is None and last is None):
        return [] if layers % pp == 0 else [f"global layers ({layers}) are not divisible by PP={pp}"]
    fixed = [count for count in (first, last) if count is not None]
    middle_stages, middle_layers = pp - len(fixed), layers - sum(fixed)
    if middle_layers < 0 or (middle_stages == 0 and middle_layers) or (middle_stages and middle_layers % middle_stages):
        return [f"global layers ({layers}) minus the first/last stages' {sum(fixed)} do not split evenly over the "
                f"other {middle_stages} of PP={pp} stages"]
    return []


def planned_world_size(config: Config) -> int:
    """--world-size, else the launcher's WORLD_SIZE (torchrun sets nnodes x nproc-per-node), else 1."""
    if config.parallel.world_size:
        return config.parallel.world_size
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_layout(config: Config, world_size: int) -> ParallelLayout:
    """TP, PP and DP for ``world_size`` GPUs; raises LayoutError listing every violated rule."""
    shape, parallel, data = config.model_config, config.parallel, config.data
    tp, pp = parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size
    problems = []
    if world_size % (tp * pp):
        problems.append(f"world size {world_size} is not divisible by TP x PP = {tp} x {pp}")
    heads = {"global attention heads": shape.num_attention_heads}
    if shape.num_query_groups:
        heads["global query groups"] = shape.num_query_groups
    if spec_of(config).patched:  # the patch encoder and decoder are split over TP too
        heads["encoder attention heads"] = shape.encoder_num_attention_heads
        heads["decoder attention heads"] = shape.decoder_num_attention_heads
    for name, count in heads.items():
        if count % tp:
            problems.append(f"{name} ({count}) are not divisible by TP={tp}")
    problems += pipeline_layer_problems(shape.num_layers, pp, parallel.decoder_first_pipeline_num_layers,
                                        parallel.decoder_last_pipeline_num_layers)
    dp = max(world_size // (tp * pp), 1)
    if not problems:
        try:
            data.micro_batches_per_step(dp)
        except ValueError as error:
            problems.append(str(error))
    if config.train.engine == "deepspeed" and (tp > 1 or pp > 1):
        problems.append("--engine deepspeed is data parallel only: use TP=PP=1 (ZeRO shards the states)")
    if problems:
        raise LayoutError("impossible parallel layout: " + "; ".join(problems))
    return ParallelLayout(world_size, tp, pp, dp, data.micro_batch_size, data.global_batch_size)


def vocab_size(config: Config) -> tuple[int, str]:
    """The padded joint vocabulary, from the tokenizer when one is given."""
    if config.data.tokenizer_model and os.path.isfile(config.data.tokenizer_model):
        from megatron_lst.tokenizer import JointTokenizer

        if spec_of(config).unit_bpe and config.data.unit_bpe and os.path.isfile(config.data.unit_bpe):
            from megatron_lst.unit_bpe_tokenizer import UnitBPETokenizer  # speech slots: BPE pieces

            size = UnitBPETokenizer.from_files(config.data.tokenizer_model, config.data.unit_bpe,
                                               config.data.num_units, config.data.tokenizer_type).vocab_size
        else:
            size = JointTokenizer.from_file(config.data.tokenizer_model, config.data.tokenizer_type,
                                            num_units=config.data.num_units).vocab_size
        source = config.data.tokenizer_model
    else:
        size, source = ASSUMED_TEXT_VOCAB + JOINT_EXTRA_TOKENS, f"assumed ({ASSUMED_TEXT_VOCAB} text BPE + joint ids)"
    return padded_vocab_size(size, config.parallel.tensor_model_parallel_size), source


def padded_vocab_size(vocab: int, tensor_model_parallel_size: int, divisible_by: int = 128) -> int:
    """``models.baseline.padded_vocab_size`` without importing megatron-core (seconds at start-up);
    a test pins the two to the same result."""
    multiple = divisible_by * tensor_model_parallel_size
    return (vocab + multiple - 1) // multiple * multiple


def layer_parameters(hidden: int, ffn: int, heads: int, query_groups: Optional[int], gated: bool) -> int:
    """Self-attention + MLP layer without biases (the flavours use ``add_bias_linear=False``)."""
    kv_width = hidden // heads * (query_groups or heads)
    attention = hidden * (hidden + 2 * kv_width) + hidden * hidden
    mlp = hidden * ffn * (3 if gated else 2)
    return attention + mlp + 2 * hidden


def cross_layer_parameters(hidden: int) -> int:
    """Cross-attention layer: Q, K, V, output projections and its pre-norm."""
    return 4 * hidden * hidden + hidden


def parameter_counts(config: Config, vocab: int) -> dict[str, int]:
    """Parameters per module (``embedding``, ``global``, ``output`` / local modules for LST)."""
    shape = config.model_config
    hidden = shape.hidden_size
    global_layers = shape.num_layers * layer_parameters(
        hidden, shape.ffn_size(), shape.num_attention_heads, shape.num_query_groups, shape.swiglu
    )
    if not spec_of(config).patched:
        counts = {"embedding": vocab * hidden, "global": global_layers + hidden, "output": vocab * hidden}
    else:
        enc, dec = shape.encoder_hidden_size, shape.decoder_hidden_size

        def local(width: int, heads: int, layers: int) -> int:
            per_layer = layer_parameters(width, shape.ffn_size(width), heads, None, shape.swiglu)
            return layers * (per_layer + cross_layer_parameters(width))

        encoder = vocab * enc + local(enc, shape.encoder_num_attention_heads, shape.encoder_num_layers)
        encoder += shape.cross_attn_k * enc * (1 + hidden)
        decoder = local(dec, shape.decoder_num_attention_heads, shape.decoder_num_layers) + hidden * dec + dec
        decoder += enc * dec if enc != dec else 0
        counts = {"encoder": encoder, "global": global_layers + hidden, "decoder": decoder, "output": vocab * dec}
    counts["total"] = sum(counts.values())
    return counts


def stage_parameters(config: Config, counts: dict[str, int]) -> int:
    """Parameters held by the largest pipeline stage's tensor-parallel shard."""
    pp, tp = config.parallel.pipeline_model_parallel_size, config.parallel.tensor_model_parallel_size
    global_share = counts["global"] / pp
    first = counts.get("embedding", 0) + counts.get("encoder", 0)
    last = counts["output"] + counts.get("decoder", 0)
    stage = global_share + (first + last if pp == 1 else max(first, last))
    return int(stage / tp)


def speech_compression(config: Config) -> float:
    """Raw tokens per global position under the paper's mix (1.0 for the baseline)."""
    if not spec_of(config).patched:
        return 1.0
    positions_per_token = (1 - SPEECH_TOKEN_FRACTION) + SPEECH_TOKEN_FRACTION / config.patching.patch_size
    return 1.0 / positions_per_token


def flops_per_step(config: Config, vocab: int) -> dict[str, float]:
    """Training FLOPs of one optimizer step, per module, for the global batch (the model's registry entry)."""
    return spec_of(config).flops_per_step(config, vocab)


def gpt_step_flops(config: Config, vocab: int) -> dict[str, float]:
    """A GPT over the joint stream: one position per token."""
    shape, data = config.model_config, config.data
    total = gpt_training_flops(
        num_tokens=data.global_batch_size * data.seq_length, seq_len=data.seq_length,
        num_layers=shape.num_layers, hidden_size=shape.hidden_size, ffn_hidden_size=shape.ffn_size(),
        num_attention_heads=shape.num_attention_heads, vocab_size=vocab,
        num_query_groups=shape.num_query_groups, gated_mlp=shape.swiglu,
    )
    return {"global": total, "total": total}


def lst_step_flops(config: Config, vocab: int) -> dict[str, float]:
    """The LST: ``--seq-length`` patches, holding the raw tokens the paper's mix compresses into them."""
    data = config.data
    tokens = int(round(data.seq_length * speech_compression(config)))
    return lst_training_flops(config.model_config, data.global_batch_size, tokens, data.seq_length, vocab)


def activation_bytes(config: Config, layout: ParallelLayout, vocab: int) -> float:
    """Activations of the largest stage: per-layer formula x layers per stage x micro-batches in flight."""
    shape, data, train = config.model_config, config.data, config.train
    tp, pp = layout.tensor, layout.pipeline
    seq, micro, hidden = data.seq_length, data.micro_batch_size, shape.hidden_size
    per_value = 2 if train.bf16 else 4
    sbh = seq * micro * hidden * per_value / 2  # the formula counts 2-byte values
    if train.recompute_granularity == "full":
        per_layer = 2 * sbh
    elif config.parallel.sequence_parallel:
        per_layer = 34 * sbh / tp
    else:
        per_layer = (10 + 24 / tp) * sbh
    in_flight = min(pp, layout.micro_batches_per_step)
    layers = shape.num_layers / pp * in_flight
    logits = seq * micro * vocab * 4 / tp  # fp32 logits for the cross-entropy on the last stage
    local = 0.0
    if spec_of(config).patched:
        tokens = seq * speech_compression(config) * micro
        for width, count in ((shape.encoder_hidden_size, shape.encoder_num_layers),
                             (shape.decoder_hidden_size, shape.decoder_num_layers)):
            local += count * 2 * (10 + 24 / tp) * tokens * width * per_value / 2
    return per_layer * layers + logits + local


def memory_per_gpu(config: Config, layout: ParallelLayout, counts: dict[str, int], vocab: int) -> dict[str, float]:
    """GiB per GPU: weights, grads, optimizer states (plain and distributed optimizer), activations."""
    params = stage_parameters(config, counts)
    bf16 = config.train.bf16
    weights = params * (2 if bf16 else 4)
    grads = params * 4
    optimizer = params * (12 if bf16 else 8)  # fp32 master (mixed precision only) + Adam m and v
    activations = activation_bytes(config, layout, vocab)
    return {
        "weights": weights / GIB,
        "grads": grads / GIB,
        "optimizer": optimizer / GIB,
        "optimizer_distributed": optimizer / layout.data / GIB,
        "activations": activations / GIB,
        "total": (weights + grads + optimizer + activations) / GIB,
        "total_distributed": (weights + grads + optimizer / layout.data + activations) / GIB,
    }


def plan(config: Config, world_size: Optional[int] = None) -> dict:
    """Everything ``--dry-run`` prints, as a dict (raises LayoutError for impossible layouts)."""
    layout = resolve_layout(config, world_size or planned_world_size(config))
    vocab, vocab_source = vocab_size(config)
    counts = parameter_counts(config, vocab)
    flops = flops_per_step(config, vocab)
    return {
        "layout": layout,
        "vocab": vocab,
        "vocab_source": vocab_source,
        "parameters": counts,
        "flops_per_step": flops,
        "tokens_per_step": config.data.global_batch_size * config.data.seq_length * speech_compression(config),
        "memory_gib": memory_per_gpu(config, layout, counts, vocab),
    }


@dataclass
class PlannedSteps:
    """The optimizer steps a run is planned to take, and which flag ends it.

    ``estimated``: the end is a FLOPs or token budget, whose steps are estimated from the flags
    (this module's FLOPs and tokens per step); ``--train-iters`` is exact.
    """

    steps: int
    ends_on: str
    estimated: bool

    def describe(self) -> str:
        how = "about " if self.estimated else ""
        return f"{how}{self.steps} steps (ends on {self.ends_on})"


def planned_steps(config: Config, flops_per_step_total: Optional[float] = None,
                  tokens_per_step: Optional[float] = None) -> PlannedSteps:
    """Whichever of --train-iters, --train-flops and --train-tokens stops the run first."""
    train = config.train
    ends_on = (f"--train-samples {train.train_samples}" if train.train_samples is not None
               else f"--train-iters {train.train_iters}")
    plans = [PlannedSteps(train.train_iters, ends_on, False)]
    if train.train_flops is not None:
        if flops_per_step_total is None:
            flops_per_step_total = flops_per_step(config, vocab_size(config)[0])["total"]
        plans.append(PlannedSteps(math.ceil(train.train_flops / flops_per_step_total),
                                  f"--train-flops {train.train_flops:.4g}", True))
    if train.train_tokens is not None:
        if tokens_per_step is None:
            tokens_per_step = config.data.global_batch_size * config.data.seq_length * speech_compression(config)
        plans.append(PlannedSteps(math.ceil(train.train_tokens / tokens_per_step),
                                  f"--train-tokens {train.train_tokens:.4g}", True))
    return min(plans, key=lambda plan: (plan.steps, plan.estimated))


def budget_lines(config: Config, flops_per_step: float, tokens_per_step: float) -> list[str]:
    """How many steps a FLOPs or token budget lasts (whichever stops first ends the run)."""
    lines = []
    if config.train.train_flops is not None:
        lines.append(f"--train-flops {config.train.train_flops:.4g} lasts about "
                     f"{config.train.train_flops / flops_per_step:.0f} steps")
    if config.train.train_tokens is not None:
        lines.append(f"--train-tokens {config.train.train_tokens:.4g} lasts about "
                     f"{config.train.train_tokens / tokens_per_step:.0f} steps")
    return lines


def format_plan(config: Config, result: dict) -> str:
    layout: ParallelLayout = result["layout"]
    memory, counts, flops = result["memory_gib"], result["parameters"], result["flops_per_step"]
    lines = [
        f"dry run: --model {config.train.model}, {config.model_config.num_layers} global layers x "
        f"{config.model_config.hidden_size}, engine {config.train.engine}",
        f"parallel layout: world {layout.world_size} = TP {layout.tensor} x PP {layout.pipeline} x DP {layout.data}"
        + (" (sequence parallel)" if config.parallel.sequence_parallel else ""),
        f"batch: global {layout.global_batch_size} samples x {config.data.seq_length} positions = "
        f"{layout.micro_batches_per_step} micro-batches of {layout.micro_batch_size} per DP rank per step",
        f"raw tokens per step: {result['tokens_per_step']:.4g}"
        + (f" (assumed speech compression {speech_compression(config):.3f} tokens/position)"
           if spec_of(config).patched else ""),
        "FLOPs per step: " + ", ".join(f"{name} {value:.4g}" for name, value in flops.items()),
        f"FLOPs for --train-iters {config.train.train_iters}: {flops['total'] * config.train.train_iters:.4g}",
        *budget_lines(config, flops["total"], result["tokens_per_step"]),
        f"planned steps: {planned_steps(config, flops['total'], result['tokens_per_step']).describe()}",
        "parameters: " + ", ".join(f"{name} {value / 1e6:.1f}M" for name, value in counts.items()),
        f"vocabulary: {result['vocab']} (padded; {result['vocab_source']})",
        f"memory per GPU (GiB, estimate): weights {memory['weights']:.2f}, grads {memory['grads']:.2f}, "
        f"Adam {memory['optimizer']:.2f} ({memory['optimizer_distributed']:.2f} with distributed optimizer), "
        f"activations {memory['activations']:.2f} (recompute {config.train.recompute_granularity or 'off'})",
        f"memory per GPU total: {memory['total']:.1f} GiB, {memory['total_distributed']:.1f} GiB with "
        f"distributed optimizer" + (" [selected]" if config.parallel.use_distributed_optimizer else ""),
    ]
    return "\n".join(lines)


def run_dry_run(config: Config) -> int:
    """Print the plan on the logging rank; exit status 2 with the reason for an impossible layout."""
    try:
        result = plan(config)
    except LayoutError as error:
        print(f"error: {error}", flush=True)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(format_plan(config, result), flush=True)
    return 0
