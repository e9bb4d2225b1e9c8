#!/usr/bin/env bash
# usage: bash speedrun.sh [--dry-run] [--gpus N] [--help]
# picochat's production recipe, nanochat's speedrun: a d20 model (~561M parameters) on 1-8 GPUs from a fresh clone:
# .venv -> FineWeb-Edu data and tokenizer (scripts/prepare_data.sh) -> base -> CORE -> mid -> SFT -> chat evals ->
# RL -> report. Any GPU count trains the same model (gradient accumulation makes up TOTAL_BATCH_SIZE). A re-run
# skips finished stages and evals, redoes what changed, resumes an interrupted stage (a signal checkpoints it).
#   --dry-run  print each command with its settings, checked by picochat, and run nothing; no GPU needed
#   --gpus N   use N GPUs (default: NGPU, else all that nvidia-smi lists; a dry run without any assumes 8)
#   screen -L -Logfile speedrun.log bash speedrun.sh   # the real run takes hours: keep it out of the terminal
# Knobs (environment variables; picochat checks them all before anything runs):
#   SPEEDRUN_SMOKE=1  the same stages and flags at toy size on CPU (2 processes, offline corpus, CHAT_DATA=0,
#                     home ~/.cache/picochat-speedrun-smoke): a check of the recipe in a minute, not a model
#   PICOCHAT_HOME (~/.cache/picochat), NUM_SHARDS (240: d20's 20 tokens per parameter), VOCAB_SIZE (65536),
#   CORE_PROBLEMS, EVAL_PROBLEMS (items per CORE task, problems per chat eval task; 0, the default: all)
#   RUN_RL=0  skip RL (default 1). RL_ITERATIONS (250): a step samples 4 answers to each of 8 problems per GPU;
#             RL_MAX_SEQ_LEN (384: GSM8K's longest prompt, ~190 tokens, plus 128 sampled ones)
#   WANDB_RUN    a name: every stage logs to Weights & Biases, grouped under it (unset or "dummy": off)
#   TRAIN_FLAGS  more `picochat train` flags for every stage, e.g. "--compile false"
#   FORCE_BASE, FORCE_MID, FORCE_SFT, FORCE_RL=1: train it again (and the stages after it); FORCE_EVAL=1: evals
#   TORCH_ELASTIC_SHUTDOWN_TIMEOUT  seconds torchrun gives its workers to checkpoint after a signal (here 300)
#   NUM_SHARDS, VOCAB_SIZE, DATA_SOURCE, DOWNLOAD_WORKERS, CHAT_DATA, FORCE_TOKENIZER, HF_ENDPOINT, HF_TOKEN and
#   PICOCHAT_TORCH (the torch that scripts/setup_env.sh installs) reach scripts/prepare_data.sh: see its --help.
#   The sizes (scripts/recipe.sh; scripts/speedrun.slurm uses the same):
set -euo pipefail
NAME=speedrun.sh DRY_RUN="" GPUS_FLAG=""
source "$(dirname "${BASH_SOURCE[0]}")/scripts/recipe.sh"
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --gpus) [ $# -ge 2 ] || die "--gpus needs a number"; GPUS_FLAG=$2; shift ;;
        --gpus=*) GPUS_FLAG=${1#--gpus=} ;;
        -h|--help) usage sizes; exit 0 ;;
        *) die "unknown option '$1' (see bash speedrun.sh --help)" ;;
    esac
    shift
done
NGPU="${NGPU:-}" SMOKE="${SPEEDRUN_SMOKE:-0}" RUN_RL="${RUN_RL:-1}" DEVICE=cuda
[ -z "$GPUS_FLAG" ] || NGPU=$GPUS_FLAG  # the flag wins over the variable
[[ "$SMOKE" =~ ^[01]$ ]] || die "SPEEDRUN_SMOKE must be 0 or 1, got '$SMOKE'"
[[ "$RUN_RL" =~ ^[01]$ ]] || die "RUN_RL must be 0 or 1, got '$RUN_RL'"  # picochat checks the other knobs
[ -z "$NGPU" ] || [[ "$NGPU" =~ ^[1-9][0-9]*$ ]] || die "--gpus / NGPU must be a positive whole number, got '$NGPU'"
# SPEEDRUN_SMOKE: toy sizes where the user set none, CPU processes for GPUs, eager (compiling outlasts these runs)
if [ "$SMOKE" = 1 ]; then
    DEVICE=cpu NGPU="${NGPU:-2}" PICOCHAT_HOME="${PICOCHAT_HOME:-$HOME/.cache/picochat-speedrun-smoke}"
    defaults DATA_SOURCE=offline CHAT_DATA=0 VOCAB_SIZE=2048 DEPTH=1 MAX_SEQ_LEN=128 DEVICE_BATCH_SIZE=2 \
        TOTAL_BATCH_SIZE=1024 SFT_DEVICE_BATCH_SIZE=2 SFT_TOTAL_BATCH_SIZE=1024 BASE_ITERATIONS=10 MID_ITERATIONS=4 \
        SFT_ITERATIONS=4 RL_ITERATIONS=2 RL_MAX_SEQ_LEN=128 CORE_PROBLEMS=4 EVAL_PROBLEMS=2
    TRAIN_FLAGS="--compile false --rl-max-tokens 32 --rl-eval-problems 4 ${TRAIN_FLAGS:-}"
