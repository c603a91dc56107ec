#!/usr/bin/env bash
# The GPU check of this project, on one GPU in under 8 minutes (each part has its own time limit):
#   train  NCCL single-rank training steps of both models (pretrain_lst.py --model baseline|lst) on a
#          small synthetic speech + text corpus built here: validation, a checkpoint, finite losses;
#   pytest every test under tests/gpu/ (NCCL collectives, TE spec, bf16 + distributed optimizer,
#          recompute, and whatever GPU tests other files there add: they are picked up by folder);
#   mfu    bench/bench_mfu.py (1b flavour: global model vs LST, bf16, TE spec when it imports).
# "train" and "pytest" are small and run side by side; "mfu" runs alone so that nothing skews its
# timings. Prints a PASS/FAIL line per part and exits non-zero when any part fails.
#
#   bash tests/gpu/run_all.sh              # from anywhere; works in the repository root
#   PYTHON=/usr/bin/python bash tests/gpu/run_all.sh
# Time limits in seconds: TRAIN_TIMEOUT (default 150), PYTEST_TIMEOUT (260), MFU_TIMEOUT (190): at most
# max(train, pytest) + mfu = 450 s, plus a few seconds of preflight.
# Python: $PYTHON when set, else .venv/bin/python when it exists and sees CUDA, else python.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
export CUDA_DEVICE_MAX_CONNECTIONS=1  # megatron-core: keeps communication kernels in issue order
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"

pick_python() {
    if [[ -n "${PYTHON:-}" ]]; then echo "$PYTHON"; return; fi
    if [[ -x .venv/bin/python ]] && .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        echo ".venv/bin/python"; return
    fi
    [[ -x .venv/bin/python ]] && echo "note: .venv/bin/python has no CUDA torch; using python" >&2
    echo python
}

# ------------------------------------------------------------------------------------------ parts
# Each part runs as `run_all.sh --part NAME` under `timeout`, so a hung part cannot stall the rest.

part_train() {
    local work; work="$(mktemp -d -p "${RUN_ALL_TMP:-${TMPDIR:-/tmp}}")"  # under main's folder: removed even on a timeout
    trap 'rm -rf "$work"' RETURN
    local paths
    paths="$("$PY" - "$work/corpus" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, "tests/gpu")
from test_gpu_paths import build_synthetic_corpus

print(*build_synthetic_corpus(Path(sys.argv[1])))
EOF
)" || { echo "could not build the synthetic corpus"; return 1; }
    read -r tokenizer speech text <<<"$(tail -n 1 <<<"$paths")"  # the builder's tools may print first
    local model status=0
    for model in baseline lst; do
        echo "--- $model: 4 steps over NCCL (validation at 2 and 4, checkpoint at 4)"
        local port; port="$("$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")"
        if ! MASTER_ADDR=127.0.0.1 MASTER_PORT="$port" "$PY" pretrain_lst.py --model "$model" --model-flavour debug \
                --distributed-backend nccl --tokenizer-model "$tokenizer" --data-path 0.33 "$speech" 0.67 "$text" \
                --data-cache-path "$work/cache" --seq-length 128 --micro-batch-size 2 --global-batch-size 4 \
                --train-iters 4 --lr 1e-3 --lr-warmup-iters 1 --log-interval 1 --eval-interval 2 --eval-iters 1 \
                --save "$work/$model-ckpt" --save-interval 4 --log-json "$work/$model.jsonl"; then
            echo "$model: pretrain_lst.py failed"; status=1; continue
        fi
        "$PY" - "$work/$model.jsonl" "$work/$model-ckpt" "$model" <<'EOF' || status=1
import json, math, sys
from pathlib import Path
log, ckpt, model = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
rows = [json.loads(line) for line in log.read_text().splitlines()]
train = [r["lm_loss"] for r in rows if r["kind"] == "train"]
valid = [r["lm_loss"] for r in rows if r["kind"] == "valid"]
latest = (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() if ckpt.is_dir() else "none"
problems = []
if len(train) != 4 or not all(math.isfinite(v) for v in train):
    problems.append(f"train losses {train}")
if len(valid) != 2 or not all(math.isfinite(v) for v in valid):
    problems.append(f"validation losses {valid}")
if latest != "4":
    problems.append(f"latest checkpoint {latest}, expected 4")
print(f"{model}: train losses {[round(v, 4) for v in train]}, validation {[round(v, 4) for v in valid]}, checkpoint {latest}")
sys.exit(f"{model}: " + "; ".join(problems) if problems else 0)
EOF
    done
    return $status
}

