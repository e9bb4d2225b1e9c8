"""Base val bpb after the same minutes of training, recipe against recipe, side by side on one machine.

    python benchmarks/base_recipe.py        # main before issue 22, main before depth 3, today's defaults: 8 min each
    python benchmarks/base_recipe.py --minutes 4 --recipes "default,vocab=8192 --max-seq-len 512" --repeats 2

Each recipe trains a base model from scratch with `picochat train --stage base --time-budget M`, in a home
of its own under a temp dir that links to $PICOCHAT_HOME's corpus, so every recipe sees the same text; a
recipe trains its tokenizer first, outside the budget. val bpb is bits per byte of the same val shard,
so recipes with different tokenizers compare; the val set is 4x the default (--eval-tokens) to shrink
its noise. Recipes run one after another (with --repeats, in turns: A B A B), never at once: two would
share the 2 cores. Takes (minutes + ~1) x recipes x repeats.

Output: a markdown table on stdout and JSON at --out (default benchmarks/results/base_recipe.json,
git-ignored) with the machine facts, each run's steps, tokens, tok/s and val bpb.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from train_throughput import machine_facts, run_quality

from picochat.common import atomic_write_text, picochat_home
from picochat.tokenizer_commands import TokenizerTrainConfig

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "base_recipe.json"
EVAL_TOKENS = 4 * 65536
# name -> (vocabulary, `picochat train` flags). "main-2026-12-06" spells out every setting main used before
# issue 22's changes, so it stays that recipe when the defaults move; "rows-512" is main after its vocab
# change and before base's rows of 256 (ce84a56); "depth-4" is main before depth 3; "untied" is main before
# tied embeddings; "default" is whatever the defaults are now.
MAIN_2026_12_06 = ["--depth", "4", "--max-seq-len", "512", "--device-batch-size", "16", "--matrix-lr", "0.02",
                   "--embedding-lr", "0.2", "--unembedding-lr", "0.004", "--warmup-ratio", "0",
                   "--warmdown-ratio", "0.2", "--final-lr-frac", "0", "--tie-embeddings", "false"]
RECIPES: dict[str, tuple[int, list[str]]] = {
    "main-2026-12-06": (8192, MAIN_2026_12_06),
    "rows-512": (4096, MAIN_2026_12_06),
    "depth-4": (4096, ["--depth", "4", "--max-seq-len", "256", "--device-batch-size", "32",
                       "--tie-embeddings", "false"]),
    "untied": (4096, ["--tie-embeddings", "false"]),
    "default": (TokenizerTrainConfig.vocab_size, []),
}


def parse_recipe(spec: str) -> tuple[int, list[str]]:
    """A recipe by name, or ad hoc: "vocab=4096 --device-batch-size 8" (what follows the vocab are flags)."""
    if spec in RECIPES:
        return RECIPES[spec]
    words = spec.split()
    if not words or not words[0].startswith("vocab="):
        raise SystemExit(f"base_recipe: unknown recipe {spec!r}; name one of {', '.join(RECIPES)} or write "
                         "'vocab=N --flag value ...'")
    return int(words[0].split("=", 1)[1]), words[1:]


def prepare_home(root: Path, name: str, vocab: int) -> Path:
    """A home that shares the corpus and has its own tokenizer of `vocab` tokens (trained once per vocab)."""
    home = root / name
    home.mkdir(parents=True)
    (home / "data").symlink_to(picochat_home() / "data")
    tokenizer = root / f"tokenizer-{vocab}"
    if not tokenizer.exists():
        trained = root / f"tokenizer-home-{vocab}"
        trained.mkdir()
        (trained / "data").symlink_to(picochat_home() / "data")
        subprocess.run([sys.executable, "-m", "picochat.cli", "tokenizer", "train", "--vocab-size", str(vocab),
                        "--home", str(trained)], stdout=sys.stderr, check=True)
        (trained / "tokenizer").rename(tokenizer)
    (home / "tokenizer").symlink_to(tokenizer)
    return home


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=8.0, help="training minutes per run (default 8)")
    parser.add_argument("--recipes", default="main-2026-12-06,depth-4,default",
                        help="comma-separated recipe names (or ad hoc 'vocab=N --flag v'); the first is the baseline")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each recipe, in turns")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if not (picochat_home() / "data" / "base").exists():
        raise SystemExit(f"base_recipe: no corpus in {picochat_home()}/data/base; run `picochat data prepare` first")
    specs = [spec.strip() for spec in args.recipes.split(",") if spec.strip()]
    recipes = {spec: parse_recipe(spec) for spec in specs}
    runs = []
    with tempfile.TemporaryDirectory(prefix="picochat-recipe-") as tmp:
        for repeat in range(args.repeats):
            for spec, (vocab, flags) in recipes.items():
                home = prepare_home(Path(tmp), f"{len(runs)}", vocab)
                result = run_quality(args.minutes, home, flags + ["--eval-tokens", str(EVAL_TOKENS)])
                runs.append({"recipe": spec, "repeat": repeat, "vocab": vocab, "flags": flags, **result})
                print(f"{spec}: val bpb {result['val_bpb']:.4f} after {result['steps']} steps", file=sys.stderr)
    report = {"machine": machine_facts(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "minutes": args.minutes, "eval_tokens": EVAL_TOKENS, "runs": runs}
    atomic_write_text(args.out, json.dumps(report, indent=2))
    baseline = [r["val_bpb"] for r in runs if r["recipe"] == specs[0]]
    print(f"machine: {report['machine']['cpu']}, native bf16: {report['machine']['native_bf16']}; "
          f"{args.minutes:g} min per run\n\n| recipe | run | vocab | steps | tokens | tok/s | val bpb | vs {specs[0]} |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        tok_s = r["tokens"] / r["train_seconds"]
        print(f"| {r['recipe']} | {r['repeat'] + 1} | {r['vocab']} | {r['steps']} | {r['tokens']:,} | {tok_s:,.0f} | "
              f"{r['val_bpb']:.4f} | {r['val_bpb'] - sum(baseline) / len(baseline):+.4f} |")
    print(f"\nJSON: {args.out}")


if __name__ == "__main__":
    main()
