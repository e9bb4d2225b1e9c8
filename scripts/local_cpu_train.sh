#!/usr/bin/env bash
# The whole picochat pipeline on one CPU, from a fresh clone:
#   .venv -> pretraining data -> tokenizer -> base model -> base eval (CORE) -> mid-training -> SFT -> RL
#   -> chat evals -> report card ($PICOCHAT_HOME/report/report.md, with plots)
# Everything lands under $PICOCHAT_HOME. Re-running skips finished stages and resumes an interrupted one
# (Ctrl-C writes a checkpoint first); a stage made from anything that changed since is trained again.
#
# Knobs (environment variables):
#   PICOCHAT_HOME    where everything goes (default ~/.cache/picochat; ~/.cache/picochat-smoke with SMOKE)
#   BASE_MINUTES     minutes of base training (default 8); MID_MINUTES (default 2.5), SFT_MINUTES (default 2)
#   DEPTH            transformer blocks of the base model (default 4; width is 64 x depth)
#   VOCAB_SIZE       tokenizer vocabulary (default 4096)
#   DATA_SOURCE      auto | offline | fineweb (default auto: FineWeb-Edu if reachable, else offline)
#   CORE_PROBLEMS    items per CORE task in the base eval (default 50)
#   EVAL_PROBLEMS    problems per chat task in the chat eval (default 100)
#   TRAIN_FLAGS      more `picochat train` flags for every stage, e.g. "--device-batch-size 8"
#   RUN_RL           1: RL on verifiable rewards after SFT, RL_MINUTES long (default 2); 0 skips it (default 1)
#   FORCE_TOKENIZER, FORCE_BASE, FORCE_MID, FORCE_SFT, FORCE_RL=1   train that again
#   PICOCHAT_SMOKE=1 the same pipeline with tiny settings, in a few minutes (a check, not a model)
set -euo pipefail
case "${1:-}" in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) echo "local_cpu_train.sh: error: unknown argument '$1' (settings are environment variables; see --help)" >&2
       exit 2 ;;
esac
RUN_RL="${RUN_RL:-1}"
[[ "$RUN_RL" =~ ^[01]$ ]] || { echo "local_cpu_train.sh: error: RUN_RL must be 0 or 1, got '$RUN_RL'" >&2; exit 2; }

if [ -n "${PICOCHAT_SMOKE:-}" ]; then  # tiny everything; the user's knobs still win
    export PICOCHAT_HOME="${PICOCHAT_HOME:-$HOME/.cache/picochat-smoke}"
    DEPTH="${DEPTH:-1}" BASE_MINUTES="${BASE_MINUTES:-0.3}" MID_MINUTES="${MID_MINUTES:-0.15}"
    SFT_MINUTES="${SFT_MINUTES:-0.15}" RL_MINUTES="${RL_MINUTES:-0.15}" CORE_PROBLEMS="${CORE_PROBLEMS:-4}"
    EVAL_PROBLEMS="${EVAL_PROBLEMS:-4}"
    VOCAB_SIZE="${VOCAB_SIZE:-2048}"
    TRAIN_FLAGS="--max-seq-len 128 --device-batch-size 4 --eval-tokens 4096 --eval-every 0 ${TRAIN_FLAGS:-}"
fi
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
export PICOCHAT_HOME="${PICOCHAT_HOME:-$HOME/.cache/picochat}"
DEPTH="${DEPTH:-4}"
SECONDS=0
STEP_NAMES=() STEP_STARTS=()
step() {  # elapsed time, then the step; remembered for the summary at the end
    printf '== [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"
    STEP_NAMES+=("$*") STEP_STARTS+=("$SECONDS")
}
summary() {  # wall time of each step (a skipped stage takes seconds)
    local i end
    printf '\n| step | wall |\n|---|---:|\n'
    for i in "${!STEP_NAMES[@]}"; do
        end=${STEP_STARTS[$((i + 1))]:-$SECONDS}
        printf '| %s | %dm%02ds |\n' "${STEP_NAMES[$i]}" $(((end - STEP_STARTS[i]) / 60)) $(((end - STEP_STARTS[i]) % 60))
    done
    printf '| total | %dm%02ds |\n' $((SECONDS / 60)) $((SECONDS % 60))
}
echo "== picochat local CPU pipeline; artifacts in $PICOCHAT_HOME"

step "1/9 pretraining data"
picochat data prepare --source "${DATA_SOURCE:-auto}"

step "2/9 tokenizer"
if [ -f "$PICOCHAT_HOME/tokenizer/tokenizer.json" ] && [ -z "${FORCE_TOKENIZER:-}" ]; then
    echo "tokenizer: already trained in $PICOCHAT_HOME/tokenizer (FORCE_TOKENIZER=1 retrains)"
else
    picochat tokenizer train --vocab-size "${VOCAB_SIZE:-4096}"
fi
picochat tokenizer eval

# train_stage STAGE MINUTES [flags]: picochat decides whether the stage is done, interrupted or stale (made
# from another corpus, tokenizer, previous stage or settings) with --if-needed; FORCE_<STAGE>=1 starts it
# again, and every later stage follows since what it was made from changed.
train_stage() {
    local stage=$1 minutes=$2 force_var="FORCE_${1^^}"
    shift 2
    local when=(--if-needed)
    [ -z "${!force_var:-}" ] || when=()
    # Checkpoint about once a minute, so even a kill -9 loses little. TRAIN_FLAGS come last: they win.
    # shellcheck disable=SC2086
    picochat train --stage "$stage" --time-budget "$minutes" "$@" --save-every 50 "${when[@]}" ${TRAIN_FLAGS:-}
    if [ ! -f "$PICOCHAT_HOME/checkpoints/$stage/done.json" ]; then
        echo "$stage: stopped before the end; run this script again to resume"  # Ctrl-C or a signal
        exit 130
    fi
}

step "3/9 base model: depth $DEPTH, ${BASE_MINUTES:-8} minutes of training"
train_stage base "${BASE_MINUTES:-8}" --depth "$DEPTH"
step "4/9 base eval: val bpb and CORE"
picochat eval base --max-problems "${CORE_PROBLEMS:-50}"
step "5/9 mid-training: ${MID_MINUTES:-2.5} minutes"
train_stage mid "${MID_MINUTES:-2.5}"
step "6/9 SFT: ${SFT_MINUTES:-2} minutes"
train_stage sft "${SFT_MINUTES:-2}"
# 2 minutes of RL beat 2 more minutes of SFT on the held-out evals (EVALS_AND_DATA.md). Its pass@k is
# measured once, at the end, on a few problems: the chat evals below measure the model anyway.
final=sft
if [ "$RUN_RL" = 1 ]; then
    step "7/9 RL: ${RL_MINUTES:-2} minutes"
    train_stage rl "${RL_MINUTES:-2}" --eval-every 0 --rl-eval-problems 16
    final=rl
else
    step "7/9 RL: off (RUN_RL=0)"
fi

step "8/9 chat evals of the $final model"
picochat eval chat --source "$final" --max-problems "${EVAL_PROBLEMS:-100}"
step "9/9 report card"
picochat report
summary
echo "Talk to it: picochat chat   (or picochat serve, then open http://127.0.0.1:8000)"