part_pytest() {
    # the whole folder, not `-m gpu`: a GPU test file that forgets the marker still runs here. With
    # pytest-timeout, one slow test fails with its traceback instead of the part's limit killing
    # pytest before it prints any failure.
    local per_test=()
    "$PY" -c "import pytest_timeout" 2>/dev/null && per_test=(--timeout "${PYTEST_TEST_TIMEOUT:-100}")
    "$PY" -m pytest -p no:cacheprovider -v -rfEs --tb=short --durations=15 "${per_test[@]}" tests/gpu
}

part_mfu() {
    # a fixed micro-batch: fitting one tries several sizes, each with its own warm-up
    "$PY" bench/bench_mfu.py --micro-batch-size "${MFU_MICRO_BATCH:-2}" --warmup 2 --steps 5
}

if [[ "${1:-}" == "--part" ]]; then
    PY="$(pick_python)"
    "part_$2"
    exit $?
fi

# ------------------------------------------------------------------------------------------ main
PY="$(pick_python)"
export PYTHON="$PY"  # the parts re-enter this script: keep the same interpreter
LOGS="$(mktemp -d)"
trap 'rm -rf "$LOGS"' EXIT
export RUN_ALL_TMP="$LOGS"
declare -A LIMIT=([train]="${TRAIN_TIMEOUT:-150}" [pytest]="${PYTEST_TIMEOUT:-260}" [mfu]="${MFU_TIMEOUT:-190}")
declare -A RESULT SECONDS_TAKEN

TOTAL_START=$SECONDS
echo "=== preflight ($PY)"
if ! "$PY" - <<'EOF'
import importlib.util, sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA device: this script needs a GPU")
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), {torch.cuda.device_count()} GPU(s): "
      f"{torch.cuda.get_device_name(0)}")
for name in ("megatron.core", "transformer_engine", "apex", "deepspeed", "pytest", "sentencepiece", "gensim"):
    print(f"  {name:18} {'yes' if importlib.util.find_spec(name) else 'NO'}")
missing = [n for n in ("megatron.core", "pytest", "sentencepiece") if importlib.util.find_spec(n) is None]
if importlib.util.find_spec("gensim") is None:
    print("  (no gensim: GPU tests that use the shared text_corpus fixture will error; "
          "pip install --no-deps gensim==4.4.0)")
if missing:
    sys.exit(f"missing required packages: {missing} (pip install -e '.[dev]' or use the Dockerfile's image)")
EOF
then
    echo "FAIL preflight"
    exit 1
fi
if ! "$PY" -c "import megatron_lst._patching, megatron_lst._indexed_builder" 2>/dev/null; then
    echo "  building the C++ extensions in place (setup.py build_ext --inplace)"
    "$PY" setup.py -q build_ext --inplace >"$LOGS/build.log" 2>&1 || { cat "$LOGS/build.log"; echo "FAIL preflight: extensions"; exit 1; }
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/  /'

start_part() {  # name -> runs in the background, output in $LOGS/name.log
    local name="$1"
    ( local t0=$SECONDS
      timeout --kill-after=20 "${LIMIT[$name]}" bash "$ROOT/tests/gpu/run_all.sh" --part "$name" >"$LOGS/$name.log" 2>&1
      echo "$? $((SECONDS - t0))" >"$LOGS/$name.rc" ) &
}

finish_part() {  # name -> prints its output and records PASS/FAIL
    local name="$1" rc seconds
    read -r rc seconds <"$LOGS/$name.rc"
    echo; echo "=== $name (exit $rc, ${seconds}s)"; cat "$LOGS/$name.log"
    SECONDS_TAKEN[$name]=$seconds
    if [[ "$rc" == 0 ]]; then RESULT[$name]="PASS"
    elif [[ "$rc" == 124 || "$rc" == 137 ]]; then RESULT[$name]="FAIL (timed out after ${LIMIT[$name]}s)"
    else RESULT[$name]="FAIL (exit $rc)"; fi
}

echo "=== train + pytest side by side (limits ${LIMIT[train]}s, ${LIMIT[pytest]}s), then mfu (${LIMIT[mfu]}s)"
start_part train
start_part pytest
wait
finish_part train
finish_part pytest
start_part mfu
wait
finish_part mfu

echo; echo "=== summary ($((SECONDS - TOTAL_START))s in all)"
status=0
for name in train pytest mfu; do
    printf '%-7s %-40s %4ss\n' "$name" "${RESULT[$name]}" "${SECONDS_TAKEN[$name]}"
    [[ "${RESULT[$name]}" == PASS ]] || status=1
done
echo "$([[ $status == 0 ]] && echo PASS || echo FAIL): tests/gpu/run_all.sh"
exit $status
