"""Training throughput on this CPU: tok/s, MFU against matmul peaks measured in the same run, peak memory.

Each configuration x dtype x (eager, torch.compile) variant trains in its own subprocess, so its peak RSS
is its own and no compile cache carries over. Full training steps, exactly as picochat.train takes them,
on random tokens (the data pipeline is not measured here; `--minutes` runs the real one).

    python benchmarks/train_throughput.py --quick       # cpu default, bf16, eager + compiled: ~2 min
    python benchmarks/train_throughput.py               # every variant below: ~15 min on an idle 2-core Zen 4/5
    python benchmarks/train_throughput.py --minutes 8   # also `picochat train` for 8 min; records val bpb

The full run takes ~25-30 min where another process shares the 2 cores. A CPU without native bf16 (no
avx512_bf16/amx_bf16 in /proc/cpuinfo, e.g. AMD Zen 2/3) emulates bf16 matmuls at a few GFLOP/s: there the bf16
variants are skipped unless --dtypes asks for them (--quick runs fp32, still ~2 min), the full run takes ~10 min
(~15-20 shared), and the MFU targets are judged against the fp32 peak.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from picochat.checkpoint import checkpoint_dir
from picochat.common import atomic_write_text, picochat_home
from picochat.runtime import DTYPES, Runtime, autodetect_dtype, cpu_supports_bf16
from picochat.loss import linear_cross_entropy
from picochat.model import GPT, GPTConfig
from picochat.optim import OptimConfig, build_optimizers
from picochat.perf import CPU_SQUARE, measure_matmul_flops, mfu_warning, peak_flops, peak_rss_bytes
from picochat.tokenizer_commands import TokenizerTrainConfig
from picochat.step import train_step
from picochat.train import TrainConfig, resolve_configs
from picochat.data.loader import Batch

# What to measure; edit freely. The cpu default is what `picochat train --stage base` runs with no flags
# (resolved as train.py resolves it: TrainConfig's defaults under the base stage's preset) and the
# tokenizer's default vocab.
BASE = resolve_configs("base", {}, None)[0]
CONFIGS: dict[str, dict] = {
    "picochat-cpu-default": dict(depth=BASE.depth, vocab_size=TokenizerTrainConfig.vocab_size,
                                 sequence_len=BASE.max_seq_len, device_batch_size=BASE.device_batch_size,
                                 grad_accum=1),
    # nanochat's seed run (BRIEF section 4): 16,384 tokens/step as one 32 x 512 micro-batch, not 8 x 512 x 4
    # accumulation steps, because one big batch gives the matmuls more rows.
    "nanochat-seed": dict(depth=4, vocab_size=32768, sequence_len=512, device_batch_size=32, grad_accum=1),
    # A wider model: a smaller share of its FLOPs is attention, the slowest kernel on a CPU.
    "picochat-d8": dict(depth=8, vocab_size=8192, sequence_len=512, device_batch_size=16, grad_accum=1),
}
DTYPE_NAMES = ("float32", "bfloat16")
SHORT = {"float32": "fp32", "bfloat16": "bf16"}
MODES = ("eager", "compiled")
WARMUP_STEPS = 2     # the first steps pay for torch.compile and allocator growth: never timed
# picochat's targets: MFU against the bf16 peak (the fp32 one on a CPU without native bf16); 2 GB = 2048 MiB.
TARGETS = {"seed_mfu": 0.50, "best_mfu": 0.60, "default_rss_mb": 2048}
BF16_SKIPPED = ("bf16 skipped: this CPU has no native bf16 (avx512_bf16/amx); it would be emulated and very slow; "
                "pass --dtypes bfloat16 to force it")
RESULT_PREFIX = "RESULT_JSON "  # marks the worker's one line of output among anything torch prints
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "train_throughput.json"


# ----------------------------------------------------------------------------------------------------------
# Worker: one variant in this process

def random_batches(spec: dict) -> list[Batch]:
    """grad_accum micro-batches of (inputs, targets), each (B, T) random token ids."""
    shape = (spec["device_batch_size"], spec["sequence_len"])
    return [Batch(torch.randint(spec["vocab_size"], shape), torch.randint(spec["vocab_size"], shape))
            for _ in range(spec["grad_accum"])]


def run_worker(spec: dict) -> dict:
    """Build the model, maybe compile it, take WARMUP_STEPS untimed steps, then time spec['steps'] steps."""
    torch.manual_seed(0)
    runtime = Runtime(device=torch.device("cpu"), dtype=DTYPES[spec["dtype"]])
    model = GPT(GPTConfig.from_depth(spec["depth"], spec["vocab_size"], spec["sequence_len"]))
    optimizers = build_optimizers(model, OptimConfig(), runtime.dtype)
    step_model = torch.compile(model) if spec["compile"] else model
    start = time.perf_counter()
    for _ in range(WARMUP_STEPS):
        train_step(step_model, model, optimizers, random_batches(spec), runtime)
    warmup_seconds = time.perf_counter() - start
    step_seconds, loss = [], float("nan")
    for _ in range(spec["steps"]):
        batches = random_batches(spec)  # made outside the timer: only the training step is measured
        start = time.perf_counter()
        loss = train_step(step_model, model, optimizers, batches, runtime)
        step_seconds.append(time.perf_counter() - start)
    tokens_per_step = spec["device_batch_size"] * spec["sequence_len"] * spec["grad_accum"]
    return {"device_batch_size": spec["device_batch_size"], "grad_accum": spec["grad_accum"],
            "tokens_per_step": tokens_per_step, "params": model.num_params()["total"],
            "flops_per_token": model.flops_per_token(), "loss": round(loss, 4),
            "warmup_seconds": round(warmup_seconds, 2), "step_seconds": [round(s, 3) for s in step_seconds],
            "tok_per_s": tokens_per_step * len(step_seconds) / sum(step_seconds),
            "peak_rss_mb": round(peak_rss_bytes() / 2**20)}


# ----------------------------------------------------------------------------------------------------------
# Parent: machine facts, matmul peaks, one subprocess per variant

def machine_facts() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    first_cpu = cpuinfo.split("\n\n")[0].splitlines()  # every core repeats the same block
    fields = {key.strip(): value.strip() for key, value in (line.split(":", 1) for line in first_cpu if ":" in line)}
    flags = set(fields.get("flags", "").split())
    # avx512_bf16/amx: native bf16 matmuls. avx512_vp2intersect tells Zen 5 from Zen 4 (BRIEF section 4).
    # Family/model tell CPU generations apart where a VM only says "AMD EPYC" (AMD family 25: Zen 3/4, 26: Zen 5).
    return {"cpu": fields.get("model name") or platform.processor(),
            "cpu_family_model": f"{fields.get('cpu family', '?')}/{fields.get('model', '?')}", "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "native_bf16": cpu_supports_bf16(),
            "flags": {flag: flag in flags for flag in ("avx512_bf16", "amx_bf16", "amx_tile", "avx512_vp2intersect")},
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def matmul_shapes(config: dict) -> dict[str, tuple[int, int, int]]:
    """(m, k, n) of the configuration's matmuls, m = tokens in one micro-batch."""
    width = GPTConfig.from_depth(config["depth"], config["vocab_size"], config["sequence_len"]).n_embd
    tokens, vocab = config["device_batch_size"] * config["sequence_len"], config["vocab_size"]
    # The fused lm_head + loss runs over chunks of rows; this is the shape it really multiplies.
    chunk_rows = inspect.signature(linear_cross_entropy).parameters["chunk_rows"].default
    return {"mlp": (tokens, width, 4 * width), "attn_proj": (tokens, width, width),
            "lm_head": (tokens, width, vocab), "lm_head_chunk": (chunk_rows, width, vocab)}


