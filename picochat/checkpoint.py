"""Checkpoints: what one holds, how it is written and read, and who may write them.

A checkpoint is one file, checkpoints/<stage>/step_000123.pt, holding everything needed to resume exactly:
model, optimizers, data-loader positions (one per rank), RNG states, step, elapsed time, the run's
settings and fingerprints of its corpus and tokenizer. Files are written atomically and kept to the last K;
loading falls back past corrupt files. One run at a time owns a stage directory (StageLock), and nothing
here deletes or moves a checkpoint another process may be writing.

    path, checkpoint = load_latest(checkpoint_dir(home, "base"))
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import re
import socket
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from picochat.common import Runtime, UserError, atomic_path, print0

PATTERN = re.compile(r"step_(\d+)\.pt$")
REQUIRED_KEYS = ("model", "model_config", "train_state")


def checkpoint_dir(home: Path, stage: str) -> Path:
    return Path(home) / "checkpoints" / stage


def checkpoint_step(path: Path) -> int:
    return int(PATTERN.search(path.name).group(1))


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoint files in step order, oldest first."""
    found = [p for p in Path(directory).glob("step_*.pt") if PATTERN.search(p.name)]
    return sorted(found, key=checkpoint_step)


# ----------------------------------------------------------------------------------------------------------
# Writing and reading

def save_checkpoint(directory: str | Path, step: int, state: dict, keep_last: int) -> Path:
    """Write step_<step>.pt atomically, then prune to the newest keep_last. Call it only while holding the
    directory's StageLock: then every file pruned here belongs to this run."""
    path = Path(directory) / f"step_{step:06d}.pt"
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    for old in list_checkpoints(directory)[:-keep_last]:
        old.unlink()
    return path


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu", mmap: bool = False) -> dict:
    """mmap=True maps the file instead of reading it: what is never touched (the optimizer state, for
    inference) never takes memory."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except Exception as e:  # a damaged file fails in many ways inside torch.load: zip, pickle, EOF, ...
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"checkpoint {path} is corrupt or truncated ({reason})") from e
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint] if isinstance(checkpoint, dict) else ["a dict"]
    if missing:
        raise UserError(f"{path} is not a picochat checkpoint (it lacks {', '.join(missing)})")
    return checkpoint


def load_latest(directory: str | Path, device: torch.device | str = "cpu", mmap: bool = False) -> tuple[Path, dict]:
    """Newest readable checkpoint; corrupt ones are reported in one line each and skipped."""
    candidates = list_checkpoints(directory)
    if not candidates:
        raise UserError(f"no checkpoint to resume from in {directory}")
    for path in reversed(candidates):
        try:
            return path, load_checkpoint(path, device, mmap)
        except UserError as error:
            print0(f"warning: {error}; falling back to the previous checkpoint")
    raise UserError(f"every checkpoint in {directory} is corrupt; start again without --resume")


def resolve_resume(resume: str, directory: Path, device: torch.device | str = "cpu") -> tuple[Path, dict]:
    """--resume latest -> newest good checkpoint of this stage; --resume PATH -> exactly that file."""
    if resume == "latest":
        return load_latest(directory, device)
    return Path(resume), load_checkpoint(resume, device)


# ----------------------------------------------------------------------------------------------------------
# Payload: what a checkpoint holds, and putting it back

def make_payload(model, optimizers: list, loader_states: list[dict], train_state, configs: dict,
                 fingerprints: dict, stage: str, runtime: Runtime) -> dict:
    """configs: {"config": TrainConfig, "optim_config": OptimConfig}, stored as plain dicts."""
    return {
        "model": model.state_dict(),
        "optimizers": [optimizer.state_dict() for optimizer in optimizers],
        "loaders": loader_states,  # one per rank: each reads its own part of the data
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state() if runtime.device.type == "cuda" else None},
        "train_state": asdict(train_state),
        "model_config": asdict(model.config),
        **{name: asdict(config) for name, config in configs.items()},
        "fingerprints": fingerprints,
        "stage": stage,
    }


def load_model_weights(model, checkpoint: dict) -> None:
    """The checkpoint's weights into a model of the same shape (the sequence length may differ)."""
    ours, theirs = asdict(model.config), {**checkpoint["model_config"], "sequence_len": model.config.sequence_len}
    if theirs != ours:
        diff = ", ".join(f"{k}: checkpoint {theirs.get(k)} vs now {ours[k]}" for k in ours if theirs.get(k) != ours[k])
        raise UserError(f"checkpoint model does not match the flags ({diff}); use the same --depth etc.")
    model.load_state_dict(checkpoint["model"])


