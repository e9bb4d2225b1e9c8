"""`picochat eval chat`: generative scoring through the engine, categorical scoring by letter logits,
accuracy with its standard error, ChatCORE's centring, task selection, and the JSON results of a real run.

    python -m pytest tests/test_eval_chat.py
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import TINY, flags_dict
from picochat.common import UserError
from picochat.evals.chat import CHAT_TASKS, CHATCORE_TASKS, chat_core, evaluate_task, task_names
from picochat.evals.chat import run as eval_chat
from picochat.sandbox import describe as describe_sandbox
from picochat.tasks import Task
from picochat.tasks.arithmetic import ArithmeticWithTool
from picochat.tasks.multiple_choice import multiple_choice
from picochat.train import run


class Oracle:
    """Answers each problem with its reference answer, or with a wrong number for every third one."""

    def __init__(self, task):
        self.task, self.batches = task, []

    def prompt_ids(self, conversation):
        return conversation

    def complete(self, prompts, sampling):
        indices = [next(i for i in range(len(self.task)) if self.task.prompt(i) == p) for p in prompts]
        self.batches.append(indices)
        answers = [self.task[i]["answer"] if i % 3 else "-1" for i in indices]
        return [{"text": f"... #### {answer}", "tokens": [], "finish_reason": "length" if i == 5 else "stop"}
                for i, answer in zip(indices, answers)]


def test_accuracy_and_its_standard_error_over_batches():
    task = ArithmeticWithTool("eval", size=30)
    oracle = Oracle(task)
    result = evaluate_task(oracle, task, max_problems=12, max_tokens=16, batch_size=5)
    assert oracle.batches == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]
    assert (result["problems"], result["correct"]) == (12, 8)  # indices 0, 3, 6, 9 answered wrong
    assert result["accuracy"] == pytest.approx(8 / 12)
    assert result["stderr"] == pytest.approx(math.sqrt(8 / 12 * 4 / 12 / 12))
    assert result["centered"] == result["accuracy"]  # a free answer: guessing scores 0
    assert result["stop_rate"] == 11 / 12  # problem 5 ran into max_tokens


class Quiz(Task):
    name, kind, random_baseline = "quiz", "categorical", 0.25

    def __init__(self):
        super().__init__("eval")
        self.examples = [multiple_choice(f"Question {i}?", ["w", "x", "y", "z"], i % 4) for i in range(8)]

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, index):
        return self.examples[index]


class LetterModel:
    """An engine whose next-token logits favour, per prompt, a scripted letter (and sometimes a non-letter
    token above every letter)."""

    def __init__(self, tokenizer, picks: list[str], rambles: set[int]):
        self.tokenizer, self.picks, self.rambles, self.seen = tokenizer, picks, rambles, 0

    def prompt_ids(self, conversation):
        return [len(conversation["messages"][0]["content"])]

    def prefill(self, prompts):
        logits = torch.zeros(len(prompts), self.tokenizer.vocab_size)
        for row in range(len(prompts)):
            index = self.seen + row
            logits[row, self.tokenizer.encode(self.picks[index])[0]] = 5.0
            if index in self.rambles:
                logits[row, self.tokenizer.encode(" the")[0]] = 9.0
        self.seen += len(prompts)
        return logits, None


def test_categorical_answers_are_the_best_letter_and_the_letter_rate_is_measured(tiny_tokenizer):
    task = Quiz()
    picks = [task[i]["answer"] if i < 6 else "A" for i in range(8)]  # 6 right, then A for answers C and D
    result = evaluate_task(LetterModel(tiny_tokenizer, picks, rambles={1, 4}), task, 8, 16, batch_size=3)
    assert (result["correct"], result["letter_rate"]) == (6, 6 / 8)  # rambling changes the letter rate only
    assert result["centered"] == pytest.approx((6 / 8 - 0.25) / 0.75)


def test_chat_core_is_nanochats_six_tasks_without_arithmetic_and_tasks_are_checked():
    six = dict(zip(CHATCORE_TASKS, [1.0, 0.0, -0.5, 0.25, 0.0, 0.5]))
    results = [{"task": task, "centered": centred} for task, centred in six.items()]
    assert chat_core(results) == pytest.approx(1.25 / 6)
    assert chat_core(results + [{"task": "arithmetic", "centered": 0.98}]) == pytest.approx(1.25 / 6)
    assert chat_core(results[1:]) is None  # five of the six is not ChatCORE
    assert set(CHATCORE_TASKS) == set(CHAT_TASKS) - {"arithmetic", "arithmetic_follow_up", "spelling", "identity"}
    assert task_names("all") == list(CHAT_TASKS)
    assert task_names("gsm8k, arc_easy") == ["gsm8k", "arc_easy"]
    with pytest.raises(UserError, match="unknown task nope"):
        task_names("arc_easy,nope")


def test_eval_chat_writes_results_for_the_stage(fresh_home, capsys):
    run(flags_dict(*TINY, "--max-seq-len", "256", "--num-iterations", "2", "--home", str(fresh_home)))
    run(flags_dict(*TINY, "--stage", "mid", "--num-iterations", "2", "--home", str(fresh_home)))
    report = eval_chat({"max_problems": 3, "max_tokens": 8, "batch_size": 2, "device": "cpu",
                        "home": str(fresh_home)})
    saved = json.loads((fresh_home / "evals" / "mid_chat.json").read_text())
    assert saved == report and saved["stage"] == "mid"
    assert [r["task"] for r in saved["results"]] == list(CHAT_TASKS)
    assert all(r["problems"] == min(3, r["available"]) and r["available"] == len(CHAT_TASKS[r["task"]](fresh_home))
               for r in saved["results"])
    assert all(0 <= r["accuracy"] <= 1 for r in saved["results"])
    assert all(0 <= r["letter_rate" if r["kind"] == "categorical" else "stop_rate"] <= 1 for r in saved["results"])
    assert saved["chatcore"] == pytest.approx(chat_core(saved["results"]))
    assert saved["chatcore_tasks"] == list(CHATCORE_TASKS) and saved["sandbox"] == describe_sandbox()
    out = capsys.readouterr().out
    assert "| arithmetic | 3 |" in out and "ChatCORE" in out


