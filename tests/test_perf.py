"""Tests for picochat.perf's matmul peak (best of repeats, time bound, emulated bf16), its MFU warning, and
the throughput benchmark's choice of dtypes and MFU peak on a CPU without native bf16.

Run alone: python -m pytest tests/test_perf.py
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch

import picochat.runtime
from picochat import perf

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"


class FakeClock:
    """perf_counter for picochat.perf that only moves when a fake step says how long it took."""

    def __init__(self, durations: list[float]):
        self.now, self.durations = 0.0, iter(durations)

    def __call__(self) -> float:
        return self.now

    def step(self) -> None:
        self.now += next(self.durations)  # StopIteration: a call the budget should not have allowed


def test_best_rate_returns_the_fastest_repeat_not_the_mean(monkeypatch):
    # 1 s in 4 repeats of 0.25 s: a cold first call, a clean repeat, then one slowed by another process.
    clock = FakeClock([0.5] + [0.0625] * 4 + [0.125] * 2)
    monkeypatch.setattr(perf, "perf_counter", clock)
    # Repeat rates: 1 call / 0.5 s = 2, 4 / 0.25 s = 16, 2 / 0.25 s = 8 calls/s (their mean is 8.7).
    assert perf.best_rate(clock.step, seconds=1.0, repeats=4) == 16.0
    assert clock.now == 1.0  # the budget ended the repeats, and every call ran


def test_best_rate_starts_no_call_after_the_budget(monkeypatch):
    clock = FakeClock([0.4] * 3)  # calls start at 0, 0.4 and 0.8 s: all before the 1 s budget ends
    monkeypatch.setattr(perf, "perf_counter", clock)
    assert perf.best_rate(clock.step, seconds=1.0, repeats=5) == pytest.approx(1 / 0.4)
    assert clock.now <= 1.0 + 0.4  # the budget plus one call


def test_best_rate_cuts_a_late_repeat_at_the_budget(monkeypatch):
    # 1 s in 2 repeats of 0.5 s: the cold first call takes 0.75 s, so the second repeat has only 0.25 s left.
    clock = FakeClock([0.75, 0.125, 0.125])
    monkeypatch.setattr(perf, "perf_counter", clock)
    assert perf.best_rate(clock.step, seconds=1.0, repeats=2) == 8.0  # 2 calls in 0.25 s
    assert clock.now == 1.0


def test_best_rate_with_a_call_slower_than_the_budget_makes_one_call(monkeypatch):
    clock = FakeClock([5.0])
    monkeypatch.setattr(perf, "perf_counter", clock)
    assert perf.best_rate(clock.step, seconds=1.0, repeats=5) == pytest.approx(1 / 5.0)


def test_best_rate_time_bound_holds_on_the_real_clock():
    calls = []

    def slow_matmul() -> None:
        calls.append(1)
        time.sleep(0.2)

    start = time.perf_counter()
    perf.best_rate(slow_matmul, seconds=0.3, repeats=5)
    elapsed = time.perf_counter() - start
    assert len(calls) == 2  # started at 0 and 0.2 s; a third would start after the 0.3 s budget
    assert elapsed < 0.3 + 0.2 + 0.15  # budget + one call + scheduling slack


def test_measure_matmul_flops_on_a_real_matmul_stays_in_its_budget():
    start = time.perf_counter()
    flops = perf.measure_matmul_flops(64, 32, 16, torch.float32, "cpu", seconds=0.05)
    assert flops > 0
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("native, dtype, size", [(True, torch.bfloat16, 2048), (False, torch.bfloat16, 512),
                                                 (False, torch.float32, 2048)])
def test_peak_flops_measures_emulated_bf16_on_a_smaller_square(monkeypatch, native, dtype, size):
    shapes = []
    monkeypatch.setattr(perf, "cpu_supports_bf16", lambda: native)
    monkeypatch.setattr(perf, "measure_matmul_flops", lambda *args: shapes.append(args[:3]) or 1e9)
    flops, source = perf.peak_flops(torch.device("cpu"), dtype)
    assert (flops, shapes) == (1e9, [(size, size, size)])
    assert f"{size}^3" in source and ("emulated" in source) == (size == 512)


@pytest.mark.parametrize("mfu, device_type, warns", [(0.81, "cpu", True), (0.80, "cpu", False),
                                                      (0.45, "cpu", False), (0.95, "cuda", False)])
def test_mfu_warning_only_over_80_percent_on_a_cpu(mfu, device_type, warns):
    warning = perf.mfu_warning(mfu, device_type)
    assert (warning is not None) == warns
    if warns:
        assert "80%" in warning and "\n" not in warning


# ----------------------------------------------------------------------------------------------------------
# benchmarks/train_throughput.py (a script, so imported by path)

@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_throughput", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def set_native_bf16(monkeypatch, bench, native: bool) -> None:
    """Every place that asks whether this CPU has native bf16 gets `native`."""
    for module in (bench, perf, picochat.runtime):
        monkeypatch.setattr(module, "cpu_supports_bf16", lambda: native)


@pytest.mark.parametrize("native, argv, dtypes", [
    (False, [], ["float32"]), (False, ["--quick"], ["float32"]), (False, ["--dtypes", "bfloat16"], ["bfloat16"]),
    (True, [], ["float32", "bfloat16"]), (True, ["--quick"], ["bfloat16"])])
def test_benchmark_default_dtypes(monkeypatch, bench, native, argv, dtypes):
    set_native_bf16(monkeypatch, bench, native)
    assert bench.parse_args(argv).dtypes == dtypes


def run_fake_benchmark(monkeypatch, capsys, bench, tmp_path, argv: list[str]) -> tuple[dict, str, str, list]:
    """main() with measurements and training replaced by fixed numbers: (JSON, stdout, stderr, shape peaks)."""
    shape_peaks = []
    monkeypatch.setattr(bench, "peak_flops", lambda device, dtype: (
        {torch.float32: 100e9, torch.bfloat16: 400e9}[dtype], f"fake {dtype}"))
    monkeypatch.setattr(bench, "gflops", lambda shape, dtype: shape_peaks.append(dtype) or 50.0)
    monkeypatch.setattr(bench, "run_variant", lambda name, dtype, mode, steps: {
        "config": name, "dtype": dtype, "mode": mode, "flops_per_token": 1e6, "tok_per_s": 20_000.0,
        "step_seconds": [1.0], "peak_rss_mb": 1000})
    out = tmp_path / "result.json"
    bench.main([*argv, "--configs", "nanochat-seed", "--out", str(out)])
    stdout, stderr = capsys.readouterr()
    return json.loads(out.read_text()), stdout, stderr, shape_peaks


def test_benchmark_without_native_bf16_skips_bf16_and_judges_mfu_against_fp32(monkeypatch, capsys, bench, tmp_path):
    set_native_bf16(monkeypatch, bench, False)
    report, stdout, stderr, shape_peaks = run_fake_benchmark(monkeypatch, capsys, bench, tmp_path, [])
    assert bench.BF16_SKIPPED in stderr.splitlines()
    assert report["machine"]["native_bf16"] is False
    assert report["settings"]["dtypes"] == ["float32"] and report["settings"]["mfu_target_peak"] == "float32"
    assert "bfloat16" not in report["peaks"]["square"] and set(shape_peaks) == {"float32"}
    # 1e6 FLOPs/token x 20,000 tok/s = 20 GFLOP/s: 20% of the fake 100 GFLOP/s fp32 peak.
    assert {(row["dtype"], row["mfu_fp32"]) for row in report["rows"]} == {("float32", 0.2)}
    assert "- MFU vs same-run fp32 peak at nanochat-seed: 20.0%" in stdout
    assert "judged against the fp32 peak" in stdout


def test_benchmark_forced_bf16_without_native_bf16_still_judges_against_fp32(monkeypatch, capsys, bench, tmp_path):
    set_native_bf16(monkeypatch, bench, False)
    report, stdout, stderr, shape_peaks = run_fake_benchmark(monkeypatch, capsys, bench, tmp_path,
                                                              ["--dtypes", "bfloat16"])
    assert bench.BF16_SKIPPED not in stderr
    assert report["settings"]["dtypes"] == ["bfloat16"]
    # The bf16 square peak is measured (the row's own-dtype MFU needs it), the per-shape ones are not: emulated
    # bf16 is equally slow at every shape, and one lm_head matmul would take minutes.
    assert report["peaks"]["square"]["bfloat16"] == 400.0 and set(shape_peaks) == {"float32"}
    assert {(row["dtype"], row["mfu"], row["mfu_fp32"]) for row in report["rows"]} == {("bfloat16", 0.05, 0.2)}


def test_benchmark_with_native_bf16_judges_mfu_against_bf16(monkeypatch, capsys, bench, tmp_path):
    set_native_bf16(monkeypatch, bench, True)
    report, stdout, stderr, shape_peaks = run_fake_benchmark(monkeypatch, capsys, bench, tmp_path, [])
    assert bench.BF16_SKIPPED not in stderr
    assert report["settings"]["dtypes"] == ["float32", "bfloat16"]
    assert report["settings"]["mfu_target_peak"] == "bfloat16"
    assert {row["mfu_bf16"] for row in report["rows"]} == {0.05}  # 20 of 400 GFLOP/s
    assert "- MFU vs same-run bf16 peak at nanochat-seed: 5.0%" in stdout
