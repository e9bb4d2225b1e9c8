"""Shared plumbing: the user-error type, artifact paths, atomic file writes, the Runtime (device, dtype,
ranks), rank-0 printing, and the ignore index that data, loss and evals agree on.

Everything that asks "where am I running?" lives here, so the training loop never does. Nothing runs at
import time: the CLI calls `setup_runtime(...)` once and passes the Runtime along.
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist


IGNORE_INDEX = -1  # a target that adds no loss (SFT masks the prompt with it; any negative id works)


class UserError(ValueError):
    """A mistake the user can fix (a bad flag, a missing or corrupt file, a network that is down).

    The CLI prints these as one `picochat: error:` line; every other exception is a bug in picochat and
    keeps its traceback."""


# ----------------------------------------------------------------------------------------------------------
# Paths and files

def picochat_home(home: str | os.PathLike | None = None) -> Path:
    """Root of all artifacts: data/, tokenizer/, checkpoints/<stage>/, report/."""
    return Path(home or os.environ.get("PICOCHAT_HOME") or Path.home() / ".cache" / "picochat")


@contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `final`; on success fsync it and rename it into place.

    A crash at any point leaves either the old file or the new one, never half of one.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes files private; artifacts are ordinary files
        durable_replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def durable_replace(source: Path, final: Path) -> None:
    """fsync source, rename it over final, fsync the folder: after a crash, old or new, never half."""
    with open(source, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(source, final)
    dir_fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


# ----------------------------------------------------------------------------------------------------------
# Runtime: device, dtype and the distributed setting, decided once

@dataclass
class Runtime:
    device: torch.device
    dtype: torch.dtype          # compute dtype for matmuls (autocast); master weights stay fp32
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        """Context for forward passes: bf16 autocast, or nothing for fp32."""
        if self.dtype == torch.float32:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.dtype)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def autodetect_device() -> str:
    # The one place that knows about device kinds: cuda > mps > cpu.
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def cpu_supports_bf16() -> bool:
    """True where the CPU has native bf16 matmul instructions (AVX512-BF16 or AMX); else bf16 is emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autodetect_dtype(device_type: str) -> str:
    if device_type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if device_type == "cpu":
        return "bfloat16" if cpu_supports_bf16() else "float32"
    return "float32"  # mps: bf16 autocast support varies by macOS version


def launch_rank() -> int:
    """This process's rank under torchrun (0 otherwise), before any process group exists."""
    return int(os.environ.get("RANK", 0))


def setup_runtime(device: str = "auto", dtype: str = "auto") -> Runtime:
    """Turn flags plus the torchrun environment (RANK, LOCAL_RANK, WORLD_SIZE) into a Runtime."""
    device_type = autodetect_device() if device == "auto" else device
    if device_type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device must be auto, cpu, cuda or mps, got {device!r}")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if device_type == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps was asked for but MPS is not available; use --device cpu")
    dtype_name = autodetect_dtype(device_type) if dtype == "auto" else dtype
    if dtype_name not in DTYPES:
        raise UserError(f"--dtype must be auto, float32 or bfloat16, got {dtype!r}")

    if device_type == "cpu":
        # Compiled CPU kernels otherwise sum some gradients (the embedding's) with atomic adds from several
        # threads, in a different order each run: two runs then differ by ~1e-3 in loss after 100 steps.
        # The deterministic fallback costs ~1% of a step here. GPU runs keep the fast kernels.
        torch.use_deterministic_algorithms(True)
    rank = launch_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device(device_type)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return Runtime(device=dev, dtype=DTYPES[dtype_name], rank=rank, local_rank=local_rank,
                   world_size=world_size)


def teardown_runtime(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def end_torchrun_worker(code: int) -> None:
    """Exit without the interpreter's teardown (the process group is already destroyed).

    With torch 2.13, once torch._dynamo is imported (every optimizer imports it), gloo's worker threads
    outlive destroy_process_group; C++ static destructors then meet them still running and now and then
    (3 of 320 two-process runs here) abort a finished run ("terminate called without an active exception")."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def print0(*args, runtime: Runtime | None = None, **kwargs) -> None:
    """print() on rank 0 only (reads RANK when no runtime is given)."""
    rank = runtime.rank if runtime is not None else launch_rank()
    if rank == 0:
        print(*args, **kwargs, flush=True)


def fail(message: str) -> None:
    """Print one error line and exit non-zero: the CLI's way to report bad input."""
    print(f"picochat: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)
