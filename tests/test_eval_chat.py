"""`picochat eval chat`: scoring through the engine, accuracy with its standard error, the JSON results.

    python -m pytest tests/test_eval_chat.py
"""

from __future__ import annotations

import json
import math

import pytest

from helpers import TINY, flags_dict
from picochat.evals.chat import evaluate_task
from picochat.evals.chat import run as eval_chat
from picochat.tasks.arithmetic import ArithmeticWithTool
from picochat.train import run


class Oracle:
    """Answers each problem with its reference answer, or with a wrong number for every third one."""

    def __init__(self, task):
        self.task, self.calls = task, []

    def prompt_ids(self, conversation):
        return conversation

    def complete(self, prompts, sampling):
        (prompt,) = prompts
        index = next(i for i in range(len(self.task)) if self.task.prompt(i) == prompt)
        self.calls.append(index)
        answer = self.task[index]["answer"] if index % 3 else "-1"
        return [{"text": f"... #### {answer}", "tokens": [], "finish_reason": "stop"}]


def test_accuracy_and_its_standard_error():
    task = ArithmeticWithTool("eval", size=30)
    result = evaluate_task(Oracle(task), task, max_problems=12, max_tokens=16)
    assert (result["problems"], result["correct"]) == (12, 8)  # indices 0, 3, 6, 9 answered wrong
    assert result["accuracy"] == pytest.approx(8 / 12)
    assert result["stderr"] == pytest.approx(math.sqrt(8 / 12 * 4 / 12 / 12))


def test_eval_chat_writes_results_for_the_stage(fresh_home, capsys):
    run(flags_dict(*TINY, "--num-iterations", "2", "--home", str(fresh_home)))
    run(flags_dict(*TINY, "--stage", "mid", "--num-iterations", "2", "--home", str(fresh_home)))
    report = eval_chat({"max_problems": 3, "max_tokens": 8, "device": "cpu", "home": str(fresh_home)})
    saved = json.loads((fresh_home / "evals" / "mid_chat.json").read_text())
    assert saved == report and saved["stage"] == "mid"
    assert [r["task"] for r in saved["results"]] == ["arithmetic", "spelling_bee"]
    assert all(r["problems"] == 3 and 0 <= r["accuracy"] <= 1 for r in saved["results"])
    assert "| arithmetic | 3 |" in capsys.readouterr().out
