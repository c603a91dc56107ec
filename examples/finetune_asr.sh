#!/usr/bin/env bash
# ASR fine-tuning from a pretrained checkpoint: streams "BOS <s> units <t> transcript EOS" of the
# speech-text corpus (--data-mode asr), loss on the transcript and its EOS only; then held-out WER
# and transcript NLL of the starting point and of the fine-tuned model.
#
#   examples/finetune_asr.sh PRETRAINED_CKPT OUT_DIR TOKENIZER SPEECH_PREFIX HELDOUT_JSONL [extra pretrain_lst.py flags]
#   e.g. examples/finetune_asr.sh demo_out/runs/lst/checkpoints ft_asr demo_out/tokenizer/text_bpe.model \
#            demo_out/data/segments_speech_document demo_out/corpus/speech_heldout.jsonl --train-iters 200
#
# The model (--model), its shape, tokenizer type and patch shape come from the checkpoint's saved
# run config (--use-checkpoint-args), so the script fits any pretrained LST or baseline checkpoint.
# PYTHON picks the interpreter (default: python on PATH).
# SPEECH_PREFIX holds segments, not whole utterances: a speech segment plus its transcript must fit
# in one sample (--seq-length counts global positions), or a piece cut off before "<t>" trains on
# nothing. Cut them with `tools/preprocess_data.py --segment-words 8` (what the demo does); the held-out
# speech is cut into segments of the same length by tools/evaluate_asr_tts.py.
set -euo pipefail
PRETRAINED=$1 OUT=$2 TOKENIZER=$3 SPEECH=$4 HELDOUT=$5
shift 5
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}

"$PY" "$REPO/pretrain_lst.py" --load "$PRETRAINED" --use-checkpoint-args --finetune \
  --tokenizer-model "$TOKENIZER" --data-path "$SPEECH" --data-mode asr --data-cache-path "$OUT/index_cache" \
  --seq-length 128 --micro-batch-size 4 --global-batch-size 8 --lr 3e-3 --lr-warmup-iters 10 \
  --train-iters 200 --log-interval 5 --eval-interval 1000 --eval-iters 1 --split 100,0,0 \
  --save "$OUT/checkpoints" --save-interval 1000000 "$@"

"$PY" "$REPO/tools/evaluate_asr_tts.py" --task asr --checkpoint "$PRETRAINED" --heldout "$HELDOUT" \
  --output "$OUT/eval_start.json"
"$PY" "$REPO/tools/evaluate_asr_tts.py" --task asr --checkpoint "$OUT/checkpoints" --heldout "$HELDOUT" \
  --output "$OUT/eval_finetuned.json"
