# shellcheck shell=bash
# What the three launch recipes share: speedrun.sh, scripts/local_cpu_train.sh and scripts/speedrun.slurm source
# it. A recipe sets NAME (for its messages), LAUNCH (how a `picochat` command starts: picochat, torchrun, srun),
# STAGE_FLAGS (every stage's) and DRY_RUN, and writes its stages as a function. check_recipe walks that function
# once without running anything, so that picochat checks every setting before the first long step.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHECKING="" CHECKED=() STEP_NAMES=() STEP_STARTS=() STAGE_FLAGS=() EVAL_FLAGS=()
SECONDS=0

die() { echo "$NAME: error: $*" >&2; exit 2; }
usage() {  # the script's top comment; `usage sizes` adds the GPU sizes' knobs (gpu_sizes below)
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
    [ "${1:-}" != sizes ] || sed -n 's/^#: /    /p' "$REPO/scripts/recipe.sh"
}

defaults() {  # defaults NAME=VALUE ...: sets and exports each NAME the user left unset or empty
    local pair name
    for pair in "$@"; do name=${pair%%=*}; [ -n "${!name:-}" ] || export "$pair"; done
}
clock() {  # 9m05s, or 2h09m05s
    if (($1 >= 3600)); then printf '%dh%02dm%02ds' $(($1 / 3600)) $(($1 % 3600 / 60)) $(($1 % 60))
    else printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); fi
}
step() {  # the time since the start, then the step; remembered for the summary
    [ -z "$CHECKING" ] || return 0
    echo "== [$(clock "$SECONDS")] $*"
    STEP_NAMES+=("$*") STEP_STARTS+=("$SECONDS")
}
summary() {  # the wall time of each step (a stage that was already done takes seconds)
    local i end
    printf '\n| step | wall |\n|---|---:|\n'
    for i in "${!STEP_NAMES[@]}"; do
        end=${STEP_STARTS[$((i + 1))]:-$SECONDS}
        printf '| %s | %s |\n' "${STEP_NAMES[$i]}" "$(clock $((end - STEP_STARTS[i])))"
    done
    printf '| total | %s |\n' "$(clock "$SECONDS")"
}

run() {  # print the command as it would be typed, then run it; a dry run only prints, a check only collects
    local line
    printf -v line '%q ' "$@"
    if [ -n "$CHECKING" ]; then CHECKED+=("${line% }"); return 0; fi
    echo "+ ${line% }"
    [ -n "$DRY_RUN" ] || "$@"
}

# check_recipe PROCESSES FUNCTION [--need-gpus]: every command FUNCTION would run, checked by picochat's own
# parsers and config classes (scripts/check_commands.py), the batch split over PROCESSES included; prints each
# stage's batch, or one error line and exits 2.
check_recipe() {
    local python=python3
    [ ! -x "$REPO/.venv/bin/python" ] || python="$REPO/.venv/bin/python"
    CHECKING=1 CHECKED=()
    "$2" >/dev/null
    CHECKING=""
    "$python" "$REPO/scripts/check_commands.py" --name "$NAME" --processes "$1" "${@:3}" -- "${CHECKED[@]}" ||
        exit 2
}

# train_stage STAGE [flags]: `picochat train --if-needed` skips the stage if it is done, resumes it if it was
# interrupted, or starts it again if it is stale (made from another corpus, tokenizer, previous stage or
# settings). FORCE_<STAGE>=1 starts it again, and every later stage follows: what it was made from changed.
train_stage() {
    local stage=$1 force="FORCE_${1^^}" when=(--if-needed) extra=() status=0
    shift
    [ -z "${!force:-}" ] || when=()
    read -ra extra <<<"${TRAIN_FLAGS:-}"  # last, so they win
    run "${LAUNCH[@]}" train --stage "$stage" "$@" "${STAGE_FLAGS[@]}" "${when[@]}" "${extra[@]}" || status=$?
    [ -z "$DRY_RUN$CHECKING" ] || return 0
    if [ "$status" != 0 ] || [ ! -f "$PICOCHAT_HOME/checkpoints/$stage/done.json" ]; then
        stage_stopped "$stage" "$status"
    fi
}
stage_stopped() {  # STAGE STATUS: a crash, or a signal (Ctrl-C, SIGTERM) that made it checkpoint and stop
    echo "$1: stopped before the end (exit status $2); run this script again to resume" >&2
    exit $(($2 ? $2 : 130))
}

