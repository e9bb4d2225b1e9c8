#!/usr/bin/env bash
# usage: bash scripts/local_cpu_train.sh   (no arguments: the settings are environment variables)
# The whole picochat pipeline on one CPU, from a fresh clone:
#   .venv -> pretraining data -> tokenizer -> base model -> base eval (CORE) -> mid-training -> SFT -> RL
#   -> chat evals -> report card ($PICOCHAT_HOME/report/report.md, with plots)
# Everything lands under $PICOCHAT_HOME. Re-running skips finished stages and evals and resumes an interrupted
# stage (Ctrl-C writes a checkpoint first); a stage made from anything that changed since is trained again.
#
# Knobs (environment variables; picochat checks them all before the first step):
#   PICOCHAT_HOME    where everything goes (default ~/.cache/picochat; ~/.cache/picochat-smoke with SMOKE)
#   BASE_MINUTES     minutes of base training (default 8); MID_MINUTES (default 2.5), SFT_MINUTES (default 2)
#   DEPTH            transformer blocks of the base model (default 3; width is 64 x depth)
#   VOCAB_SIZE       tokenizer vocabulary (default 4096)
#   DATA_SOURCE      auto | offline | fineweb (default auto: FineWeb-Edu if reachable, else offline)
#   CORE_PROBLEMS    items per CORE task in the base eval (default 50)
#   EVAL_PROBLEMS    problems per chat task in the chat eval (default 100)
#   TRAIN_FLAGS      more `picochat train` flags for every stage, e.g. "--device-batch-size 8"
#   RUN_RL           1: RL on verifiable rewards after SFT, RL_MINUTES long (default 2); 0 skips it (default 1)
#   FORCE_TOKENIZER, FORCE_BASE, FORCE_MID, FORCE_SFT, FORCE_RL=1   train that again (and what follows it)
#   FORCE_EVAL=1     run the evals again even where the checkpoint and settings are unchanged
#   PICOCHAT_SMOKE=1 the same pipeline with tiny settings, in a few minutes (a check, not a model)
set -euo pipefail
NAME=local_cpu_train.sh DRY_RUN=""
source "$(dirname "${BASH_SOURCE[0]}")/recipe.sh"
case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    "") ;;
    *) die "unknown argument '$1' (settings are environment variables; see --help)" ;;
esac
RUN_RL="${RUN_RL:-1}"  # this script's own knob; picochat checks the others
[[ "$RUN_RL" =~ ^[01]$ ]] || die "RUN_RL must be 0 or 1, got '$RUN_RL'"

if [ -n "${PICOCHAT_SMOKE:-}" ]; then  # tiny everything; the user's knobs still win
    export PICOCHAT_HOME="${PICOCHAT_HOME:-$HOME/.cache/picochat-smoke}"
    defaults DEPTH=1 BASE_MINUTES=0.3 MID_MINUTES=0.15 SFT_MINUTES=0.15 RL_MINUTES=0.15 CORE_PROBLEMS=4 \
        EVAL_PROBLEMS=4 VOCAB_SIZE=2048
    TRAIN_FLAGS="--max-seq-len 128 --device-batch-size 4 --eval-tokens 4096 --eval-every 0 ${TRAIN_FLAGS:-}"
fi
source "$REPO/scripts/setup_env.sh"
export PICOCHAT_HOME="${PICOCHAT_HOME:-$HOME/.cache/picochat}"
LAUNCH=(picochat) STAGE_FLAGS=(--save-every 50)  # a checkpoint about once a minute: even a kill -9 loses little

pipeline() {
    step "1/9 pretraining data"
    run picochat data prepare --source "${DATA_SOURCE:-auto}"
    step "2/9 tokenizer"
    if [ -f "$PICOCHAT_HOME/tokenizer/tokenizer.json" ] && [ -z "${FORCE_TOKENIZER:-}" ]; then
        echo "tokenizer: already trained in $PICOCHAT_HOME/tokenizer (FORCE_TOKENIZER=1 retrains)"
    else  # a new tokenizer makes every stage after it stale: --if-needed trains them again
        run picochat tokenizer train --vocab-size "${VOCAB_SIZE:-4096}"
    fi
    run picochat tokenizer eval
    step "3/9 base model: depth ${DEPTH:-3}, ${BASE_MINUTES:-8} minutes of training"
    train_stage base --time-budget "${BASE_MINUTES:-8}" --depth "${DEPTH:-3}"
    step "4/9 base eval: val bpb and CORE"
    evaluate base --max-problems "${CORE_PROBLEMS:-50}"
    step "5/9 mid-training: ${MID_MINUTES:-2.5} minutes"
    train_stage mid --time-budget "${MID_MINUTES:-2.5}"
    step "6/9 SFT: ${SFT_MINUTES:-2} minutes"
    train_stage sft --time-budget "${SFT_MINUTES:-2}"
    # 2 minutes of RL beat 2 more minutes of SFT on the held-out evals (EVALS_AND_DATA.md). Its pass@k is
    # measured once, at the end, on a few problems: the chat evals below measure the model anyway.
    local final=sft
    if [ "$RUN_RL" = 1 ]; then
        step "7/9 RL: ${RL_MINUTES:-2} minutes"
        train_stage rl --time-budget "${RL_MINUTES:-2}" --eval-every 0 --rl-eval-problems 16
        final=rl
    else
        step "7/9 RL: off (RUN_RL=0)"
    fi
    step "8/9 chat evals of the $final model"
    evaluate chat --source "$final" --max-problems "${EVAL_PROBLEMS:-100}"
    step "9/9 report card"
    run picochat report
}

check_recipe 1 pipeline  # every stage's settings, before the first step
echo "== picochat local CPU pipeline; artifacts in $PICOCHAT_HOME"
pipeline
summary
echo "Talk to it: picochat chat   (or picochat serve, then open http://127.0.0.1:8000)"
