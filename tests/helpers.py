"""Helpers the test modules share (fixtures live in conftest.py): tiny training flags, running
`picochat train` in process or as a subprocess, and reading a run's metrics."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from picochat import config as cfg
from picochat.checkpoint import checkpoint_dir
from picochat.optim import OptimConfig
from picochat.progress import read_metrics
from picochat.train import TrainConfig

# A model and batch small enough that a step takes milliseconds.
TINY = ["--depth", "1", "--max-seq-len", "32", "--device-batch-size", "2", "--dtype", "float32",
        "--compile", "false", "--eval-tokens", "256", "--device", "cpu"]


def flags_dict(*flags: str) -> dict:
    """Parse flags exactly as `picochat train` does (only typed flags appear), for in-process runs."""
    parser = argparse.ArgumentParser()
    for config_class in (TrainConfig, OptimConfig):
        cfg.add_arguments(parser, config_class)
    return vars(parser.parse_args(list(flags)))


def train_cli(home: Path, *flags: str, **popen) -> subprocess.Popen:
    """`picochat train TINY flags` in a subprocess with PICOCHAT_HOME=home; stdout and stderr merged."""
    env = {**os.environ, "PICOCHAT_HOME": str(home)}
    command = [sys.executable, "-m", "picochat.cli", "train", *TINY, *flags]
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True, **popen}
    return subprocess.Popen(command, env=env, **popen)


def step_records(home: Path, stage: str = "base") -> list[dict]:
    return read_metrics(checkpoint_dir(home, stage) / "metrics.jsonl", "step")


def losses(home: Path, stage: str = "base") -> dict[int, float]:
    return {r["step"]: r["loss"] for r in step_records(home, stage)}


def lrs(home: Path, stage: str = "base") -> dict[int, float]:
    return {r["step"]: r["lr"] for r in step_records(home, stage)}


def val_bpbs(home: Path, stage: str = "base") -> list[float]:
    return [r["val_bpb"] for r in read_metrics(checkpoint_dir(home, stage) / "metrics.jsonl", "eval")]


def error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("picochat: error: ")
    return lines[0]
