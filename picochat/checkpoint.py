"""Checkpoints: written atomically, kept to the last K, loaded with a fallback past corrupt files.

A checkpoint is one file, checkpoints/<stage>/step_000123.pt, holding everything needed to resume exactly:
model, optimizers, data-loader positions (one per rank), RNG states, step, elapsed time and the config.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from picochat.common import UserError, atomic_path, print0

PATTERN = re.compile(r"step_(\d+)\.pt$")


def checkpoint_dir(home: Path, stage: str) -> Path:
    return Path(home) / "checkpoints" / stage


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoint files in step order, oldest first."""
    directory = Path(directory)
    found = [p for p in directory.glob("step_*.pt") if PATTERN.search(p.name)]
    return sorted(found, key=lambda p: int(PATTERN.search(p.name).group(1)))


def save_checkpoint(directory: str | Path, step: int, state: dict, keep_last: int) -> Path:
    path = Path(directory) / f"step_{step:06d}.pt"
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    for old in list_checkpoints(directory)[:-keep_last]:
        old.unlink()
    return path


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # a damaged file fails in many ways inside torch.load: zip, pickle, EOF, ...
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"checkpoint {path} is corrupt or truncated ({reason})") from e
    missing = [key for key in ("model", "model_config", "train_state") if key not in checkpoint] \
        if isinstance(checkpoint, dict) else ["a dict"]
    if missing:
        raise UserError(f"{path} is not a picochat checkpoint (it lacks {', '.join(missing)})")
    return checkpoint


def load_latest(directory: str | Path, device: torch.device | str = "cpu") -> tuple[Path, dict]:
    """Newest readable checkpoint; corrupt ones are reported in one line each and skipped."""
    candidates = list_checkpoints(directory)
    if not candidates:
        raise UserError(f"no checkpoint to resume from in {directory}")
    for path in reversed(candidates):
        try:
            return path, load_checkpoint(path, device)
        except UserError as error:
            print0(f"warning: {error}; falling back to the previous checkpoint")
    raise UserError(f"every checkpoint in {directory} is corrupt; start again without --resume")


def resolve_resume(resume: str, directory: Path, device: torch.device | str = "cpu") -> tuple[Path, dict]:
    """--resume latest -> newest good checkpoint of this stage; --resume PATH -> exactly that file."""
    if resume == "latest":
        return load_latest(directory, device)
    return Path(resume), load_checkpoint(resume, device)
