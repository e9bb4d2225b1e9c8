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
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist

from picochat.common import UserError, atomic_path, picochat_home
from picochat.config import flag_name, option
from picochat.engine import Engine
from picochat.model import GPT, GPTConfig, heads_for
from picochat.optim import OptimConfig
from picochat.runtime import Runtime, inference_runtime, print0
from picochat.stages import STAGES
from picochat.tokenizer import META_FILE, Tokenizer, load_tokenizer, tokenizer_dir

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
    """configs: {"config": TrainConfig, "optim_config": OptimConfig, and a stage's own "stage_config"}, stored
    as plain dicts."""
    return {
        "model": model.state_dict(),
        "optimizers": [optimizer.state_dict() for optimizer in optimizers],
        "loaders": loader_states,  # one per rank: each reads its own part of the data
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state() if runtime.device.type == "cuda" else None},
        "train_state": asdict(train_state),
        "model_config": asdict(model.config),
        **{name: asdict(config) for name, config in configs.items() if config is not None},
        "fingerprints": fingerprints,
        "stage": stage,
    }


def save_run(directory: Path, step: int, model, optimizers: list, loader, train_state, configs: dict,
             fingerprints: dict, stage: str, keep_last: int, runtime: Runtime) -> None:
    """Every rank's loader position and rank 0's copy of the rest, in one checkpoint. Every rank checks the
    weights (they are identical), so all raise together instead of hanging in barrier()."""
    loader_states = [None] * runtime.world_size
    if runtime.distributed:
        dist.all_gather_object(loader_states, loader.state_dict())
    else:
        loader_states = [loader.state_dict()]
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise UserError(f"weights are not finite at step {step}; not writing a checkpoint")
    if runtime.is_main:
        payload = make_payload(model, optimizers, loader_states, train_state, configs, fingerprints, stage, runtime)
        save_checkpoint(directory, step, payload, keep_last)
    if runtime.distributed:
        dist.barrier()


def continued_model_config(start: tuple[Path, dict], tokenizer, max_seq_len: int) -> GPTConfig:
    """The shape of a model that goes on from a checkpoint (a later stage, or a resume). Its sequence length,
    the context the engine and server allow, is the longest it has trained at: a stage with longer rows
    raises it (the rotary table is computed, not learnt), one with shorter rows (RL's) keeps it."""
    path, checkpoint = start
    check_vocab(tokenizer, checkpoint, path)
    longest = max(max_seq_len, checkpoint["model_config"]["sequence_len"])
    return GPTConfig(**{**checkpoint["model_config"], "sequence_len": longest})


def load_model_weights(model, checkpoint: dict) -> None:
    """The checkpoint's weights into a model of the same shape (the sequence length may differ)."""
    # Through GPTConfig, so a checkpoint from before a field existed reads as that field's default.
    theirs = asdict(GPTConfig(**{**checkpoint["model_config"], "sequence_len": model.config.sequence_len}))
    ours = asdict(model.config)
    if theirs != ours:
        diff = ", ".join(f"{k}: checkpoint {theirs.get(k)} vs now {ours[k]}" for k in ours if theirs.get(k) != ours[k])
        raise UserError(f"checkpoint model does not match the flags ({diff}); use the same --depth etc.")
    model.load_state_dict(checkpoint["model"])


def restore(checkpoint: dict, model, optimizers: list, runtime: Runtime) -> tuple[dict, dict]:
    """Put weights, optimizer state and RNG back; returns (train state dict, this rank's loader state)."""
    if "loaders" not in checkpoint:  # `picochat import` writes weights only
        raise UserError("this checkpoint holds weights only (imported): it cannot be resumed; train the next "
                        "stage from it, or start this stage again without --resume")
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
# Resuming and starting: which settings a resumed run keeps, and where a run's weights come from

# Settings that decide the model, the data order or the LR schedule: a resumed run keeps the checkpoint's, and
# --if-needed trains a stage again when they change.
FIXED_ON_RESUME = ("depth", "max_seq_len", "head_dim", "kv_head_ratio", "tie_embeddings", "device_batch_size",
                   "total_batch_size", "num_iterations", "time_budget", "target_param_data_ratio", "seed",
                   "rl_samples", "rl_max_tokens",
                   *(f.name for f in fields(OptimConfig)))
