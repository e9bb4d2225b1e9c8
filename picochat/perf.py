"""Speed accounting: matmul peak (measured, or a GPU datasheet), MFU, peak memory.

MFU is only meaningful against a peak for the same dtype on the same machine, so on CPUs we measure the
peak at start-up; for known GPUs we use the datasheet's dense number.
"""

from __future__ import annotations

import resource
import sys
import time

import torch

# Dense (no sparsity) peak FLOP/s per GPU, from vendor datasheets.
GPU_PEAK_FLOPS = {
    # name fragment: {dtype: flops}
    "H200": {torch.bfloat16: 989e12, torch.float16: 989e12, torch.float32: 67e12},
    "H100": {torch.bfloat16: 989e12, torch.float16: 989e12, torch.float32: 67e12},
    "A100": {torch.bfloat16: 312e12, torch.float16: 312e12, torch.float32: 19.5e12},
    "L40S": {torch.bfloat16: 362e12, torch.float16: 362e12, torch.float32: 91.6e12},
    "A10": {torch.bfloat16: 125e12, torch.float16: 125e12, torch.float32: 31.2e12},
    "4090": {torch.bfloat16: 165e12, torch.float16: 165e12, torch.float32: 82.6e12},
}


def measure_matmul_flops(m: int, k: int, n: int, dtype: torch.dtype, device: torch.device | str = "cpu",
                         seconds: float = 0.3) -> float:
    """FLOP/s of an (m x k) @ (k x n) matmul, timed for about `seconds` after a warm-up."""
    device = torch.device(device)
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or reps < 3:
        a @ b
        reps += 1
        if reps % 4 == 0:
            _sync(device)
    _sync(device)
    return 2 * m * k * n * reps / (time.perf_counter() - start)


def peak_flops(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """(peak FLOP/s, where the number came from)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for fragment, table in GPU_PEAK_FLOPS.items():
            if fragment in name and dtype in table:
                return table[dtype], f"datasheet ({name})"
        return measure_matmul_flops(8192, 8192, 8192, dtype, device), f"measured ({name})"
    size = 2048 if device.type == "cpu" else 4096
    return measure_matmul_flops(size, size, size, dtype, device), f"measured {size}^3 matmul"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def peak_rss_bytes() -> int:
    """Peak resident memory of this process. Linux: VmHWM, because ru_maxrss survives exec and would
    report a parent's peak for a freshly started child. Elsewhere ru_maxrss (bytes on macOS)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass  # no /proc: not Linux
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024
