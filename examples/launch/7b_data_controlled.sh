#!/usr/bin/env bash
# The data-controlled pair at 7b: the baseline, then LST, with the same --train-tokens budget.
# MODELS="lst" runs one of the two; other settings (NNODES, NODE_RANK, MASTER_ADDR, GPUS_PER_NODE,
# DATA_PATH, TOKENIZER, RUN_DIR, DRY_RUN=1) are train.sh's.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for MODEL in ${MODELS:-baseline lst}; do  # MODELS="baseline lst bpe-baseline" (with UNIT_BPE) adds the BPE SpeechLLM
  "$HERE/train.sh" 7b "$MODEL" data "$@"
done
