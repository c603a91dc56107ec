#!/usr/bin/env bash
# One pretraining run of a paper-sized model on 8-GPU nodes, launched with torchrun (or, under
# LAUNCHER=srun, as one of the ranks srun started: see slurm.sbatch).
#
#   examples/launch/train.sh SIZE MODEL CONTROL [extra pretrain_lst.py flags]
#     SIZE     420m | 1b | 7b          (examples/configs/SIZE.yaml: the paper's optimiser and batch)
#     MODEL    lst | baseline | bpe-baseline (the BPE SpeechLLM; UNIT_BPE=its unit BPE .model)
#     CONTROL  compute | flops | data
#              compute: the paper's compute-controlled runs, the same iterations and global positions per
#                       step for every model (--train-iters = the paper's steps); `iters` is an alias
#              flops:   FLOPs-matched, every model stops on the baseline's FLOPs (LST's local modules cost
#                       extra FLOPs per step, so it takes fewer steps)
#              data:    data-controlled, every model stops on the baseline's raw tokens
#
# Environment (defaults in brackets): NNODES [1], NODE_RANK [0], GPUS_PER_NODE [8],
# MASTER_ADDR [127.0.0.1], MASTER_PORT [29500], RDZV=1 to use c10d rendezvous instead of a fixed
# node rank (RDZV_ID names the job), DATA_PATH and TOKENIZER (the corpus), RUN_DIR [runs],
# DRY_RUN=1 to print the plan (layout, FLOPs, memory) instead of training, PYTHON [python],
# UNIT_BPE (bpe-baseline only), LAUNCHER [torchrun]: srun when srun started one task per GPU (the
# rank comes from SLURM_PROCID / SLURM_LOCALID / SLURM_NTASKS, and SLURM's signals reach the trainer
# itself instead of torchrun, which kills its workers 30 s after forwarding one).
set -euo pipefail

SIZE=${1:?usage: train.sh SIZE MODEL CONTROL [flags]}
MODEL=${2:?usage: train.sh SIZE MODEL CONTROL [flags]}
CONTROL=${3:?usage: train.sh SIZE MODEL CONTROL [flags]}
shift 3
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
RUN_DIR=${RUN_DIR:-runs}
PYTHON=${PYTHON:-python}
WORLD_SIZE_PLANNED=$((NNODES * GPUS_PER_NODE))

# Layout per size (8-GPU nodes). 420m/1b fit one GPU: pure data parallel, as in the paper
# (32 GPUs x 4 sequences x 4096 positions), Adam states sharded over DP (distributed optimizer).
# 7b: TP=4 inside a node, sequence parallel, selective recompute, distributed optimizer.
# ITERS is the paper's step count; the budgets are the baseline's FLOPs and raw tokens over ITERS steps (tests/training/test_launchers.py checks them against --dry-run).
case "$SIZE" in
  420m) TP=1; PP=1; ITERS=100000; FLOPS_BUDGET=1.55e+20; TOKENS_BUDGET=5.24288e+10
        PARALLEL_FLAGS=(--use-distributed-optimizer) ;;
  1b)   TP=1; PP=1; ITERS=200000; FLOPS_BUDGET=9.696e+20; TOKENS_BUDGET=1.048576e+11
        PARALLEL_FLAGS=(--use-distributed-optimizer) ;;
  7b)   TP=4; PP=1; ITERS=25000;  FLOPS_BUDGET=3.974e+21; TOKENS_BUDGET=1.048576e+11
        PARALLEL_FLAGS=(--sequence-parallel --use-distributed-optimizer --recompute-granularity selective) ;;
  *) echo "unknown SIZE '$SIZE' (420m, 1b or 7b)" >&2; exit 2 ;;