def gflops(shape: tuple[int, int, int], dtype_name: str) -> float:
    return round(measure_matmul_flops(*shape, DTYPES[dtype_name], "cpu") / 1e9, 1)


def target_peak_dtype(native_bf16: bool) -> str:
    """The MFU targets are stated against the bf16 peak; an emulated bf16 peak is no yardstick."""
    return "bfloat16" if native_bf16 else "float32"


def peak_dtypes(dtypes: list[str], native_bf16: bool) -> list[str]:
    """The dtypes whose peaks a run needs: its own, and the one its MFU targets are judged against."""
    return [d for d in DTYPE_NAMES if d in dtypes or d == target_peak_dtype(native_bf16)]


def square_peaks(dtypes: list[str]) -> dict:
    """GFLOP/s that MFU is stated against: picochat.perf.peak_flops, the peak `picochat train` measures."""
    measured = {d: peak_flops(torch.device("cpu"), DTYPES[d]) for d in dtypes}
    return {"shape": [CPU_SQUARE] * 3, **{d: round(flops / 1e9, 1) for d, (flops, _) in measured.items()},
            "source": {d: source for d, (_, source) in measured.items()}}


def measure_peaks(config_names: list[str], dtypes: list[str], native_bf16: bool) -> dict:
    """GFLOP/s: the square peaks, and each configuration's own shapes, which say how much of that peak its
    matmuls can reach at all."""
    # Emulated bf16 runs at the same few GFLOP/s whatever the shape, and one lm_head matmul there takes minutes.
    shape_dtypes = [d for d in dtypes if native_bf16 or d != "bfloat16"]
    peaks = {"square": square_peaks(dtypes)}
    for name in config_names:
        peaks[name] = {label: {"shape": list(shape), **{d: gflops(shape, d) for d in shape_dtypes}}
                       for label, shape in matmul_shapes(CONFIGS[name]).items()}
    return peaks


