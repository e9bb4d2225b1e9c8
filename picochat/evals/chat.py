"""`picochat eval chat`: a chat model's accuracy on held-out tasks, answered through the engine.

Each problem's prompt is the task's conversation without its answer; the engine answers greedily (the
calculator included) and the task scores the text. Results, with the standard error of each accuracy,
go to $PICOCHAT_HOME/evals/<stage>_chat.json for the report.

    picochat eval chat --max-problems 100
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

from tqdm import tqdm

from picochat.common import atomic_write_text, print0
from picochat.config import build, option
from picochat.engine import Engine, LoadConfig, Sampling
from picochat.tasks import Task
from picochat.tasks.arithmetic import ArithmeticWithTool
from picochat.tasks.spelling_bee import SpellingBee


@dataclass
class ChatEvalConfig:
    max_problems: int = option(200, "problems per task at most (0: all)")
    max_tokens: int = option(128, "longest answer, in tokens")


def chat_tasks(home) -> list[Task]:
    return [ArithmeticWithTool("eval"), SpellingBee.from_corpus(home, "eval")]


def evaluate_task(engine: Engine, task: Task, max_problems: int, max_tokens: int) -> dict:
    """Accuracy over the first max_problems problems, greedy, with its standard error."""
    count = min(len(task), max_problems) if max_problems else len(task)
    sampling = Sampling(temperature=0, max_tokens=max_tokens)
    correct, start = 0, time.perf_counter()
    for index in tqdm(range(count), desc=task.name, leave=False, disable=None):  # no bar off a terminal
        answer = engine.complete([engine.prompt_ids(task.prompt(index))], sampling)[0]["text"]
        correct += task.score(task[index], answer)
    accuracy = correct / count
    return {"task": task.name, "problems": count, "correct": correct, "accuracy": accuracy,
            "stderr": math.sqrt(accuracy * (1 - accuracy) / count), "seconds": round(time.perf_counter() - start, 1),
            "source": task.source, "license": task.license}


def run(args) -> dict:
    config, load = build(ChatEvalConfig, args), build(LoadConfig, args)
    engine = Engine.load(load)
    home = load.home_path
    results = [evaluate_task(engine, task, config.max_problems, config.max_tokens) for task in chat_tasks(home)]
    print0("| task | problems | accuracy | +- stderr | seconds |\n|---|---:|---:|---:|---:|")
    for r in results:
        print0(f"| {r['task']} | {r['problems']} | {r['accuracy']:.1%} | {r['stderr']:.1%} | {r['seconds']} |")
    report = {**engine.info, "results": results}
    path = home / "evals" / f"{engine.info['stage']}_chat.json"
    atomic_write_text(path, json.dumps(report, indent=2))
    print0(f"results: {path}")
    return report
