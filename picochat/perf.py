"""Speed accounting: matmul peak (measured, or a GPU datasheet), MFU, peak memory.

MFU is only meaningful against a peak for the same dtype on the same machine, so on CPUs we measure the
peak at start-up, as the best of several short repeats (a moment of contention lowers only some of them);
for known GPUs we use the datasheet's dense number.
"""

from __future__ import annotations

import resource
import sys
from time import perf_counter
from typing import Callable

import torch
import torch.distributed as dist

from picochat.runtime import cpu_supports_bf16, print0

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

CPU_SQUARE = 2048           # side of the square matmul a CPU peak is measured on
EMULATED_BF16_SQUARE = 512  # smaller for emulated bf16: at 1-5 GFLOP/s one 2048^3 matmul alone takes 3-17 s
PEAK_SECONDS, PEAK_REPEATS = 0.5, 5
WARMUP_ROWS = 128           # the warm-up multiplies only this many rows: it starts kernels and threads cheaply
# A training step also runs attention, norms and the optimizer, which reach far less of the peak than a big
# square matmul: MFU above this means the peak itself was measured low.
MFU_WARNING = 0.80


def best_rate(step: Callable[[], object], seconds: float, repeats: int) -> float:
    """Best calls/s of `step` over up to `repeats` repeats of about seconds/repeats each.

    The best, not the mean: contention from another process only ever lowers a repeat. The clock is read
    between calls and no call starts after `seconds`, so this returns within `seconds` plus one call, even
    when that is one call in all.
    """
    deadline = perf_counter() + seconds
    rates = []
    while len(rates) < repeats and (not rates or perf_counter() < deadline):
        rates.append(_repeat_rate(step, min(perf_counter() + seconds / repeats, deadline)))
    return max(rates)


def _repeat_rate(step: Callable[[], object], until: float) -> float:
    """Calls/s of `step`, called once and then again until the clock passes `until`."""
    calls, start = 0, perf_counter()
    while calls == 0 or perf_counter() < until:
        step()
        calls += 1
    return calls / (perf_counter() - start)


def measure_matmul_flops(m: int, k: int, n: int, dtype: torch.dtype, device: torch.device | str = "cpu",
                         seconds: float = 0.3, repeats: int = 3) -> float:
    """Best FLOP/s of an (m x k) @ (k x n) matmul over `repeats` repeats within about `seconds`."""
    device = torch.device(device)
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    a[:WARMUP_ROWS] @ b
    _sync(device)

    def step() -> None:
        a @ b
        _sync(device)  # time finished matmuls, not queued ones

    return 2 * m * k * n * best_rate(step, seconds, repeats)


def peak_flops(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """(peak FLOP/s, where the number came from). Where no datasheet applies, measured in about PEAK_SECONDS."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for fragment, table in GPU_PEAK_FLOPS.items():
            if fragment in name and dtype in table:
                return table[dtype], f"datasheet ({name})"
        size, where = 8192, f" ({name})"
    elif device.type == "cpu" and dtype == torch.bfloat16 and not cpu_supports_bf16():
        size, where = EMULATED_BF16_SQUARE, " (bf16 emulated: this CPU has no avx512_bf16/amx)"
    elif device.type == "cpu":
        size, where = CPU_SQUARE, ""
    else:
        size, where = 4096, ""
    flops = measure_matmul_flops(size, size, size, dtype, device, PEAK_SECONDS, PEAK_REPEATS)
    return flops, f"measured {size}^3 matmul, best of up to {PEAK_REPEATS} repeats in {PEAK_SECONDS:g} s{where}"


def mfu_warning(mfu: float, device_type: str) -> str | None:
    """A one-line warning when a measured (CPU) peak must have been too low, else None."""
    if device_type == "cpu" and mfu > MFU_WARNING:
        return (f"MFU over {MFU_WARNING:.0%} on a CPU means the matmul peak was measured while something else "
                "ran; the MFU numbers of this run are too high")
    return None


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


def step_work(stats: dict, tokens_per_step: int, flops_per_token: float, runtime) -> tuple[int, float]:
    """(tokens, FLOPs) of the step just taken, over all ranks: the batch shape's, or what a sampling loader's
    stats say it ran (RL: rollout_tokens sampled, update_tokens trained). A sampled token is one forward pass,
    a third of a trained token's FLOPs; an update runs its non-padding tokens."""
    if "rollout_tokens" not in stats:
        return tokens_per_step, flops_per_token * tokens_per_step
    counts = torch.tensor([stats["rollout_tokens"], stats["update_tokens"]], dtype=torch.float64,
                          device=runtime.device)
    if runtime.distributed:
        dist.all_reduce(counts)  # each rank sampled answers of its own lengths
    sampled, updated = counts.tolist()
    return round(sampled + updated), flops_per_token * (sampled / 3 + updated)


def recheck_peak(start_peak: float, max_mfu: float, runtime) -> None:
    """At the end of a run: measure the peak again (a busy machine at start-up lowers it) and warn when the
    MFU says the yardstick was wrong."""
    end_peak, _ = peak_flops(runtime.device, runtime.dtype)
    print0(f"peak {runtime.dtype} matmul: {start_peak / 1e9:,.0f} GFLOP/s at start-up, "
           f"{end_peak / 1e9:,.0f} at the end")
    warning = mfu_warning(max_mfu, runtime.device.type)
    if warning:
        print0(f"warning: {warning}")
