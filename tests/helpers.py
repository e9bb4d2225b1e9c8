"""Helpers the test modules share (fixtures live in conftest.py): tiny training flags, running
`picochat train` in process or as a subprocess, reading a run's metrics, and a model that follows a script."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import torch

from picochat import config as cfg
from picochat.chat import render_conversation
from picochat.checkpoint import checkpoint_dir
from picochat.model import GPTConfig
from picochat.optim import OptimConfig
from picochat.progress import read_metrics
from picochat.tasks.core import core_tasks
from picochat.train import TrainConfig

# A model and batch small enough that a step takes milliseconds.
# how a tiny run runs; TINY adds its shape, which a later stage takes from the model it starts from
TINY_RUN = ["--max-seq-len", "32", "--device-batch-size", "2", "--dtype", "float32", "--compile", "false",
            "--eval-tokens", "256", "--device", "cpu"]
TINY = ["--depth", "1", *TINY_RUN]


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


class ScriptedModel(torch.nn.Module):
    """Stands in for the GPT: at generation step i it puts all probability on script[row][i]."""

    def __init__(self, vocab_size: int, scripts: list[list[int]], prompt_len: int):
        super().__init__()
        self.config = GPTConfig(sequence_len=64, vocab_size=vocab_size, n_layer=1, n_embd=8, n_head=1, n_kv_head=1)
        self.register_buffer("cos", torch.zeros(1, 640, 1, 4))
        self.scripts, self.prompt_len = scripts, prompt_len

    def next_logits(self, ids, kv_cache, lengths=None):
        kv_cache.advance(ids.size(1))
        step = kv_cache.longest - self.prompt_len  # 0 right after the prefill
        logits = torch.full((ids.size(0), self.config.vocab_size), -1e9)
        for row in range(ids.size(0)):
            script = self.scripts[row % len(self.scripts)]
            logits[row, script[min(step, len(script) - 1)]] = 0.0
        return logits


def assert_chat_examples(task, tokenizer) -> None:
    for example in (task[i] for i in range(len(task))):
        roles = [message["role"] for message in example["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and roles
        ids, mask = render_conversation(tokenizer, example)
        assert mask[-1] == 1 and 0 < sum(mask) < len(ids)  # the assistant's answer is trained, the rest not


def core_task(name: str):
    return next(task for task in core_tasks() if task.name == name)
