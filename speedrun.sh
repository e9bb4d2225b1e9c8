#!/usr/bin/env bash
# picochat's production recipe, nanochat's speedrun: a depth-20 model (~561M parameters) on one GPU machine
# (1-8 GPUs), from a fresh clone: .venv -> FineWeb-Edu data + 65,536-token tokenizer (scripts/prepare_data.sh)
# -> base (torchrun) -> CORE eval -> mid -> SFT -> chat evals -> RL (RUN_RL=0 skips it) -> report.
#   bash speedrun.sh --dry-run            # every command with its resolved settings; runs nothing, no GPU needed
#   screen -L -Logfile speedrun.log bash speedrun.sh   # the real run: hours, so keep it out of the terminal
#   SPEEDRUN_SMOKE=1 bash speedrun.sh     # the same stages and flags at toy size on CPU (2 processes): ~1 minute
# Every GPU count trains the same model on the same batches: each optimizer step takes TOTAL_BATCH_SIZE tokens,
# and train.py makes up what the GPUs do not hold at once with gradient accumulation, grad_accum =
# TOTAL_BATCH_SIZE / (DEVICE_BATCH_SIZE x MAX_SEQ_LEN x GPUs): 1 step on 8 GPUs, 8 micro-steps on one.
# One GPU is then 8x slower, not worse. Re-running skips finished stages and evals (picochat's --if-needed:
# each records the fingerprints of what it was made from), trains again what changed since, and resumes an
# interrupted stage (Ctrl-C or SIGTERM make it checkpoint first; a crash loses at most SAVE_EVERY steps).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NAME=speedrun.sh
die() { echo "$NAME: error: $*" >&2; exit 2; }

