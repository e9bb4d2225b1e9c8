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
#   BASE_MINUTES     minutes of base training (default 8); MID_MINUTES (default 2.5; 5.5 without RL: RL's wall
#                    time too), SFT_MINUTES (default 2)
#   DEPTH            transformer blocks of the base model (default 3; width is 64 x depth)
#   VOCAB_SIZE       tokenizer vocabulary (default 4096)
#   DATA_SOURCE      auto | offline | fineweb (default auto: FineWeb-Edu if reachable, else offline)
#   CORE_PROBLEMS    items per CORE task in the base eval (default 50)
#   EVAL_PROBLEMS    problems per chat task in the chat eval (default 100)
#   TRAIN_FLAGS      more `picochat train` flags for every stage, e.g. "--device-batch-size 8"
#   RUN_RL           1: RL on verifiable rewards after SFT, RL_MINUTES long (default 2); 0: no RL, longer mid;
#                    auto (default): RL where base trained at RL_MIN_TOKENS_PER_S (default 8000) or faster
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
if [ -n "${PICOCHAT_SMOKE:-}" ]; then  # tiny everything; the user's knobs still win
    export PICOCHAT_HOME="${PICOCHAT_HOME:-$HOME/.cache/picochat-smoke}"
    defaults DEPTH=1 BASE_MINUTES=0.3 MID_MINUTES=0.15 SFT_MINUTES=0.15 RL_MINUTES=0.15 CORE_PROBLEMS=4 \
        EVAL_PROBLEMS=4 VOCAB_SIZE=2048 RUN_RL=1
    TRAIN_FLAGS="--max-seq-len 128 --device-batch-size 4 --eval-tokens 4096 --eval-every 0 ${TRAIN_FLAGS:-}"
fi
RUN_RL="${RUN_RL:-auto}" RL_MIN_TOKENS_PER_S="${RL_MIN_TOKENS_PER_S:-8000}"  # this script's knobs; picochat
[[ "$RUN_RL" =~ ^(0|1|auto)$ ]] || die "RUN_RL must be 0, 1 or auto, got '$RUN_RL'"  # checks the others
[[ "$RL_MIN_TOKENS_PER_S" =~ ^[0-9]+$ ]] || die "RL_MIN_TOKENS_PER_S must be a whole number, got '$RL_MIN_TOKENS_PER_S'"
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
    decide_rl
    step "5/9 mid-training: $MID minutes"
    train_stage mid --time-budget "$MID"
    step "6/9 SFT: ${SFT_MINUTES:-2} minutes"
    train_stage sft --time-budget "${SFT_MINUTES:-2}"
    # RL's pass@k is measured once, at the end, on a few problems: the chat evals below measure the model anyway
    local final=sft
    if [ "$RUN_RL" != 0 ]; then
        step "7/9 RL: ${RL_MINUTES:-2} minutes"
        train_stage rl --time-budget "${RL_MINUTES:-2}" --eval-every 0 --rl-eval-problems 16
        final=rl
    else
        step "7/9 RL: off ($WHY_NO_RL)"
    fi
    step "8/9 chat evals of the $final model"
    evaluate chat --source "$final" --max-problems "${EVAL_PROBLEMS:-100}"
    step "9/9 report card"
    run picochat report
}

# RUN_RL=auto: is RL worth its minutes on this machine? Mid and SFT learn the chat skills step by step, so on a
# slow CPU (one without native bf16 computes in float32, at half the speed) they get too few steps for RL to pay:
# on a Zen 3 (base at 5,200 tokens/s), mid 5.5 min + SFT beat mid 2.5 + SFT + RL 2 min in the same wall time by 29
# points on SpellingBee; on a Zen 4 (12,200 tokens/s), RL beat 2 more minutes of SFT (docs/EVALS_AND_DATA.md).
# Sets RUN_RL to 0 or 1 (a check leaves auto: RL's command is checked too), WHY_NO_RL, and MID: without RL, mid
# gets RL's wall time.
decide_rl() {
    local speed
    WHY_NO_RL="RUN_RL=0"
    if [ "$RUN_RL" = auto ] && [ -z "$CHECKING" ]; then
        speed=$(python -c 'import json, sys; run = json.load(open(sys.argv[1]))
print(int(run["tokens"] / run["train_seconds"]))' "$PICOCHAT_HOME/checkpoints/base/done.json")
        RUN_RL=1
        if ((speed < 10#$RL_MIN_TOKENS_PER_S)); then
            RUN_RL=0 WHY_NO_RL="base trained at $speed tokens/s, under RL_MIN_TOKENS_PER_S=$RL_MIN_TOKENS_PER_S"
        fi
    fi
    MID="${MID_MINUTES:-2.5}"
    [ "$RUN_RL" != 0 ] || MID="${MID_MINUTES:-5.5}"
}

check_recipe 1 pipeline  # every stage's settings, before the first step
echo "== picochat local CPU pipeline; artifacts in $PICOCHAT_HOME"
pipeline
summary
echo "Talk to it: picochat chat   (or picochat serve, then open http://127.0.0.1:8000)"