def restore(checkpoint: dict, model, optimizers: list, runtime: Runtime) -> tuple[dict, dict]:
    """Put weights, optimizer state and RNG back; returns (train state dict, this rank's loader state)."""
    loaders = checkpoint["loaders"]
    if len(loaders) != runtime.world_size:
        raise UserError(f"checkpoint was written by {len(loaders)} process(es); resume with the same number "
                        f"(now {runtime.world_size})")
    load_model_weights(model, checkpoint)
    for optimizer, saved in zip(optimizers, checkpoint["optimizers"]):
        optimizer.load_state_dict(saved)
    torch.set_rng_state(checkpoint["rng"]["torch"].cpu())
    random.setstate(checkpoint["rng"]["python"])
    if runtime.device.type == "cuda" and checkpoint["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(checkpoint["rng"]["cuda"].cpu())
    return checkpoint["train_state"], loaders[runtime.rank]


def check_vocab(tokenizer, checkpoint: dict, path: Path) -> None:
    """A model reads token ids: another tokenizer's ids would be silently wrong, so refuse it."""
    trained_with, have = checkpoint["model_config"]["vocab_size"], tokenizer.vocab_size
    if trained_with != have:
        raise UserError(f"the tokenizer has {have:,} tokens but {path} was trained with {trained_with:,}; "
                        "use the tokenizer it was trained with")


def check_fingerprints(checkpoint: dict, current: dict) -> None:
    """Resuming on other data or another tokenizer would silently train a different run: refuse."""
    saved = checkpoint.get("fingerprints", {})
    for name, value in current.items():
        if name in saved and saved[name] != value:
            raise UserError(f"the {name} changed since this checkpoint was written ({saved[name][:12]} then, "
                            f"{value[:12]} now); resume needs the same {name}, or start a new run without --resume")


# ----------------------------------------------------------------------------------------------------------
# Done, interrupted or stale: what `picochat train --if-needed` does with a stage directory

# The inputs a stage is made from, as fingerprints: done.json and every checkpoint record them.
INPUT_NAMES = {"corpus": "the corpus", "tokenizer": "the tokenizer",
               "previous": "the output of the step before it", "settings": "the settings"}


def file_fingerprint(path: Path) -> str:
    """sha256 of a small file (a done.json), or "" where there is none."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""


def changed_input(recorded: dict, current: dict) -> str | None:
    """The first input whose fingerprint differs from what was recorded, or None when all match."""
    return next((name for name, value in current.items() if recorded.get(name) != value), None)


def plan_stage(directory: Path, inputs: dict) -> tuple[str, str]:
    """("done" | "resume" | "start", why). Done when done.json records these inputs; resume when the newest
    good checkpoint of an unfinished run does; otherwise start (a stale or foreign run is set aside)."""
    done = directory / "done.json"
    if done.exists():
        try:
            recorded = json.loads(done.read_text())["inputs"]
        except (OSError, ValueError, KeyError, TypeError):
            return "start", f"{done} does not record what the stage was made from; training again"
        changed = changed_input(recorded, inputs)
        if changed is None:
            return "done", f"already trained ({done})"
        return "start", f"stale: {INPUT_NAMES[changed]} changed since it was trained; training again"
    if not list_checkpoints(directory):
        return "start", "starting"
    try:
        path, checkpoint = load_latest(directory, mmap=True)
    except UserError:
        return "start", "no readable checkpoint of the interrupted run; starting again"
    changed = changed_input(checkpoint.get("fingerprints", {}), inputs)
    if changed is None:
        return "resume", f"resuming the interrupted run from {path}"
    return "start", f"{INPUT_NAMES[changed]} changed since the interrupted run started; starting again"


# ----------------------------------------------------------------------------------------------------------
# Owning a stage directory

class StageLock:
    """One run per stage directory, held with an OS file lock (flock) on <dir>/.lock.

    The kernel drops the lock when the process ends, however it ends (kill -9 included), so a crashed run
    never leaves a stale lock. The file also names the holder, for the error a second run prints."""

    def __init__(self, directory: Path, enabled: bool = True):
        self.directory, self.enabled, self.file = Path(directory), enabled, None

    def __enter__(self) -> "StageLock":
        if not self.enabled:  # e.g. ranks > 0 under torchrun: rank 0 holds it for the job
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        self.file = open(self.directory / ".lock", "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "unknown process"
            self.file.close()
            raise UserError(f"{self.directory} is in use by another run ({holder}); wait for it to finish "
                            "or stop it, or give this run another --home") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()} on {socket.gethostname()}: {' '.join(sys.argv)[:200]}\n")
        self.file.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None


def set_aside(paths: list[Path], directory: Path, label: str) -> Path | None:
    """Move files into <directory>/<label>-<date>-<time>/ rather than deleting a user's checkpoints."""
    paths = [p for p in paths if p.exists()]
    if not paths:
        return None
    folder = directory / time.strftime(f"{label}-%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        path.rename(folder / path.name)
    return folder


def set_aside_previous_run(directory: Path) -> None:
    """A fresh run must not mix with an older run's checkpoints (--resume would pick those up)."""
    old = list_checkpoints(directory) + [directory / "done.json", directory / "metrics.jsonl"]
    folder = set_aside(old, directory, "previous")
    if folder:
        print0(f"fresh start: moved the previous run of this stage to {folder}")


def set_aside_newer(directory: Path, resumed_from: Path) -> None:
    """Resuming from an older checkpoint abandons the newer ones: move them so a later --resume can't
    pick them up. A finished run's done.json goes with them: the run is no longer finished."""
    if resumed_from.parent.resolve() != directory.resolve():
        newer = list_checkpoints(directory)  # resuming from elsewhere: everything here is abandoned
    else:
        step = checkpoint_step(resumed_from) if PATTERN.search(resumed_from.name) else -1
        newer = [p for p in list_checkpoints(directory) if checkpoint_step(p) > step]
    if not newer:
        return
    folder = set_aside(newer + [directory / "done.json"], directory, "abandoned")
    print0(f"resuming from an older checkpoint: moved {len(newer)} newer checkpoint(s) to {folder}")