def run_variant(name: str, dtype: str, mode: str, steps: int) -> dict:
    """Train one variant in a fresh interpreter; a failure becomes a row with its error line."""
    spec = {**CONFIGS[name], "dtype": dtype, "compile": mode == "compiled", "steps": steps}
    row = {"config": name, "dtype": dtype, "mode": mode}
    print(f"{name} {dtype} {mode}: {WARMUP_STEPS} warm-up + {steps} timed steps", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="picochat-inductor-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}  # every compiled variant starts cold
        done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                              capture_output=True, text=True, env=env)
    results = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not results:
        error = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        print(f"  failed: {error}", file=sys.stderr, flush=True)
        return {**row, "error": error}
    return {**row, **json.loads(results[-1][len(RESULT_PREFIX):])}


def mfu_key(peak_dtype: str) -> str:
    return f"mfu_{SHORT[peak_dtype]}"


def add_mfu(row: dict, square: dict, peak_dtype: str) -> dict:
    """MFU against the same-run square peak of the row's own dtype, and against the targets' peak."""
    if "error" in row:
        return row
    flops = row["flops_per_token"] * row["tok_per_s"]
    return {**row, "tok_per_s": round(row["tok_per_s"], 1), "mfu": round(flops / (square[row["dtype"]] * 1e9), 4),
            mfu_key(peak_dtype): round(flops / (square[peak_dtype] * 1e9), 4)}


# ----------------------------------------------------------------------------------------------------------
# Quality: the real pipeline for a few minutes

def run_quality(minutes: float, home: Path | None = None, flags: list[str] = ()) -> dict:
    """`picochat train --stage base --time-budget M [flags]` on the corpus under home (default
    $PICOCHAT_HOME), then its val bpb."""
    command = [sys.executable, "-m", "picochat.cli", "train", "--stage", "base", "--time-budget", str(minutes),
               *(["--home", str(home)] if home else []), *flags]
    print(f"quality: picochat train --stage base --time-budget {minutes} {' '.join(flags)}", file=sys.stderr,
          flush=True)
    start = time.perf_counter()
    # Its progress goes to stderr so that stdout stays the markdown table.
    if subprocess.run(command, stdout=sys.stderr).returncode != 0:
        raise SystemExit("train_throughput: `picochat train` failed (its error is above); --minutes needs "
                         "a prepared corpus and tokenizer under $PICOCHAT_HOME (scripts/local_cpu_train.sh)")
    wall_seconds = time.perf_counter() - start
    out_dir = checkpoint_dir(picochat_home(home), "base")
    done = json.loads((out_dir / "done.json").read_text())
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["step"], r["tokens"], r["val_bpb"]) for r in records if "val_bpb" in r]
    return {"minutes": minutes, "val_bpb": done["val_bpb"], "tokens": done["tokens"], "steps": done["step"],
            "train_seconds": done["train_seconds"], "wall_seconds": round(wall_seconds, 1),
            "peak_rss_mb": done.get("peak_rss_mb"), "val_bpb_curve": curve}


