#!/usr/bin/env bash
# Create or reuse .venv and install picochat into it. Sourced by local_cpu_train.sh and test.sh.
# torch goes in first, pinned: `torch==2.13.0` is the CPU build these scripts are tested with (set
# PICOCHAT_TORCH to choose another, e.g. "torch==2.13.0 --index-url ..." for a CUDA wheel).
# Re-running is fast: nothing is reinstalled unless pyproject.toml or PICOCHAT_EXTRAS changed.
# PICOCHAT_EXTRAS: the optional dependency groups to install (default "test"; .ci/run adds hf and lm-eval).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! python -c "import torch" >/dev/null 2>&1; then
    echo "setup: installing ${PICOCHAT_TORCH:-torch==2.13.0}"
    # shellcheck disable=SC2086
    python -m pip install -q ${PICOCHAT_TORCH:-torch==2.13.0}
fi
STAMP=.venv/.picochat-installed EXTRAS="${PICOCHAT_EXTRAS:-test}"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ "$(cat "$STAMP")" != "$EXTRAS" ] ||
        ! python -c "import picochat" >/dev/null 2>&1; then
    echo "setup: installing picochat and its dependencies ($EXTRAS)"
    python -m pip install -q -e ".[$EXTRAS]"
    echo "$EXTRAS" > "$STAMP"
fi
