#!/usr/bin/env bash
# The whole picochat pipeline on one CPU, from a fresh clone:
#   .venv -> pretraining data -> tokenizer -> base model -> (mid, SFT, evals, report: coming next)
# Everything lands under $PICOCHAT_HOME (default ~/.cache/picochat). Re-running reuses what exists.
# Knobs (environment): BASE_MINUTES (default 8), DEPTH (default 4), DATA_SOURCE (auto|offline|fineweb),
# TRAIN_FLAGS (more `picochat train` flags, e.g. "--device-batch-size 8" where memory is short).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
export PICOCHAT_HOME="${PICOCHAT_HOME:-$HOME/.cache/picochat}"
BASE_MINUTES="${BASE_MINUTES:-8}"
DEPTH="${DEPTH:-4}"
SECONDS=0
echo "== picochat local CPU pipeline; artifacts in $PICOCHAT_HOME"

echo "== 1/3 pretraining data"
picochat data prepare --source "${DATA_SOURCE:-auto}"

echo "== 2/3 tokenizer"
if [ -f "$PICOCHAT_HOME/tokenizer/tokenizer.json" ] && [ -z "${FORCE_TOKENIZER:-}" ]; then
    echo "tokenizer: already trained in $PICOCHAT_HOME/tokenizer (FORCE_TOKENIZER=1 retrains)"
else
    picochat tokenizer train
fi
picochat tokenizer eval

echo "== 3/3 base model: depth $DEPTH, $BASE_MINUTES minutes of training"
BASE_DIR="$PICOCHAT_HOME/checkpoints/base"
# Checkpoint about once a minute, so even a kill -9 loses little; Ctrl-C checkpoints before it exits.
# shellcheck disable=SC2206
BASE_FLAGS=(--stage base --depth "$DEPTH" --time-budget "$BASE_MINUTES" --save-every 50 ${TRAIN_FLAGS:-})
if [ -f "$BASE_DIR/done.json" ] && [ -z "${FORCE_BASE:-}" ]; then
    echo "base: already trained ($BASE_DIR/done.json; FORCE_BASE=1 trains again)"
elif compgen -G "$BASE_DIR/step_*.pt" >/dev/null && [ -z "${FORCE_BASE:-}" ]; then
    echo "base: resuming the interrupted run"
    picochat train "${BASE_FLAGS[@]}" --resume
else
    picochat train "${BASE_FLAGS[@]}"
fi
if [ ! -f "$BASE_DIR/done.json" ]; then  # stopped by Ctrl-C or a signal: a checkpoint was written
    echo "base: stopped before the end; run this script again to resume"
    exit 130
fi

echo "== done in $((SECONDS / 60))m $((SECONDS % 60))s"
echo "Next (later releases of this script): mid-training, SFT, evals, report.md, then 'picochat chat'."