# ----------------------------------------------------------------------------------------------------------
# Report

def gflops_cell(entry: dict, dtype: str) -> str:
    return f"{entry[dtype]:,.0f}" if dtype in entry else "-"  # "-": not measured in this run


def peaks_table(peaks: dict) -> list[str]:
    lines = ["| matmul | m x k x n | fp32 GFLOP/s | bf16 GFLOP/s |", "|---|---|---:|---:|"]
    entries = [("square", peaks["square"])] + [(f"{name} {label}", entry) for name, shapes in peaks.items()
                                               if name in CONFIGS for label, entry in shapes.items()]
    for label, entry in entries:
        lines.append(f"| {label} | {' x '.join(map(str, entry['shape']))} | {gflops_cell(entry, 'float32')} | "
                     f"{gflops_cell(entry, 'bfloat16')} |")
    return lines


def rows_table(rows: list[dict], peak_dtype: str) -> list[str]:
    lines = ["| config | dtype | mode | tok/s | step s | MFU (own-dtype peak) | "
             f"MFU ({SHORT[peak_dtype]} peak) | peak RSS MB |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | {r['dtype']} | {r['mode']} | failed: {r['error'][:80]} | | | | |")
            continue
        step = sum(r["step_seconds"]) / len(r["step_seconds"])
        lines.append(f"| {r['config']} | {r['dtype']} | {r['mode']} | {r['tok_per_s']:,.0f} | {step:.2f} | "
                     f"{r['mfu']:.1%} | {r[mfu_key(peak_dtype)]:.1%} | {r['peak_rss_mb']:,} |")
    return lines


def verdict(label: str, row: dict | None, key: str, target: float, at_least: bool) -> str:
    if row is None:
        return f"- {label}: not measured in this run"
    value = row[key]
    passed = value >= target if at_least else value <= target
    shown = (f"{value:.1%}", f"{target:.0%}") if key.startswith("mfu") else (f"{value:,} MB", f"{target:,} MB")
    return (f"- {label}: {shown[0]} ({row['config']} {row['dtype']} {row['mode']}), target "
            f"{'>=' if at_least else '<='} {shown[1]}: {'pass' if passed else 'short'}")


def best(rows: list[dict], key: str) -> dict | None:
    return max(rows, key=lambda r: r[key], default=None)


def target_lines(rows: list[dict], peak_dtype: str) -> list[str]:
    measured = [r for r in rows if "error" not in r]
    seed = [r for r in measured if r["config"] == "nanochat-seed"]
    key, peak = mfu_key(peak_dtype), f"same-run {SHORT[peak_dtype]} peak"
    # RSS is judged on the variant `picochat train` runs by default on this machine.
    default_mode = "compiled" if TrainConfig.compile else "eager"
    default = [r for r in measured if r["config"] == "picochat-cpu-default"
               and r["dtype"] == autodetect_dtype("cpu") and r["mode"] == default_mode]
    lines = [] if peak_dtype == "bfloat16" else [
        "- MFU targets are judged against the fp32 peak: this CPU has no native bf16 (they are stated "
        "against the bf16 peak)"]
    return lines + [verdict(f"MFU vs {peak} at nanochat-seed", best(seed, key), key, TARGETS["seed_mfu"], True),
                    verdict(f"MFU vs {peak}, best variant", best(measured, key), key, TARGETS["best_mfu"], True),
                    verdict("peak RSS of the cpu default", default[0] if default else None, "peak_rss_mb",
                            TARGETS["default_rss_mb"], False)]


