"""How a run reports itself and hears it must stop: the metrics file, the progress display, signals.

Every stage writes the same JSONL records (one per step and one per eval) to checkpoints/<stage>/
metrics.jsonl, optionally mirrored to wandb. On a terminal progress is a tqdm bar; anywhere else (nohup,
Slurm, CI logs) it is a plain line every so often, so a log is not one endless carriage-return line.

    records = read_metrics(home / "checkpoints" / "base" / "metrics.jsonl")
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

from tqdm import tqdm

from picochat.common import UserError, atomic_write_text
from picochat.config import describe
from picochat.perf import peak_rss_bytes
from picochat.runtime import Runtime, print0


class MetricsLog:
    """One JSONL line per step/eval (rank 0), mirrored to wandb when asked. On resume, lines past the
    checkpoint's step are dropped, so the file always describes one consistent run."""

    def __init__(self, path: Path, runtime: Runtime, resume_step: int, wandb_run_config: dict | None = None):
        self.path, self.enabled, self.last = path, runtime.is_main, {}
        self.max_mfu = 0.0
        self.wandb = None
        if not self.enabled:
            return
        kept = [json.dumps(r) for r in read_metrics(path) if r["step"] <= resume_step] if resume_step else []
        atomic_write_text(path, "".join(line + "\n" for line in kept))
        if wandb_run_config is not None:
            self.wandb = start_wandb(wandb_run_config)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self.last.update(record)
        self.max_mfu = max(self.max_mfu, record.get("mfu", 0.0))
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log(record, step=record["step"])

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()  # explicit: a torchrun worker exits without running atexit hooks
            self.wandb = None

    def summary(self) -> str:
        m = self.last
        if "loss" not in m:
            return ""
        return (f"loss {m['loss']:.4f} lr {m['lr']:.3f} {m['tok_per_s']:,} tok/s mfu {m['mfu']:.1%} "
                f"eta {m['eta_s']:.0f}s")


def start_wandb(run_config: dict):
    try:
        import wandb  # optional dependency, imported only when asked for
    except ImportError as e:
        raise UserError("--wandb needs the wandb package: pip install 'picochat[wandb]'") from e
    config = {key: value for key, value in run_config.items() if key != "run_name"}
    return wandb.init(project="picochat", name=run_config["run_name"], config=config)


def read_metrics(path: Path, kind: str | None = None) -> list[dict]:
    """Records of a metrics file, optionally only one kind: "step" (has a loss) or "eval" (has val_bpb).
    A torn last line (the process was killed mid-write) is dropped."""
    records = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # only a kill -9 mid-write produces this, and only on the last line
    key = {"step": "loss", "eval": "val_bpb", None: "step"}[kind]
    return [r for r in records if key in r]


class Progress:
    """A tqdm bar on a terminal; elsewhere one plain line every `every_seconds` (and at the end)."""

    def __init__(self, total: int | None, initial: int, enabled: bool, every_seconds: float = 30.0,
                 stream=None):
        self.stream = stream or sys.stderr
        self.enabled, self.every_seconds = enabled, every_seconds
        self.step, self.total, self.text, self.last_print = initial, total, "", time.monotonic()
        self.printed_step = initial
        self.bar = None
        if enabled and self.stream.isatty():
            self.bar = tqdm(total=total, initial=initial, file=self.stream, dynamic_ncols=True, mininterval=1.0)

    def update(self, step: int, text: str) -> None:
        self.step, self.text = step, text
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(step - self.bar.n)
        elif self.enabled and time.monotonic() - self.last_print >= self.every_seconds:
            self.print_line()

    def print_line(self) -> None:
        of_total = f"/{self.total}" if self.total else ""
        print(f"step {self.step}{of_total} {self.text}", file=self.stream, flush=True)
        self.last_print, self.printed_step = time.monotonic(), self.step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.text and self.step != self.printed_step:
            self.print_line()


class StopSignal:
    """SIGTERM (e.g. torchrun, Slurm), SIGUSR1 (Slurm's warning before preemption) or a first Ctrl-C:
    finish the step, checkpoint, exit 0. A second Ctrl-C aborts at once, without a checkpoint."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}

    def _handle(self, signum, frame) -> None:
        self.requested = True
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, self.previous[signal.SIGINT])
            print0("\nCtrl-C: finishing this step and writing a checkpoint (Ctrl-C again aborts)")

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def print_setup(config, optim_config, stage, runtime: Runtime, model, grad_accum: int, tokens_per_step: int) -> None:
    """The run's settings, model and batch, at the top of its log."""
    c = model.config
    settings = [describe(part) for part in (config, optim_config, stage.settings) if part is not None]
    print0(f"stage {stage.name} on {runtime.device} ({runtime.dtype}), {runtime.world_size} process(es)")
    print0("\n".join(settings))
    heads = f"{c.n_head} head{'s' * (c.n_head > 1)} of {c.head_dim} ({c.n_kv_head} kv)"
    print0(f"model: {c.n_layer} layers x {c.n_embd} wide, {heads}; "
           f"{model.num_params()['total']:,} params, {model.flops_per_token(config.max_seq_len):.3g} FLOPs/token")
    if stage.name == "rl":  # its rows are as long as each prompt and answer: tokens are counted as they run
        print0(f"batch: {config.device_batch_size} problems x {stage.settings.rl_samples} samples per process and "
               f"step, x {runtime.world_size} process(es)")
    else:
        print0(f"batch: {tokens_per_step:,} tokens/step = {grad_accum} micro-batch(es) of {config.device_batch_size} "
               f"x {config.max_seq_len} x {runtime.world_size} process(es)")


def step_record(state, loss: float, lr: float, seconds: float, tokens: int, flops: float, peak_flops: float,
                runtime: Runtime, done: float) -> dict:
    """A step's metrics record. tokens and FLOPs are the step's over all ranks (perf.step_work); done is the
    fraction of the run behind us, for the ETA."""
    mfu = flops / seconds / runtime.world_size / peak_flops
    eta = max(0.0, state.train_seconds * (1 - done) / done) if done > 0 else float("nan")
    return {"step": state.step, "loss": round(loss, 5), "lr": round(lr, 5), "tok_per_s": round(tokens / seconds),
            "mfu": round(mfu, 4), "eta_s": round(eta, 1), "tokens": state.tokens,
            "train_seconds": round(state.train_seconds, 2), "peak_rss_mb": peak_rss_bytes() // 2**20}

