#!/usr/bin/env bash
# Checks speedrun.slurm runs on every node (one task per node) before any GPU hour is spent: PICOCHAT_HOME is
# writable and shared, data and tokenizer are in it, the disk has room, torchrun and the GPUs are there.
# Each failure is one line naming the node, and exit 2. Also usable by hand on a login or compute node:
#   PICOCHAT_HOME=/shared/picochat DEVICE=cpu bash scripts/slurm_preflight.sh
# Environment: PICOCHAT_HOME, DEVICE (cuda|cpu), GPUS_PER_NODE, MIN_FREE_GB (50: a d20 checkpoint is ~5 GB,
# a stage keeps two plus the one being written, three stages), SHARED_MARKER (a file the first node wrote).
set -uo pipefail
NODE=$(hostname -s)
fail() { echo "slurm_preflight: error: $NODE: $*" >&2; exit 2; }

HOME_DIR="${PICOCHAT_HOME:-}"
[ -n "$HOME_DIR" ] || fail "PICOCHAT_HOME is not set; point it at a shared filesystem every node sees"
[ -d "$HOME_DIR" ] || fail "PICOCHAT_HOME=$HOME_DIR does not exist on this node"
if [ -n "${SHARED_MARKER:-}" ] && [ ! -f "$SHARED_MARKER" ]; then
    fail "PICOCHAT_HOME=$HOME_DIR is not shared: this node cannot see $SHARED_MARKER, written on the first node"
fi
probe=$(mktemp "$HOME_DIR/.preflight-$NODE.XXXXXX" 2>/dev/null) || fail "PICOCHAT_HOME=$HOME_DIR is not writable"
rm -f "$probe"
[ -f "$HOME_DIR/data/base/manifest.json" ] ||
    fail "no pretraining data in $HOME_DIR/data/base: run \`bash scripts/prepare_data.sh\` on the login node first"
[ -f "$HOME_DIR/tokenizer/tokenizer.json" ] ||
    fail "no tokenizer in $HOME_DIR/tokenizer: run \`bash scripts/prepare_data.sh\` on the login node first"

MIN_FREE_GB="${MIN_FREE_GB:-50}"
[[ "$MIN_FREE_GB" =~ ^[0-9]+$ ]] || fail "MIN_FREE_GB must be a whole number of GB, got '$MIN_FREE_GB'"
free_gb=$(df -Pk "$HOME_DIR" | awk 'NR == 2 { print int($4 / 1048576) }')
[ "$free_gb" -ge "$MIN_FREE_GB" ] ||
    fail "only $free_gb GB free in $HOME_DIR, MIN_FREE_GB=$MIN_FREE_GB wanted for checkpoints"

command -v torchrun >/dev/null || fail "torchrun is not on PATH: create picochat's .venv (bash scripts/setup_env.sh)"
if [ "${DEVICE:-cuda}" != cpu ]; then
    wanted="${GPUS_PER_NODE:-8}"
    gpus=$(python -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
    [ "$gpus" -ge "$wanted" ] ||
        fail "torch sees $gpus GPU(s), GPUS_PER_NODE=$wanted wanted: check --gpus-per-node and torch's CUDA build"
fi
echo "slurm_preflight: $NODE ok: $free_gb GB free in $HOME_DIR"