usage() {
    cat <<EOF
usage: bash speedrun.sh [--dry-run] [--gpus N] [--help]

  --dry-run   print every command with its resolved settings and run nothing; works without a GPU
              (then it assumes --gpus, NGPU or 8 GPUs and says so)
  --gpus N    use N GPUs of this machine (default: all that nvidia-smi lists)

Knobs (environment variables; a flag wins over its variable):
  SPEEDRUN_SMOKE     1: the same stages, commands and flags at toy size on CPU: 2 torchrun processes (gloo),
                     offline data (DATA_SOURCE=offline CHAT_DATA=0), depth 1, a few steps per stage, home
                     ~/.cache/picochat-speedrun-smoke; a check of the recipe in about a minute, not a model.
                     The knobs below still win.
  NGPU               GPUs to use, like --gpus
  PICOCHAT_HOME      artifact root (default ~/.cache/picochat): data, tokenizer, checkpoints, evals, report
  DEPTH              Transformer blocks; width is 64 x DEPTH (default 20, ~561M parameters)
  NUM_SHARDS         FineWeb-Edu shards (default 240: enough for d20 at 20 tokens/parameter; ~450 for d26)
  VOCAB_SIZE         tokenizer vocabulary (default 65536)
  DEVICE_BATCH_SIZE  sequences per GPU per micro-step in base and mid (default 32; lower it if memory is
                     short: gradient accumulation keeps the total batch)
  MAX_SEQ_LEN        tokens per sequence (default 2048)
  TOTAL_BATCH_SIZE   tokens per optimizer step in base and mid (default 524288)
  BASE_ITERATIONS    base steps (default 0: as many as 20 tokens per parameter take, ~21,400 at d20)
  MID_ITERATIONS     mid-training steps (default 500, about one pass over the chat mixture with SmolTalk)
  SFT_ITERATIONS     SFT steps (default 300)
  SFT_DEVICE_BATCH_SIZE, SFT_TOTAL_BATCH_SIZE   SFT's batch (defaults 4 and 65536)
  SAVE_EVERY         steps between checkpoints, so a crash or preemption loses little (default 1000)
  CORE_PROBLEMS      items per CORE task in the base eval (default 0: all)
  EVAL_PROBLEMS      problems per chat eval task (default 0: all)
  RUN_RL             1: also run the RL stage after SFT and evaluate it (default 1; 0 skips it)
  RL_ITERATIONS      RL steps (default 250). A step samples 4 answers to each of 8 problems per GPU, with no
                     accumulation: 250 steps on 8 GPUs take 16,000 of the ~27,500 training problems
                     (arithmetic, SpellingBee, spelling, GSM8K); fewer GPUs see fewer problems
  RL_MAX_SEQ_LEN     RL's sequence length (default 384: the longest prompt, ~190 tokens for GSM8K, plus the
                     128 sampled tokens of --rl-max-tokens)
  WANDB_RUN          a name: log every stage to Weights & Biases, grouped under it (unset or "dummy": off)
  TRAIN_FLAGS        more \`picochat train\` flags for every stage, e.g. "--compile false"
  FORCE_BASE, FORCE_MID, FORCE_SFT, FORCE_RL   1: train that stage again (and so every stage after it)
  FORCE_EVAL         1: run the evals again even where the checkpoint and settings are unchanged
  TORCH_ELASTIC_SHUTDOWN_TIMEOUT   seconds torchrun gives its workers to checkpoint after Ctrl-C or SIGTERM
                     before it kills them (default here 300; torchrun's own is 30)
  NUM_SHARDS, VOCAB_SIZE, DATA_SOURCE, DOWNLOAD_WORKERS, CHAT_DATA, FORCE_TOKENIZER, HF_ENDPOINT, HF_TOKEN go to
  scripts/prepare_data.sh (run it first on a login node when GPU nodes have no internet).
  PICOCHAT_TORCH     what scripts/setup_env.sh installs as torch (default torch==2.13.0, PyPI's CUDA build on
                     Linux); where pip would get a CPU build: "torch==2.13.0 --index-url
                     https://download.pytorch.org/whl/<cuda tag>". PIP_INDEX_URL and other PIP_* reach pip too.
EOF
}

DRY_RUN="" GPUS_FLAG=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --gpus) [ $# -ge 2 ] || die "--gpus needs a number"; GPUS_FLAG=$2; shift ;;
        --gpus=*) GPUS_FLAG=${1#--gpus=} ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option '$1' (see bash speedrun.sh --help)" ;;
    esac
    shift
done

SMOKE="${SPEEDRUN_SMOKE:-0}"
[[ "$SMOKE" =~ ^[01]$ ]] || die "SPEEDRUN_SMOKE must be 0 or 1, got '$SMOKE'"
DEVICE=cuda
if [ "$SMOKE" = 1 ]; then  # toy sizes for the knobs the user did not set; CPU processes stand in for GPUs
    DEVICE=cpu
    export PICOCHAT_HOME="${PICOCHAT_HOME:-$HOME/.cache/picochat-speedrun-smoke}"
    export DATA_SOURCE="${DATA_SOURCE:-offline}" CHAT_DATA="${CHAT_DATA:-0}" VOCAB_SIZE="${VOCAB_SIZE:-2048}"
    NGPU="${NGPU:-2}" DEPTH="${DEPTH:-1}" MAX_SEQ_LEN="${MAX_SEQ_LEN:-128}" DEVICE_BATCH_SIZE="${DEVICE_BATCH_SIZE:-2}"
    TOTAL_BATCH_SIZE="${TOTAL_BATCH_SIZE:-1024}" SFT_DEVICE_BATCH_SIZE="${SFT_DEVICE_BATCH_SIZE:-2}"
    SFT_TOTAL_BATCH_SIZE="${SFT_TOTAL_BATCH_SIZE:-1024}" BASE_ITERATIONS="${BASE_ITERATIONS:-10}"
    MID_ITERATIONS="${MID_ITERATIONS:-4}" SFT_ITERATIONS="${SFT_ITERATIONS:-4}" RL_ITERATIONS="${RL_ITERATIONS:-2}"
    RL_MAX_SEQ_LEN="${RL_MAX_SEQ_LEN:-128}" CORE_PROBLEMS="${CORE_PROBLEMS:-4}" EVAL_PROBLEMS="${EVAL_PROBLEMS:-2}"
    # Eager: compiling on a CPU takes longer than these runs. RL samples short answers and checks few problems.
    TRAIN_FLAGS="--compile false --rl-max-tokens 32 --rl-eval-problems 4 ${TRAIN_FLAGS:-}"
fi
export PICOCHAT_HOME="${PICOCHAT_HOME:-$HOME/.cache/picochat}"
export NUM_SHARDS="${NUM_SHARDS:-240}" VOCAB_SIZE="${VOCAB_SIZE:-65536}" DATA_SOURCE="${DATA_SOURCE:-fineweb}"
DEPTH="${DEPTH:-20}"
DEVICE_BATCH_SIZE="${DEVICE_BATCH_SIZE:-32}"
MAX_SEQ_LEN="${MAX_SEQ_LEN:-2048}"
TOTAL_BATCH_SIZE="${TOTAL_BATCH_SIZE:-524288}"
BASE_ITERATIONS="${BASE_ITERATIONS:-0}"
MID_ITERATIONS="${MID_ITERATIONS:-500}"
SFT_ITERATIONS="${SFT_ITERATIONS:-300}"
SFT_DEVICE_BATCH_SIZE="${SFT_DEVICE_BATCH_SIZE:-4}"
SFT_TOTAL_BATCH_SIZE="${SFT_TOTAL_BATCH_SIZE:-65536}"
SAVE_EVERY="${SAVE_EVERY:-1000}"
CORE_PROBLEMS="${CORE_PROBLEMS:-0}"
EVAL_PROBLEMS="${EVAL_PROBLEMS:-0}"
RUN_RL="${RUN_RL:-1}"
RL_ITERATIONS="${RL_ITERATIONS:-250}"
RL_MAX_SEQ_LEN="${RL_MAX_SEQ_LEN:-384}"
WANDB_RUN="${WANDB_RUN:-}"
for knob in NUM_SHARDS VOCAB_SIZE DEPTH DEVICE_BATCH_SIZE MAX_SEQ_LEN TOTAL_BATCH_SIZE MID_ITERATIONS \
            SFT_ITERATIONS SFT_DEVICE_BATCH_SIZE SFT_TOTAL_BATCH_SIZE SAVE_EVERY RL_ITERATIONS RL_MAX_SEQ_LEN; do
    [[ "${!knob}" =~ ^[1-9][0-9]*$ ]] || die "$knob must be a positive whole number, got '${!knob}'"
done
for knob in CORE_PROBLEMS EVAL_PROBLEMS; do
    [[ "${!knob}" =~ ^[0-9]+$ ]] || die "$knob must be a whole number (0: all), got '${!knob}'"
done
[[ "$BASE_ITERATIONS" =~ ^[0-9]+$ ]] || die "BASE_ITERATIONS must be a whole number (0: 20 tokens per parameter), \
got '$BASE_ITERATIONS'"
[[ "$RUN_RL" =~ ^[01]$ ]] || die "RUN_RL must be 0 or 1, got '$RUN_RL'"

# ---- GPUs: the flag, else NGPU, else all that nvidia-smi lists; a dry run without any assumes 8
DETECTED=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU ' || true)
NGPU="${NGPU:-}"
[ -z "$GPUS_FLAG" ] || NGPU=$GPUS_FLAG
[ -z "$NGPU" ] || [[ "$NGPU" =~ ^[1-9][0-9]*$ ]] || die "--gpus / NGPU must be a positive whole number, got '$NGPU'"
if [ "$SMOKE" = 1 ]; then
    GPU_NOTE="CPU processes standing in for GPUs: SPEEDRUN_SMOKE=1"
elif (( DETECTED == 0 )); then
    [ -n "$DRY_RUN" ] || die "no NVIDIA GPU here (nvidia-smi -L lists none); this is the GPU recipe: on a CPU run \
scripts/local_cpu_train.sh, or see the commands with bash speedrun.sh --dry-run"
    GPU_NOTE="assumed: no GPU on this machine; --gpus N or NGPU sets it"
    NGPU="${NGPU:-8}"
elif [ -n "$NGPU" ]; then
    (( NGPU <= DETECTED )) || die "--gpus / NGPU is $NGPU but nvidia-smi lists only $DETECTED GPU(s)"
    GPU_NOTE="of $DETECTED on this machine"
else
    NGPU=$DETECTED GPU_NOTE="all that nvidia-smi lists"
fi

# Each stage's batch: "name device_batch total_batch". A total the GPUs cannot split evenly is refused
# before anything runs; train.py would refuse it too, but only after set-up and data.
BATCHES=("base $DEVICE_BATCH_SIZE $TOTAL_BATCH_SIZE" "mid $DEVICE_BATCH_SIZE $TOTAL_BATCH_SIZE"
         "sft $SFT_DEVICE_BATCH_SIZE $SFT_TOTAL_BATCH_SIZE")
for batch in "${BATCHES[@]}"; do
    read -r stage device_batch total <<<"$batch"
    per_micro_step=$((device_batch * MAX_SEQ_LEN * NGPU))
    (( total % per_micro_step == 0 )) || die "$stage: the total batch of $total tokens is not a multiple of \
device batch x MAX_SEQ_LEN x GPUs = $device_batch x $MAX_SEQ_LEN x $NGPU = $per_micro_step; pick a GPU count that divides \
it (1, 2, 4 or 8 with the default batch) or change the batch knobs (see --help)"
done

SECONDS=0
step() { printf '== [%dh%02dm%02ds] %s\n' $((SECONDS / 3600)) $((SECONDS % 3600 / 60)) $((SECONDS % 60)) "$*"; }
run() {  # print the command as it would be typed; run it unless this is a dry run
    local line
    printf -v line '%q ' "$@"
    echo "+ ${line% }"
    [ -n "$DRY_RUN" ] || "$@"
}

echo "picochat speedrun${DRY_RUN:+ (dry run: nothing is executed)}"
echo "settings: gpus=$NGPU ($GPU_NOTE) depth=$DEPTH vocab_size=$VOCAB_SIZE data=$DATA_SOURCE num_shards=$NUM_SHARDS"
for batch in "${BATCHES[@]}"; do  # gradient accumulation as train.py computes it
    read -r stage device_batch total <<<"$batch"
    echo "$stage batch: device_batch_size=$device_batch max_seq_len=$MAX_SEQ_LEN gpus=$NGPU" \
         "grad_accum=$((total / (device_batch * MAX_SEQ_LEN * NGPU))) total_batch_size=$total"
done
BASE_LENGTH=(--target-param-data-ratio 20) BASE_STEPS="~20 tokens/parameter (train.py prints the count)"
if (( BASE_ITERATIONS > 0 )); then
    BASE_LENGTH=(--num-iterations "$BASE_ITERATIONS") BASE_STEPS=$BASE_ITERATIONS
fi
echo "steps: base $BASE_STEPS, mid $MID_ITERATIONS, sft $SFT_ITERATIONS," \
     "rl $RL_ITERATIONS (max_seq_len=$RL_MAX_SEQ_LEN)"
echo "home: $PICOCHAT_HOME"

step "1/8 .venv (torch for $DEVICE)"
if [ -n "$DRY_RUN" ]; then
    gpu_check=", then a check that it sees the GPUs"
    [ "$DEVICE" = cuda ] || gpu_check=""
    echo "+ source scripts/setup_env.sh   # torch: ${PICOCHAT_TORCH:-torch==2.13.0}$gpu_check"
else
    source "$ROOT/scripts/setup_env.sh"
fi
if [ -z "$DRY_RUN" ] && [ "$DEVICE" = cuda ]; then  # the smoke's CPU processes need no CUDA
    problem=$(python - "$NGPU" <<'PY'
import sys, torch
wanted = int(sys.argv[1])
if torch.version.cuda is None:
    print(f"torch {torch.__version__} in .venv is a CPU-only build; rm -rf .venv and run again with "
          "PICOCHAT_TORCH set to a CUDA build (see --help)")
elif torch.cuda.device_count() < wanted:
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees {torch.cuda.device_count()} GPU(s), "
          f"{wanted} wanted; check the driver with nvidia-smi")
PY
)
    [ -z "$problem" ] || die "$problem"
fi
TRAIN_EXTRA=()
if [ -n "$WANDB_RUN" ] && [ "$WANDB_RUN" != dummy ]; then
    export WANDB_RUN_GROUP="$WANDB_RUN"  # wandb groups the runs of the stages (each named <stage>-d<depth>) under it
    TRAIN_EXTRA+=(--wandb true)
    if [ -n "$DRY_RUN" ] || ! python -c "import wandb" 2>/dev/null; then
        run python -m pip install -q -e ".[wandb]"
    fi
fi
# shellcheck disable=SC2206
TRAIN_EXTRA+=(${TRAIN_FLAGS:-})  # last, so they win

step "2/8 data and tokenizer (scripts/prepare_data.sh: skips what a login node already fetched)"
bash "$ROOT/scripts/prepare_data.sh" ${DRY_RUN:+--dry-run}

# Ctrl-C or a SIGTERM reaches torchrun, which passes it on to its workers (each in a session of its own): they
# finish the step, write a checkpoint and exit. A d20 checkpoint is ~5 GB: wait longer than torchrun's 30 s
# before it kills them.
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-300}"
# train_stage STAGE [flags]: picochat decides whether the stage is done, interrupted or stale (made from
# another corpus, tokenizer, previous stage or settings) with --if-needed; FORCE_<STAGE>=1 starts it again,
# and every later stage follows since what it was made from changed.
train_stage() {
    local stage=$1 force_var="FORCE_${1^^}" status=0
    shift
    local when=(--if-needed)
    [ -z "${!force_var:-}" ] || when=()
    run torchrun --standalone "--nproc_per_node=$NGPU" -m picochat.cli train --stage "$stage" "$@" --device "$DEVICE" \
        --save-every "$SAVE_EVERY" "${when[@]}" "${TRAIN_EXTRA[@]}" || status=$?
    [ -z "$DRY_RUN" ] || return 0
    if [ ! -f "$PICOCHAT_HOME/checkpoints/$stage/done.json" ]; then  # a signal, Ctrl-C or a crash
        echo "$stage: stopped before the end (exit status $status); run bash speedrun.sh again to resume" >&2
        exit $(( status ? status : 130 ))
    fi
}

# evaluate base|chat [flags]: --if-needed skips an eval made from the same checkpoint and settings;
# FORCE_EVAL=1 runs it again.
evaluate() {
    local when=(--if-needed)
    [ -z "${FORCE_EVAL:-}" ] || when=()
    run picochat eval "$@" --device "$DEVICE" "${when[@]}"
}

step "3/8 base model: depth $DEPTH"
train_stage base --depth "$DEPTH" --max-seq-len "$MAX_SEQ_LEN" \
    --device-batch-size "$DEVICE_BATCH_SIZE" --total-batch-size "$TOTAL_BATCH_SIZE" "${BASE_LENGTH[@]}" \
    --eval-every 250 --eval-tokens $((20 * TOTAL_BATCH_SIZE))
step "4/8 base eval: val bpb and CORE"
evaluate base --source base --max-problems "$CORE_PROBLEMS" --eval-tokens $((20 * TOTAL_BATCH_SIZE))
step "5/8 mid-training: $MID_ITERATIONS steps"
train_stage mid --max-seq-len "$MAX_SEQ_LEN" --device-batch-size "$DEVICE_BATCH_SIZE" \
    --total-batch-size "$TOTAL_BATCH_SIZE" --num-iterations "$MID_ITERATIONS"
evaluate chat --source mid --max-problems "$EVAL_PROBLEMS"
step "6/8 SFT: $SFT_ITERATIONS steps"
train_stage sft --max-seq-len "$MAX_SEQ_LEN" --device-batch-size "$SFT_DEVICE_BATCH_SIZE" \
    --total-batch-size "$SFT_TOTAL_BATCH_SIZE" --num-iterations "$SFT_ITERATIONS"
step "7/8 chat evals of the SFT model"
evaluate chat --source sft --max-problems "$EVAL_PROBLEMS"

step "8/8 RL ($RL_ITERATIONS steps) and the report card"
if [ "$RUN_RL" != 1 ]; then
    echo "rl: off (RUN_RL=0)"
else
    # An RL sequence is a prompt and one sampled answer (a batch is right-padded to its longest), so
    # RL_MAX_SEQ_LEN holds the longest: GSM8K's prompts reach ~190 tokens (arithmetic and spelling under 50),
    # plus --rl-max-tokens (128). Base's 2048 would only misstate RL's val rows and attention FLOPs.
    train_stage rl --max-seq-len "$RL_MAX_SEQ_LEN" --num-iterations "$RL_ITERATIONS"
    evaluate chat --source rl --max-problems "$EVAL_PROBLEMS"
fi
run picochat report
step "done${DRY_RUN:+ (dry run)}"
echo "Talk to it: picochat chat   (or picochat serve, then open http://127.0.0.1:8000)"