fi
export PICOCHAT_HOME="${PICOCHAT_HOME:-$HOME/.cache/picochat}"
# torchrun passes Ctrl-C or SIGTERM on to its workers: they finish the step, checkpoint (a d20 one is ~5 GB) and
# exit, so it waits TORCH_ELASTIC_SHUTDOWN_TIMEOUT for them rather than its own 30 s
defaults NUM_SHARDS=240 VOCAB_SIZE=65536 DATA_SOURCE=fineweb CORE_PROBLEMS=0 EVAL_PROBLEMS=0 RL_ITERATIONS=250 \
    RL_MAX_SEQ_LEN=384 TORCH_ELASTIC_SHUTDOWN_TIMEOUT=300
gpu_sizes

DETECTED=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU ' || true)
if [ "$SMOKE" = 1 ]; then GPU_NOTE="CPU processes standing in for GPUs: SPEEDRUN_SMOKE=1"
elif ((DETECTED == 0)); then
    [ -n "$DRY_RUN" ] || die "no NVIDIA GPU here (nvidia-smi -L lists none); this is the GPU recipe: on a CPU run \
scripts/local_cpu_train.sh, or see the commands with bash speedrun.sh --dry-run"
    GPU_NOTE="assumed: no GPU on this machine; --gpus N or NGPU sets it" NGPU="${NGPU:-8}"
elif [ -n "$NGPU" ]; then
    ((NGPU <= DETECTED)) || die "--gpus / NGPU is $NGPU but nvidia-smi lists only $DETECTED GPU(s)"
    GPU_NOTE="of $DETECTED on this machine"
else NGPU=$DETECTED GPU_NOTE="all that nvidia-smi lists"
fi
LAUNCH=(torchrun --standalone "--nproc_per_node=$NGPU" -m picochat.cli) EVAL_FLAGS=(--device "$DEVICE")
STAGE_FLAGS=(--device "$DEVICE" --save-every "$SAVE_EVERY") WANDB=""
[ -z "${WANDB_RUN:-}" ] || [ "$WANDB_RUN" = dummy ] || WANDB=1 STAGE_FLAGS+=(--wandb true)

stages() {
    step "2/7 base model: depth $DEPTH"; gpu_stage base
    step "3/7 base eval: val bpb and CORE"
    evaluate base --source base --max-problems "$CORE_PROBLEMS" --eval-tokens "$EVAL_TOKENS"
    step "4/7 mid-training: $MID_ITERATIONS steps"; gpu_stage mid
    evaluate chat --source mid --max-problems "$EVAL_PROBLEMS"
    step "5/7 SFT: $SFT_ITERATIONS steps"; gpu_stage sft
    step "6/7 chat evals of the SFT model"; evaluate chat --source sft --max-problems "$EVAL_PROBLEMS"
    step "7/7 RL ($RL_ITERATIONS steps) and the report card"
    if [ "$RUN_RL" = 1 ]; then  # RL's sequences are one prompt and one sampled answer: RL_MAX_SEQ_LEN, not 2048
        train_stage rl --max-seq-len "$RL_MAX_SEQ_LEN" --num-iterations "$RL_ITERATIONS"
        evaluate chat --source rl --max-problems "$EVAL_PROBLEMS"
    else echo "rl: off (RUN_RL=0)"; fi
    run picochat report
}

# A real run makes .venv first, so that picochat checks every setting (and sees the GPUs) before the hours start.
[ -n "$DRY_RUN" ] || source "$REPO/scripts/setup_env.sh"
NEED_GPUS=(); [ -n "$DRY_RUN" ] || [ "$DEVICE" = cpu ] || NEED_GPUS=(--need-gpus)
BATCHES=$(check_recipe "$NGPU" stages "${NEED_GPUS[@]}") || exit 2
echo "picochat speedrun${DRY_RUN:+ (dry run: nothing is executed)}, home $PICOCHAT_HOME"
echo "settings: gpus=$NGPU ($GPU_NOTE) depth=$DEPTH vocab_size=$VOCAB_SIZE data=$DATA_SOURCE num_shards=$NUM_SHARDS"
echo "$BATCHES"
BASE_STEPS=$BASE_ITERATIONS; [ "$BASE_STEPS" != 0 ] || BASE_STEPS="~20 tokens/parameter (train.py prints the count)"
echo "steps: base $BASE_STEPS, mid $MID_ITERATIONS, sft $SFT_ITERATIONS, rl $RL_ITERATIONS (max_seq_len=$RL_MAX_SEQ_LEN)"
[ -z "$DRY_RUN" ] || echo "+ source scripts/setup_env.sh   # torch: ${PICOCHAT_TORCH:-torch==2.13.0}"
[ -z "$WANDB" ] || run python -m pip install -q -e ".[wandb]"  # picochat's wandb extra (quick once installed)
step "1/7 data and tokenizer (scripts/prepare_data.sh: skips what a login node already fetched)"
bash "$REPO/scripts/prepare_data.sh" ${DRY_RUN:+--dry-run}
stages
[ -n "$DRY_RUN" ] || summary
echo "Talk to it: picochat chat   (or picochat serve, then open http://127.0.0.1:8000)"