NOT_RESUMED = ("resume", "if_needed", "home", "stage")  # where the run lives, not how it runs


def resumed_settings(given: dict, checkpoint: dict) -> dict:
    """The settings a resumed run takes from its checkpoint, after checking the flags the user typed against
    them: a flag may change how the run goes on (evals, saving), never what it computes (FIXED_ON_RESUME)."""
    saved = {name: value for part in ("config", "optim_config", "stage_config") for name, value in
             checkpoint.get(part, {}).items() if name not in NOT_RESUMED}
    for name, value in given.items():
        if name not in saved or value == saved[name]:
            continue
        if name in FIXED_ON_RESUME:
            raise UserError(f"{flag_name(name)} {value} differs from the run being resumed ({saved[name]}); "
                            "a resumed run keeps its data order and schedule: drop the flag, or start a new run "
                            "without --resume")
        print0(f"resume: {flag_name(name)} is now {value} (was {saved[name]})")
    return saved


def continued_shape(given: dict, start: tuple[Path, dict]) -> dict:
    """The shape settings of a later stage: those of the model in the checkpoint it goes on from (mid from
    base's, or its own on resume), so that its log, checkpoints and fingerprint say what it trains. A shape
    flag the user typed must describe that model, or the run would silently train another shape than asked."""
    path, checkpoint = start
    model = GPTConfig(**checkpoint["model_config"])
    shape = model.shape_settings()
    typed = {name: value for name, value in given.items() if name in shape}
    differs = [name for name, value in typed.items() if value != shape[name]
               and not (name == "head_dim" and heads_for(model.n_embd, value) == model.n_head)]
    if differs:
        asked = ", ".join(f"{flag_name(name)} {typed[name]}" for name in differs)
        has = ", ".join(f"{flag_name(name)} {shape[name]}" for name in differs)
        raise UserError(f"{asked}: the model in {path} has {has}, and a later stage trains the model it starts "
                        "from; drop the flag (it shapes --stage base only)")
    return shape


def load_init(home: Path, stage) -> tuple[Path, dict] | None:
    """The newest good checkpoint of the stage this one starts from (mid from base, SFT from mid)."""
    if not stage.init_from:
        return None
    directory = checkpoint_dir(home, stage.init_from)
    if not list_checkpoints(directory):
        raise UserError(f"--stage {stage.name} starts from the newest {stage.init_from} checkpoint, and there is "
                        f"none in {directory}; run `picochat train --stage {stage.init_from}` first")
    return load_latest(directory, mmap=True)


def start_from(stage, model, optimizers: list, runtime: Runtime, out_dir: Path, resume: tuple[Path, dict] | None,
               init: tuple[Path, dict] | None) -> tuple[dict, dict | None]:
    """Resume (everything), a later stage's start from an earlier stage (weights only), or a fresh start:
    returns (train state dict, this rank's loader state), both empty for a fresh start. Every rank has read
    its checkpoint before setup_runtime's rendezvous, so rank 0 may now move files."""
    if resume is not None:
        path, checkpoint = resume
        print0(f"resuming from {path}")
        if runtime.is_main:
            set_aside_newer(out_dir, path)
        return restore(checkpoint, model, optimizers, runtime)
    if runtime.is_main:
        set_aside_previous_run(out_dir)
    if init is not None:
        print0(f"starting from {stage.init_from} checkpoint {init[0]}")
        load_model_weights(model, init[1])
    return {}, None


# ----------------------------------------------------------------------------------------------------------
# Done, interrupted or stale: what `picochat train --if-needed` does with a stage directory

# The inputs a stage is made from, as fingerprints: done.json and every checkpoint record them.
INPUT_NAMES = {"corpus": "the corpus", "tokenizer": "the tokenizer",
               "previous": "the output of the step before it", "settings": "the settings"}


