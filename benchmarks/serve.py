"""Serving several people at once: `picochat serve` with continuous batching against one request at a time.

For each setting of the server (`--max-batch 1`: one request at a time; `--max-batch 16`: every token of up
to 16 requests in one forward), 1, 4 and 16 clients each send --requests streaming chat requests, one after
another, with the openai client, and the run measures the aggregate completion tok/s (all tokens over the
wall time) and the time to first token (request sent -> first streamed text), p50 and p95. Answers are
greedy, so both settings generate the same tokens (tests/test_server.py checks that an answer is the same
alone or beside 15 others) and do the same work.

    python benchmarks/serve.py --home ~/.cache/picochat      # a trained home (the CPU default's): ~4 min
    python benchmarks/serve.py --clients 1 16 --requests 2

Output: a markdown table on stdout, and JSON at --out (default benchmarks/results/serve.json, git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import machine_facts  # noqa: E402  (the same machine facts as the training benchmark)

from picochat.common import atomic_write_text  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "serve.json"
QUESTIONS = ["Hello! Who are you?", "What is 37 times 24?", "How many r are in the word strawberry?",
             "Thanks a lot!", "What can you do?", "Spell the word house backwards.", "What's 15% of 80?",
             "Tell me about the moon.", "Goodbye!", "Count the letter e in excellence.", "What is 1200 divided by 6?",
             "Can you write a poem?", "Hi there", "How much is 9 plus 10?", "What is the capital of France?",
             "What is the third letter of banana?"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(args, max_batch: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "picochat.cli", "serve", "--port", str(port), "--max-batch", str(max_batch),
               "--max-queue", "64", "--max-tokens", str(args.max_tokens), "--source", args.source]
    if args.home:
        command += ["--home", str(args.home)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"serve.py: error: picochat serve exited: {server.stderr.read().strip()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return server, url
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("serve.py: error: picochat serve did not answer /health within 120 s")


def one_request(api, question: str, max_tokens: int) -> tuple[float, int]:
    """(seconds to the first streamed text, completion tokens) of one streamed greedy answer."""
    start, first, tokens = time.perf_counter(), None, 0
    stream = api.chat.completions.create(model="picochat", messages=[{"role": "user", "content": question}],
                                         max_tokens=max_tokens, temperature=0, stream=True,
                                         stream_options={"include_usage": True})
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return (first if first is not None else time.perf_counter() - start), tokens


def measure(url: str, clients: int, requests: int, max_tokens: int) -> dict:
    from openai import OpenAI
    api = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)

    def client(index: int) -> list[tuple[float, int]]:
        return [one_request(api, QUESTIONS[(index * requests + i) % len(QUESTIONS)], max_tokens)
                for i in range(requests)]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [result for answers in pool.map(client, range(clients)) for result in answers]
    wall = time.perf_counter() - start
    firsts = sorted(first for first, _ in results)
    tokens = sum(count for _, count in results)
    return {"clients": clients, "requests": len(results), "completion_tokens": tokens, "wall_s": round(wall, 2),
            "tok_per_s": round(tokens / wall, 1), "ttft_p50_ms": round(1000 * statistics.median(firsts), 1),
            "ttft_p95_ms": round(1000 * firsts[min(len(firsts) - 1, round(0.95 * (len(firsts) - 1)))], 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="picochat serve: continuous batching against one at a time")
    parser.add_argument("--home", type=Path, help="a trained PICOCHAT_HOME (default: picochat serve's own)")
    parser.add_argument("--source", default="auto", help="the stage to serve (default: the latest)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16], help="concurrent clients")
    parser.add_argument("--requests", type=int, default=4, help="requests each client sends, one after another")
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens of each request")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="--max-batch settings to compare")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if min(args.clients + args.batches + [args.requests, args.max_tokens]) < 1:
        parser.error("--clients, --batches, --requests and --max-tokens must be >= 1")
    rows = []
    for max_batch in args.batches:
        server, url = start_server(args, max_batch)
        try:
            measure(url, 1, 1, 8)  # warm-up: the thread pools and the allocator
            for clients in args.clients:
                rows.append({"max_batch": max_batch, **measure(url, clients, args.requests, args.max_tokens)})
                print(f"max_batch {max_batch}, {clients} clients: {rows[-1]['tok_per_s']} tok/s", file=sys.stderr)
        finally:
            server.terminate()
            server.wait(timeout=30)
    report = {"machine": machine_facts(), "home": str(args.home or os.environ.get("PICOCHAT_HOME", "default")),
              "source": args.source, "max_tokens": args.max_tokens, "requests_per_client": args.requests,
              "rows": rows, "batched_over_one_at_a_time": compare(rows, min(args.batches), max(args.batches))}
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"\nresults: {args.out}", file=sys.stderr)


def compare(rows: list[dict], off: int, on: int) -> list[dict]:
    """Per client count: the batched server's tok/s and p95 time to first token over the one-at-a-time one's."""
    by = {(row["max_batch"], row["clients"]): row for row in rows}
    return [{"clients": clients, "tok_per_s_ratio": round(by[on, clients]["tok_per_s"] / by[off, clients]["tok_per_s"], 2),
             "ttft_p95_ratio": round(by[on, clients]["ttft_p95_ms"] / by[off, clients]["ttft_p95_ms"], 2)}
            for (batch, clients) in by if batch == on and (off, clients) in by and off != on]


def print_table(report: dict) -> None:
    machine = report["machine"]
    print(f"{machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}; {report['requests_per_client']} "
          f"streamed greedy requests per client, max_tokens {report['max_tokens']}\n")
    print("| --max-batch | clients | requests | tokens | wall s | aggregate tok/s | TTFT p50 ms | TTFT p95 ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in report["rows"]:
        print(f"| {r['max_batch']} | {r['clients']} | {r['requests']} | {r['completion_tokens']} | {r['wall_s']} | "
              f"{r['tok_per_s']} | {r['ttft_p50_ms']} | {r['ttft_p95_ms']} |")
    for c in report["batched_over_one_at_a_time"]:
        print(f"\n{c['clients']} clients: batched/one-at-a-time tok/s {c['tok_per_s_ratio']}x, "
              f"TTFT p95 {c['ttft_p95_ratio']}x", end="")
    print()


if __name__ == "__main__":
    main()
