"""Problems made by mathematics-dataset (tasks/mathematics.py): split by question and scored exactly,
generated once then read from a cache, and a bad cache, wheel or download. A small fake wheel, laid out like
the real one (fakes.py), keeps it offline; the fake generator runs in the same child process as the real one.

    python -m pytest tests/test_mathematics.py
"""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path

import pytest

from fakes import write_fake_mathematics
from helpers import assert_chat_examples
from picochat.common import UserError
from picochat.data import offline
from picochat.tasks.mathematics import MODULES, Mathematics, problems_of_package

pytestmark = pytest.mark.usefixtures("fresh_package_caches")


def test_mathematics_problems_split_by_question_and_score_exactly(package_home, tiny_tokenizer):
    train = Mathematics.from_package(package_home, "train", 20)
    evals = Mathematics.from_package(package_home, "eval", 20)
    problems = train.problems + evals.problems
    assert len(problems) == 20 * (len(MODULES) - 1) and len(evals) > 0  # the too-long module is dropped
    assert {p["module"] for p in problems} == set(MODULES) - {"measurement__time"}
    assert not {p["question"] for p in train.problems} & {p["question"] for p in evals.problems}
    for problem in problems:
        a, b = map(int, re.findall(r"\d+", problem["question"].split(":")[-1]))
        assert problem["answer"] == (str(a < b) if "Is" in problem["question"] else str(a + b))
    example = evals[0]
    assert example["messages"][-1]["content"] == example["answer"]
    assert evals.score(example, f" {example['answer']}\n") and not evals.score(example, example["answer"] + "0")
    for task in (train, evals):
        assert_chat_examples(task, tiny_tokenizer)


def test_mathematics_generates_once_then_reads_its_cache(tmp_path):
    packages = tmp_path / "data" / "packages"
    write_fake_mathematics(packages)
    first = problems_of_package(tmp_path, 3)
    [cache] = (tmp_path / "data" / "mathematics").glob("*.jsonl")
    wheel = packages / "mathematics_dataset-1.0.1-py3-none-any.whl"
    good_wheel = wheel.read_bytes()
    wheel.write_bytes(b"broken")  # were the generator run again, it would fail
    problems_of_package.cache_clear()
    assert problems_of_package(tmp_path, 3) == first
    with pytest.raises(UserError, match="is not the mathematics-dataset==1.0.1 wheel"):
        problems_of_package(tmp_path, 4)  # other settings: another cache, so it must generate
    wheel.write_bytes(good_wheel)
    cache.unlink()
    problems_of_package.cache_clear()
    assert problems_of_package(tmp_path, 3) == first  # each problem has its own seed: the same again


def test_mathematics_bad_cache_wheel_or_download_is_a_user_error(package_home, tmp_path, monkeypatch):
    copy = Path(shutil.copytree(package_home, tmp_path / "home"))
    [cache] = (copy / "data" / "mathematics").glob("*.jsonl")
    cache.write_text(cache.read_text()[:50])
    with pytest.raises(UserError, match="unreadable .* delete it and run again"):
        problems_of_package(copy, 20)
    cache.write_text(json.dumps({"question": "no answer"}) + "\n")
    problems_of_package.cache_clear()
    with pytest.raises(UserError, match="does not hold mathematics problems"):
        problems_of_package(copy, 20)
    with pytest.raises(UserError, match="per_module must be at least 1"):
        problems_of_package(copy, 0)
    with zipfile.ZipFile(copy / "data" / "packages" / "mathematics_dataset-1.0.1-py3-none-any.whl", "w") as wheel:
        wheel.writestr("mathematics_dataset/__init__.py", "")  # no modules: the generator fails
    with pytest.raises(UserError, match="could not generate problems with the numpy and sympy installed here"):
        problems_of_package(copy, 5)
    monkeypatch.setattr(offline, "fetch", lambda source, cache_dir: None)
    with pytest.raises(UserError, match="could not download mathematics-dataset==1.0.1"):
        problems_of_package(tmp_path / "empty", 20)