# evaluate base|chat [flags]: --if-needed skips an eval of the same checkpoint and settings; FORCE_EVAL=1 runs it.
evaluate() {
    local when=(--if-needed)
    [ -z "${FORCE_EVAL:-}" ] || when=()
    run picochat eval "$@" "${EVAL_FLAGS[@]}" "${when[@]}"
}

# The GPU recipe's sizes (speedrun.sh and scripts/speedrun.slurm: nanochat's d20) where the user set none:
#: DEPTH (20: width 64 x DEPTH), DEVICE_BATCH_SIZE (32 sequences per GPU: lower it if memory is short),
#: MAX_SEQ_LEN (2048), TOTAL_BATCH_SIZE (524288 tokens per base or mid step: pick a GPU count that divides it),
#: BASE_ITERATIONS (0: 20 tokens per parameter), MID_ITERATIONS (500), SFT_ITERATIONS (300),
#: SFT_DEVICE_BATCH_SIZE (4), SFT_TOTAL_BATCH_SIZE (65536), SAVE_EVERY (1000 steps between checkpoints)
gpu_sizes() {
    defaults DEPTH=20 MAX_SEQ_LEN=2048 DEVICE_BATCH_SIZE=32 TOTAL_BATCH_SIZE=524288 BASE_ITERATIONS=0 \
        MID_ITERATIONS=500 SFT_ITERATIONS=300 SFT_DEVICE_BATCH_SIZE=4 SFT_TOTAL_BATCH_SIZE=65536 SAVE_EVERY=1000
    # base's val bpb reads 20 steps' worth of tokens (a TOTAL_BATCH_SIZE that is no number goes on, for picochat)
    EVAL_TOKENS=$TOTAL_BATCH_SIZE
    [[ ! "$TOTAL_BATCH_SIZE" =~ ^[0-9]+$ ]] || EVAL_TOKENS=$((20 * 10#$TOTAL_BATCH_SIZE))
}
gpu_stage() {  # gpu_stage base|mid|sft: the stage with the GPU recipe's sizes
    local length=(--target-param-data-ratio 20)  # BASE_ITERATIONS=0: as many steps as 20 tokens per parameter
    [ "$BASE_ITERATIONS" = 0 ] || length=(--num-iterations "$BASE_ITERATIONS")
    case "$1" in
        # two matrices, as nanochat's d20: tying (picochat's default) was measured on the 2-3 M-param CPU model only
        base) train_stage base --depth "$DEPTH" --max-seq-len "$MAX_SEQ_LEN" --device-batch-size "$DEVICE_BATCH_SIZE" \
                  --total-batch-size "$TOTAL_BATCH_SIZE" "${length[@]}" --eval-every 250 --eval-tokens "$EVAL_TOKENS" \
                  --tie-embeddings false ;;
        mid) train_stage mid --max-seq-len "$MAX_SEQ_LEN" --device-batch-size "$DEVICE_BATCH_SIZE" \
                 --total-batch-size "$TOTAL_BATCH_SIZE" --num-iterations "$MID_ITERATIONS" ;;
        sft) train_stage sft --max-seq-len "$MAX_SEQ_LEN" --device-batch-size "$SFT_DEVICE_BATCH_SIZE" \
                 --total-batch-size "$SFT_TOTAL_BATCH_SIZE" --num-iterations "$SFT_ITERATIONS" ;;
    esac
}