esac
case "$MODEL" in
  lst|baseline) MODEL_FLAGS=() ;;
  bpe-baseline) [[ -n "${UNIT_BPE:-}" ]] || { echo "MODEL bpe-baseline needs UNIT_BPE=path/to/unit_bpe.model (tools/train_unit_bpe.py)" >&2; exit 2; }
                MODEL_FLAGS=(--unit-bpe "$UNIT_BPE") ;;
  *) echo "unknown MODEL '$MODEL' (lst, baseline or bpe-baseline)" >&2; exit 2 ;;
esac

# Budgeted runs (flops, data) cap iterations at twice the paper's and decay the LR over the paper's
# steps; the budget, not the cap, ends them (LST: about 1.24 raw tokens per position at the paper's mix).
case "$CONTROL" in
  compute|iters) CONTROL=compute; BUDGET_FLAGS=(--train-iters "$ITERS") ;;
  flops)   BUDGET_FLAGS=(--train-flops "$FLOPS_BUDGET" --train-iters $((2 * ITERS)) --lr-decay-iters "$ITERS") ;;
  data)    BUDGET_FLAGS=(--train-tokens "$TOKENS_BUDGET" --train-iters $((2 * ITERS)) --lr-decay-iters "$ITERS") ;;
  *) echo "unknown CONTROL '$CONTROL' (compute, flops or data)" >&2; exit 2 ;;
esac

NAME="${SIZE}_${MODEL}_${CONTROL}"
FLAGS=(
  --config "$REPO/examples/configs/$SIZE.yaml" --model "$MODEL" "${MODEL_FLAGS[@]}" --bf16
  --tensor-model-parallel-size "$TP" --pipeline-model-parallel-size "$PP" "${PARALLEL_FLAGS[@]}"
  "${BUDGET_FLAGS[@]}"
  --save "$RUN_DIR/$NAME/checkpoints" --load "$RUN_DIR/$NAME/checkpoints"
  --tensorboard-dir "$RUN_DIR/$NAME/tensorboard" --log-json "$RUN_DIR/$NAME/metrics.jsonl"
)
[[ -n "${DATA_PATH:-}" ]] && read -r -a DATA_WORDS <<< "$DATA_PATH" && FLAGS+=(--data-path "${DATA_WORDS[@]}")
[[ -n "${TOKENIZER:-}" ]] && FLAGS+=(--tokenizer-model "$TOKENIZER")

if [[ "${DRY_RUN:-0}" == "1" ]]; then
  echo "launch: $NAME on $NNODES node(s) x $GPUS_PER_NODE GPUs (node rank $NODE_RANK, master $MASTER_ADDR:$MASTER_PORT)"
  exec "$PYTHON" "$REPO/pretrain_lst.py" "${FLAGS[@]}" "$@" --dry-run --world-size "$WORLD_SIZE_PLANNED"
fi

export CUDA_DEVICE_MAX_CONNECTIONS=1  # megatron-core's TP/SP overlap needs in-order kernel launch
if [[ "${RDZV:-0}" == "1" ]]; then
  LAUNCH=(--nnodes "$NNODES" --nproc-per-node "$GPUS_PER_NODE" --rdzv-backend c10d
          --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv-id "${RDZV_ID:-$NAME}")
else
  LAUNCH=(--nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$GPUS_PER_NODE"
          --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT")
fi
mkdir -p "$RUN_DIR/$NAME"
if [[ "${LAUNCHER:-torchrun}" == "srun" ]]; then
  export RANK=${SLURM_PROCID:?LAUNCHER=srun needs SLURM_PROCID} LOCAL_RANK=${SLURM_LOCALID:?} WORLD_SIZE=${SLURM_NTASKS:?}
  export MASTER_ADDR MASTER_PORT
  exec "$PYTHON" "$REPO/pretrain_lst.py" "${FLAGS[@]}" "$@"
fi
exec "$PYTHON" -m torch.distributed.run "${LAUNCH[@]}" "$REPO/pretrain_lst.py" "${FLAGS[@]}" "$@"
