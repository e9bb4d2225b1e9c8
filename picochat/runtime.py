"""Where the code runs: the Runtime (device, dtype, ranks) decided once from the flags and torchrun's
environment, rank-0 printing, and how the model is prepared for it (DDP across processes, torch.compile).

Everything that asks "where am I running?" lives here, so the training loop never does. Nothing runs at
import time: a command calls `setup_runtime(...)` once and passes the Runtime along.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from picochat.common import UserError


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


def setup_runtime(device: str = "auto", dtype: str = "auto", training: bool = True) -> Runtime:
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

    if device_type == "cpu" and training:
        # Compiled CPU kernels otherwise sum some gradients (the embedding's) with atomic adds from several
        # threads, in a different order each run: two runs then differ by ~1e-3 in loss after 100 steps.
        # The deterministic fallback costs ~1% of a step here. GPU runs keep the fast kernels. Without a
        # backward pass there is nothing to fix, and the switch imports torch._inductor: ~2 s of start-up.
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


def inference_runtime(device: str = "auto", dtype: str = "auto") -> Runtime:
    """setup_runtime for generation: "auto" means fp32 on a CPU. Decoding reads every weight once per
    token, and bf16 autocast casts every weight again each step: 426 tok/s against 715 in fp32 here
    (benchmarks/inference.py)."""
    on_cpu = (autodetect_device() if device == "auto" else device) == "cpu"
    return setup_runtime(device, "float32" if dtype == "auto" and on_cpu else dtype, training=False)


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


def ddp_of(step_model: torch.nn.Module) -> DistributedDataParallel | None:
    """The DDP wrapper under step_model (compiled or not), if gradients sync during backward."""
    module = getattr(step_model, "_orig_mod", step_model)
    return module if isinstance(module, DistributedDataParallel) else None


def agree(seconds: float, stop_requested: bool, runtime: Runtime) -> tuple[float, bool]:
    """Every rank must take the same decisions: use the slowest rank's time and anyone's stop request."""
    if not runtime.distributed:
        return seconds, stop_requested
    values = torch.tensor([seconds, float(stop_requested)], dtype=torch.float64, device=runtime.device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values[0].item(), bool(values[1].item())


def prepare_model(model: torch.nn.Module, runtime: Runtime, grad_sync: str = "overlap",
                  compile_shape: tuple[int, int] | None = None) -> torch.nn.Module:
    """Start every rank from rank 0's weights, wrap the model in DDP for --grad-sync overlap (its reducer
    all-reduces ~25 MB buckets of gradients as backward produces them; compiled, dynamo splits the graph at
    the buckets so the overlap survives), then compile where it works (checked with a warm-up step on a
    batch of compile_shape: (rows, tokens); None stays eager)."""
    step_model: torch.nn.Module = model
    if runtime.distributed and grad_sync == "overlap":
        step_model = DistributedDataParallel(model, broadcast_buffers=False, gradient_as_bucket_view=True)
    elif runtime.distributed:
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)
    return try_compile(step_model, runtime, compile_shape) if compile_shape else step_model


def try_compile(model: torch.nn.Module, runtime: Runtime, batch_shape: tuple[int, int]) -> torch.nn.Module:
    """torch.compile needs a C++ compiler (CPU) or Triton (GPU); without them, train eager, never crash."""
    compiled = torch.compile(model)
    # Two distinct tensors, as in training: passing one for both makes dynamo guard on `idx is targets`
    # and compile all over again at the first real step.
    inputs = torch.zeros(batch_shape, dtype=torch.long, device=runtime.device)
    targets = torch.zeros_like(inputs)
    error = None
    try:
        with runtime.autocast():
            loss = compiled(inputs, targets)
        loss.backward()
    except Exception as e:  # dynamo/inductor raise many types; every one of them means "use eager"
        error = e
    model.zero_grad(set_to_none=True)
    ok = torch.tensor(0.0 if error else 1.0, device=runtime.device)
    if runtime.distributed:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)  # all ranks must take the same path
    if ok.item() == 1.0:
        return compiled
    reason = str(error).strip().splitlines()[0][:200] if error else "failed on another rank"
    print0(f"torch.compile is not available here ({type(error).__name__}: {reason}); training eager")
    return model