def run_inputs(stage, config, tokenizer, settings: dict) -> dict:
    """Fingerprints of what a run is made from: its data, its tokenizer, the record of the step before it
    (the done.json of the stage it starts from; for base, tokenizer.json) and the settings a resume keeps."""
    fixed = {name: value for name, value in settings.items() if name in FIXED_ON_RESUME}
    previous = (checkpoint_dir(config.home_path, stage.init_from) / "done.json" if stage.init_from
                else tokenizer_dir(config.home_path) / META_FILE)  # base comes after the tokenizer's training
    return {"corpus": stage.data_fingerprint(config), "tokenizer": tokenizer.fingerprint(),
            "previous": file_fingerprint(previous),
            "settings": hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()}


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


# ----------------------------------------------------------------------------------------------------------
# Loading a model to use it: chat, serve, the evals

def find_checkpoint(home: Path, source: str = "", step: int = 0) -> tuple[str, Path, dict]:
    """(stage, path, checkpoint) for --source (default: the latest stage that has a checkpoint) and --step
    (default: the newest good one, falling back past corrupt files as training does). The file is memory-
    mapped, so the optimizer state it also holds is never read into memory."""
    stages = [source] if source else [s for s in reversed(STAGES) if list_checkpoints(checkpoint_dir(home, s))]
    if not stages or not list_checkpoints(checkpoint_dir(home, stages[0])):
        stage = source or "base"
        raise UserError(f"no {stage} checkpoint in {checkpoint_dir(home, stage)}; create one with "
                        f"`picochat train --stage {stage}`")
    directory = checkpoint_dir(home, stages[0])
    if step:
        path = directory / f"step_{step:06d}.pt"
        return stages[0], path, load_checkpoint(path, mmap=True)
    path, checkpoint = load_latest(directory, mmap=True)
    return stages[0], path, checkpoint


def load_model(home: str | Path | None, source: str = "", step: int = 0,
               device: torch.device | str = "cpu") -> tuple[GPT, Tokenizer, dict]:
    """A stage's checkpoint as a model in eval mode, its tokenizer, and where it came from."""
    home = picochat_home(home)
    stage, path, checkpoint = find_checkpoint(home, source, step)
    tokenizer = load_tokenizer(home)
    check_vocab(tokenizer, checkpoint, path)
    model = GPT(GPTConfig(**checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    model.to(device).eval()
    info = {"stage": stage, "path": str(path), "step": checkpoint["train_state"]["step"]}
    return model, tokenizer, info


@dataclass
class LoadConfig:
    """Which checkpoint to load and where to run it: the flags of every command that loads a model."""
    source: str = option("auto", "which stage to load (auto: the latest that has a checkpoint)",
                         choices=("auto", *STAGES))
    step: int = option(0, "checkpoint step to load (0: the newest good one)")
    device: str = option("auto", "device", choices=("auto", "cpu", "cuda", "mps"))
    dtype: str = option("auto", "compute dtype (auto: fp32 on a CPU, where decoding is memory-bound)",
                        choices=("auto", "float32", "bfloat16"))
    home: str = option("", "artifact root (default: $PICOCHAT_HOME or ~/.cache/picochat)")

    @property
    def home_path(self) -> Path:
        return picochat_home(self.home or None)


def load_engine(home: str | Path | None = None, source: str = "", step: int = 0, runtime: Runtime | None = None,
                quiet: bool = False) -> Engine:
    """An Engine over a stage's checkpoint (default: the newest stage's newest good one)."""
    model, tokenizer, info = load_model(home, source, step, runtime.device if runtime else "cpu")
    if not quiet:
        print0(f"loaded {info['stage']} step {info['step']} from {info['path']}")
    engine = Engine(model, tokenizer, runtime)
    engine.info = info
    return engine


def open_engine(config: LoadConfig, quiet: bool = False) -> Engine:
    """The engine for a command's LoadConfig flags."""
    source = "" if config.source == "auto" else config.source
    return load_engine(config.home_path, source, config.step, inference_runtime(config.device, config.dtype), quiet)
