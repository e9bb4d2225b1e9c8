"""Gradient sync across 2 CPU processes (gloo): the training step's time with DDP's bucketed all-reduces
overlapped with backward (`--grad-sync overlap`, the default) against one all-reduce per parameter after
backward (`--grad-sync after`). Same model, batches and steps as picochat.train takes them (train_step).

    python benchmarks/grad_sync.py                 # starts itself under torchrun (2 processes), ~2 min
    python benchmarks/grad_sync.py --steps 20 --out results.json

On 2 cores each process has one core, so compute and communication compete for the same cores: the
overlap gains less here than on GPUs, where NCCL runs beside the backward kernels.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from picochat.common import atomic_write_text
from picochat.runtime import end_torchrun_worker, setup_runtime
from picochat.model import GPT, GPTConfig
from picochat.optim import OptimConfig, build_optimizers
from picochat.runtime import prepare_model
from picochat.step import train_step
from picochat.data.loader import Batch

MODES = ("after", "overlap")
# The CPU default model until 2026-12-06 (depth 4, vocab 8192, 7.3 M params; the reference results are of it);
# 2 micro-batches per step, so no_sync() accumulation runs.
SHAPE = dict(sequence_len=512, vocab_size=8192, n_layer=4, n_embd=256, n_head=2, n_kv_head=2)
BATCH, MICRO_BATCHES, WARMUP = 4, 2, 2


def worker(steps: int, out: Path) -> None:
    runtime = setup_runtime("cpu", "float32")
    rows = []
    for mode in MODES:
        torch.manual_seed(0)
        model = GPT(GPTConfig(**SHAPE))
        step_model = prepare_model(model, runtime, mode)
        optimizers = build_optimizers(model, OptimConfig(), torch.float32)
        generator = torch.Generator().manual_seed(runtime.rank)
        tokens = [torch.randint(0, SHAPE["vocab_size"], (BATCH, SHAPE["sequence_len"]), generator=generator)
                  for _ in range(MICRO_BATCHES)]
        batches = [Batch(ids, ids) for ids in tokens]
        times = []
        for step in range(WARMUP + steps):
            start = time.perf_counter()
            train_step(step_model, model, optimizers, batches, runtime)
            if step >= WARMUP:
                times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        rows.append({"grad_sync": mode, "median_step_seconds": round(seconds, 4), "step_seconds": [round(t, 4) for t in times],
                     "tok_per_s": round(runtime.world_size * MICRO_BATCHES * BATCH * SHAPE["sequence_len"] / seconds)})
    if runtime.rank == 0:
        result = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                              "torch": torch.__version__, "processes": runtime.world_size, "backend": "gloo"},
                  "model": SHAPE, "batch": {"device_batch_size": BATCH, "micro_batches": MICRO_BATCHES},
                  "rows": rows}
        atomic_write_text(out, json.dumps(result, indent=2))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    end_torchrun_worker(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per mode (after 2 warm-up steps)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "grad_sync.json")
    args = parser.parse_args()
    if "LOCAL_RANK" in os.environ:
        return worker(args.steps, args.out)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               __file__, "--steps", str(args.steps), "--out", str(args.out)]
    subprocess.run(command, check=True)
    result = json.loads(args.out.read_text())
    for row in result["rows"]:
        print(f"--grad-sync {row['grad_sync']:<8} median step {row['median_step_seconds']:.3f} s, "
              f"{row['tok_per_s']:,} tok/s over 2 processes")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