def print_report(report: dict) -> None:
    machine, peaks, peak_dtype = report["machine"], report["peaks"], report["settings"]["mfu_target_peak"]
    print(f"{machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
          f"flags: {', '.join(f for f, present in machine['flags'].items() if present) or 'none'}\n")
    print("\n".join(peaks_table(peaks)))
    print("\nsquare peaks: " + "; ".join(f"{SHORT[d]} {source}" for d, source in peaks["square"]["source"].items()))
    end = peaks["square_at_end"]
    print("square peaks at the end of the run: "
          + ", ".join(f"{SHORT[d]} {end[d]:,.0f}" for d in end["source"])
          + " GFLOP/s (a big change means the machine was busy)\n")
    print("\n".join(rows_table(report["rows"], peak_dtype)))
    warnings = {mfu_warning(r["mfu"], "cpu") for r in report["rows"] if "error" not in r} - {None}
    print("\n" + "\n".join([*warnings, *target_lines(report["rows"], peak_dtype)]))
    if "quality" in report:
        q = report["quality"]
        print(f"- quality: val bpb {q['val_bpb']:.4f} after {q['minutes']} min ({q['tokens']:,} tokens, "
              f"peak RSS {q['peak_rss_mb']} MB)")


# ----------------------------------------------------------------------------------------------------------
# Command line

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="picochat training throughput and MFU on this CPU",
        epilog="The full run takes ~15 min on an idle 2-core Zen 4/5 with native bf16 (~25-30 shared); on a CPU "
               "without native bf16 it skips bf16 and takes ~10 min (~15-20 shared).")
    parser.add_argument("--quick", action="store_true",
                        help="only picochat-cpu-default in bfloat16 (float32 without native bf16), 2 timed steps: "
                             "~2 min")
    parser.add_argument("--configs", nargs="+", choices=tuple(CONFIGS),
                        help="configurations to run (default: all; with --quick: picochat-cpu-default)")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPE_NAMES,
                        help="default: both (float32 only on a CPU without native bf16); with --quick: bfloat16 "
                             "(float32 without native bf16)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="default: both")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per variant (default 5; --quick: 2)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default: {DEFAULT_OUT})")
    parser.add_argument("--minutes", type=float, default=0.0,
                        help="also run `picochat train --stage base --time-budget M` and record its val bpb")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one variant, as a JSON spec
    args = parser.parse_args(argv)
    if args.steps < 0 or args.minutes < 0:
        parser.error("--steps and --minutes must be >= 0")
    args.configs = args.configs or (["picochat-cpu-default"] if args.quick else list(CONFIGS))
    args.dtypes = args.dtypes or default_dtypes(args.quick, cpu_supports_bf16())
    args.steps = args.steps or (2 if args.quick else 5)
    return args


def default_dtypes(quick: bool, native_bf16: bool) -> list[str]:
    """Without native bf16, bf16 is emulated at a few GFLOP/s: hours for the bf16 variants, so fp32 only."""
    if not native_bf16:
        return ["float32"]
    return ["bfloat16"] if quick else list(DTYPE_NAMES)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(RESULT_PREFIX + json.dumps(run_worker(json.loads(args.worker))), flush=True)
        return
    native_bf16 = cpu_supports_bf16()
    peak_dtype = target_peak_dtype(native_bf16)
    report = {"machine": machine_facts(),
              "settings": {"warmup_steps": WARMUP_STEPS, "steps": args.steps, "quick": args.quick,
                           "dtypes": args.dtypes, "modes": args.modes, "mfu_target_peak": peak_dtype,
                           "configs": {name: CONFIGS[name] for name in args.configs}}}
    if not native_bf16 and "bfloat16" not in args.dtypes:
        print(BF16_SKIPPED, file=sys.stderr, flush=True)
    print("measuring matmul peaks", file=sys.stderr, flush=True)
    peak_names = peak_dtypes(args.dtypes, native_bf16)
    report["peaks"] = measure_peaks(args.configs, peak_names, native_bf16)
    rows = [run_variant(name, dtype, mode, args.steps)
            for name in args.configs for dtype in args.dtypes for mode in args.modes]
    report["peaks"]["square_at_end"] = square_peaks(peak_names)
    report["rows"] = [add_mfu(row, report["peaks"]["square"], peak_dtype) for row in rows]
    if args.minutes:
        report["quality"] = run_quality(args.minutes)
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")  # creates the folder
    print_report(report)
    print(f"\nresults: {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
