"""Inference speed on this machine: decode tok/s with and without the KV cache, time to first token, and
batched sampling, each against the memory-bandwidth bound measured in the same run.

Decoding one token reads every weight once, so a step cannot be faster than (bytes of weights) / (copy
bandwidth): that bound is the yardstick here, as the matmul peak is for training. The model is the CPU
default's shape until 2026-12-06 (depth 4, vocab 8192; the reference results are of it) with its initial
weights: speed does not depend on what was learnt.

    python benchmarks/inference.py                 # ~1 min on 2 cores; JSON to benchmarks/results/
    python benchmarks/inference.py --dtypes float32 --new-tokens 128
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import machine_facts  # noqa: E402  (the same machine facts as the training benchmark)

from picochat.common import atomic_write_text  # noqa: E402
from picochat.runtime import DTYPES, Runtime, autodetect_dtype  # noqa: E402
from picochat.engine import Engine, Sampling  # noqa: E402
from picochat.model import GPT, GPTConfig  # noqa: E402
from picochat.perf import best_rate  # noqa: E402
from picochat.tokenizer import Tokenizer  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "inference.json"
PROMPT_TOKENS = 64
BATCHES = (1, 4, 8)


def copy_bandwidth(megabytes: int = 256) -> float:
    """Bytes/s of a large tensor copy (each byte read once and written once), best of a few repeats."""
    source = torch.ones(megabytes * 2**20 // 4)
    target = torch.empty_like(source)
    return 2 * source.numel() * 4 * best_rate(lambda: target.copy_(source), seconds=1.0, repeats=5)


def byte_tokenizer() -> Tokenizer:
    """A tokenizer of the model's vocab size whose merges are never used: the engine needs its specials."""
    ranks = {bytes([i]): i for i in range(256)}
    ranks.update({f"<merge {i}>".encode(): i for i in range(256, 8192 - 9)})
    return Tokenizer.from_ranks(ranks)


def decode_without_cache(model: GPT, prompt: torch.Tensor, new_tokens: int, runtime: Runtime) -> float:
    """Seconds for greedy decoding that runs the whole sequence again for every new token."""
    ids = prompt
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(new_tokens):
            with runtime.autocast():
                logits = model.next_logits(ids)
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return time.perf_counter() - start


def decode_with_cache(engine: Engine, prompt: list[int], new_tokens: int, samples: int) -> tuple[float, float]:
    """(seconds to the first new token, seconds for all of them) through the engine's KV cache."""
    sampling = Sampling(temperature=1.0, top_k=0, max_tokens=new_tokens, seed=0)
    start = time.perf_counter()
    first = None
    steps = 0
    for _ in engine.generate([prompt], sampling, samples):
        steps += 1
        first = first or time.perf_counter() - start
    assert steps == new_tokens, "a row stopped early"
    return first, time.perf_counter() - start


def measure(dtype_name: str, new_tokens: int, bandwidth: float) -> dict:
    torch.manual_seed(0)
    runtime = Runtime(torch.device("cpu"), DTYPES[dtype_name])
    model = GPT(GPTConfig.from_depth(4, 8192, 512)).eval()
    engine = Engine(model, byte_tokenizer(), runtime)
    engine.stop_ids = set()  # random weights may "say" assistant_end: keep every row going
    prompt = torch.randint(0, 256, (1, PROMPT_TOKENS))
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bound = bandwidth / weight_bytes  # decode steps/s if reading the weights were all a step did
    decode_with_cache(engine, prompt[0].tolist(), 8, 1)  # warm-up: allocator, thread pool
    row = {"dtype": dtype_name, "weight_mb": round(weight_bytes / 2**20, 1), "bandwidth_bound_steps_per_s": round(bound, 1)}
    no_cache = decode_without_cache(model, prompt, new_tokens, runtime)
    row["no_cache_tok_per_s"] = round(new_tokens / no_cache, 1)
    for samples in BATCHES:
        first, total = decode_with_cache(engine, prompt[0].tolist(), new_tokens, samples)
        row[f"n{samples}"] = {"time_to_first_token_ms": round(first * 1000, 1),
                              "tok_per_s": round(samples * new_tokens / total, 1),
                              "steps_per_s": round(new_tokens / total, 1),
                              "of_bandwidth_bound": round(new_tokens / total / bound, 3)}
    row["cache_speedup"] = round(row["n1"]["tok_per_s"] / row["no_cache_tok_per_s"], 1)
    return row


def print_table(report: dict) -> None:
    machine = report["machine"]
    print(f"{machine['cpu']} ({machine['cpu_family_model']}), {machine['cores']} cores, torch {machine['torch']}; "
          f"copy bandwidth {report['copy_bandwidth_gb_s']} GB/s; {report['new_tokens']} new tokens after a "
          f"{PROMPT_TOKENS}-token prompt\n")
    print("| dtype | weights MB | no cache tok/s | cache tok/s (N=1) | speed-up | first token ms | N=4 tok/s | "
          "N=8 tok/s | N=1 of bandwidth bound |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in report["rows"]:
        print(f"| {r['dtype']} | {r['weight_mb']} | {r['no_cache_tok_per_s']:,} | {r['n1']['tok_per_s']:,} | "
              f"{r['cache_speedup']}x | {r['n1']['time_to_first_token_ms']} | {r['n4']['tok_per_s']:,} | "
              f"{r['n8']['tok_per_s']:,} | {r['n1']['of_bandwidth_bound']:.1%} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="picochat inference speed: KV cache, first token, batching")
    parser.add_argument("--dtypes", nargs="+", choices=tuple(DTYPES),
                        help="default: float32, plus bfloat16 where the CPU has native bf16")
    parser.add_argument("--new-tokens", type=int, default=256, help="tokens to decode per measurement")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if args.new_tokens < 1:
        parser.error("--new-tokens must be >= 1")
    dtypes = args.dtypes or sorted({"float32", autodetect_dtype("cpu")}, reverse=True)
    bandwidth = copy_bandwidth()
    report = {"machine": machine_facts(), "new_tokens": args.new_tokens, "prompt_tokens": PROMPT_TOKENS,
              "copy_bandwidth_gb_s": round(bandwidth / 1e9, 1),
              "rows": [measure(dtype, args.new_tokens, bandwidth) for dtype in dtypes]}
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"\nresults: {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
