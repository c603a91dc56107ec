#!/usr/bin/env bash
# TTS fine-tuning from a pretrained checkpoint: streams "BOS <t> transcript <s> units EOS" of the
# speech-text corpus (--data-mode tts), loss on the units and their EOS only; then held-out unit
# error rate, unit NLL and cost per second of speech, start vs fine-tuned (ASR_CHECKPOINT: round-trip WER).
#
#   examples/finetune_tts.sh PRETRAINED_CKPT OUT_DIR TOKENIZER SPEECH_PREFIX HELDOUT_JSONL [ASR_CHECKPOINT] [extra pretrain_lst.py flags]
#   e.g. examples/finetune_tts.sh demo_out/runs/lst/checkpoints ft_tts demo_out/tokenizer/text_bpe.model \
#            demo_out/data/segments_speech_document demo_out/corpus/speech_heldout.jsonl --train-iters 200
#
# The model (--model), its shape, tokenizer type and patch shape come from the checkpoint's saved
# run config (--use-checkpoint-args), so the script fits any pretrained LST or baseline checkpoint.
# PYTHON picks the interpreter (default: python on PATH).
# SPEECH_PREFIX holds segments, not whole utterances: a speech segment plus its transcript must fit
# in one sample (--seq-length counts global positions), or a piece cut off before "<s>" trains on
# nothing. Cut them with `tools/preprocess_data.py --segment-words 8` (what the demo does); the held-out
# speech is cut into segments of the same length by tools/evaluate_asr_tts.py.
set -euo pipefail
PRETRAINED=$1 OUT=$2 TOKENIZER=$3 SPEECH=$4 HELDOUT=$5
ASR=()
if [[ $# -ge 6 && $6 != --* ]]; then ASR=(--asr-checkpoint "$6"); shift; fi
shift 5
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}

"$PY" "$REPO/pretrain_lst.py" --load "$PRETRAINED" --use-checkpoint-args --finetune \
  --tokenizer-model "$TOKENIZER" --data-path "$SPEECH" --data-mode tts --data-cache-path "$OUT/index_cache" \
  --seq-length 128 --micro-batch-size 4 --global-batch-size 8 --lr 3e-3 --lr-warmup-iters 10 \
  --train-iters 200 --log-interval 5 --eval-interval 1000 --eval-iters 1 --split 100,0,0 \
  --save "$OUT/checkpoints" --save-interval 1000000 "$@"

"$PY" "$REPO/tools/evaluate_asr_tts.py" --task tts --checkpoint "$PRETRAINED" --heldout "$HELDOUT" \
  "${ASR[@]}" --output "$OUT/eval_start.json"
"$PY" "$REPO/tools/evaluate_asr_tts.py" --task tts --checkpoint "$OUT/checkpoints" --heldout "$HELDOUT" \
  "${ASR[@]}" --output "$OUT/eval_finetuned.json"
