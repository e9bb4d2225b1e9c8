"""Training conversations read from PyPI packages: chatterbot-corpus (and its YAML reader), problems made by
mathematics-dataset (generated once, then cached), and the multiple-choice practice built from them and
ArithmeticWithTool. Small fake wheels, laid out like the real ones, keep it offline; the fake generator
runs in the same child process as the real one. About 9 s, most of it three runs of that child.

    python -m pytest tests/test_training_tasks.py
"""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from fakes import FEATURES_PARSED, FEATURES_YML, TRIVIA, write_fake_chatterbot, write_fake_mathematics
from picochat.chat import render_conversation
from picochat.common import UserError
from picochat.data import offline
from picochat.tasks.arithmetic import NAMES
from picochat.tasks.chatterbot import ChatterBot, conversations_of_package, read_corpus_yaml
from picochat.tasks.mathematics import MODULES, Mathematics, problems_of_package
from picochat.tasks.mc_practice import MultipleChoicePractice, Question

@pytest.fixture(autouse=True)
def fresh_caches():
    """Each test reads its own fake wheels: forget what an earlier test parsed from another home."""
    conversations_of_package.cache_clear()
    problems_of_package.cache_clear()
    yield
    conversations_of_package.cache_clear()
    problems_of_package.cache_clear()


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """Fake chatterbot and mathematics wheels, with the mathematics problems generated once."""
    home = tmp_path_factory.mktemp("home")
    write_fake_chatterbot(home / "data" / "packages")
    write_fake_mathematics(home / "data" / "packages")
    problems_of_package(home, 20)
    return home


def assert_chat_examples(task, tokenizer) -> None:
    for example in (task[i] for i in range(len(task))):
        roles = [message["role"] for message in example["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and roles
        ids, mask = render_conversation(tokenizer, example)
        assert mask[-1] == 1 and 0 < sum(mask) < len(ids)  # the assistant's answer is trained, the rest not


# ----------------------------------------------------------------------------------------------------------
# chatterbot-corpus

def test_the_yaml_reader_reads_every_kind_of_item_the_corpus_has():
    assert read_corpus_yaml(FEATURES_YML, "features.yml") == FEATURES_PARSED


@pytest.mark.parametrize("text", [
    "conversations:\n- - [a, b]\n",                  # flow sequence
    "conversations:\n- - question\n  - key: value\n",  # a mapping
    'conversations:\n- - "tab\\there"\n',             # escapes
    "conversations:\n- - >\n    folded\n",            # folded block
    "conversations:\n      - - too deep\n",           # another indentation
    "- no key above\n",
    "conversations:\n  - answer before any question\n",
])
def test_the_yaml_reader_raises_on_what_it_does_not_know(text):
    with pytest.raises(UserError, match="YAML that picochat's reader does not know"):
        read_corpus_yaml(text, "x.yml")


def test_chatterbot_conversations_split_by_question(home, tiny_tokenizer):
    train, evals = ChatterBot.from_package(home, "train"), ChatterBot.from_package(home, "eval")
    # features.yml holds 7 distinct conversations (a duplicate and a broken entry are dropped); no Spanish
    assert len(train) + len(evals) == 7 + TRIVIA and 0 < len(evals) < len(train)
    questions = {split: {c["messages"][0]["content"] for c in task.examples}
                 for split, task in [("train", train), ("eval", evals)]}
    assert not questions["train"] & questions["eval"]
    assert not any(q.startswith("Cuál") for q in questions["train"] | questions["eval"])
    hello = next(c for c in train.examples + evals.examples if c["messages"][0]["content"] == "Hello")
    assert [m["content"] for m in hello["messages"]] == ["Hello", "Hi", "How are you?", "Fine."]
    assert sum(c["messages"][0]["content"] == "What is AI?" for c in train.examples + evals.examples) == 2
    for task in (train, evals):
        assert_chat_examples(task, tiny_tokenizer)
    conversations_of_package.cache_clear()
    assert ChatterBot.from_package(home, "eval").examples == evals.examples


def test_chatterbot_corrupt_or_missing_wheel_is_a_user_error(tmp_path, monkeypatch):
    packages = tmp_path / "data" / "packages"
    packages.mkdir(parents=True)
    (packages / "chatterbot_corpus-1.3.3-py2.py3-none-any.whl").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="is not the chatterbot-corpus==1.3.3 wheel"):
        ChatterBot.from_package(tmp_path, "train")
    monkeypatch.setattr(offline, "fetch", lambda source, cache_dir: None)  # as when PyPI is unreachable
    with pytest.raises(UserError, match="could not download chatterbot-corpus==1.3.3"):
        ChatterBot.from_package(tmp_path / "elsewhere", "train")


# ----------------------------------------------------------------------------------------------------------
# mathematics-dataset

def test_mathematics_problems_split_by_question_and_score_exactly(home, tiny_tokenizer):
    train, evals = Mathematics.from_package(home, "train", 20), Mathematics.from_package(home, "eval", 20)
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


def test_mathematics_bad_cache_wheel_or_download_is_a_user_error(home, tmp_path, monkeypatch):
    copy = Path(shutil.copytree(home, tmp_path / "home"))
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


# ----------------------------------------------------------------------------------------------------------
# Multiple-choice practice

def choices_of(example: dict) -> dict[str, str]:
    """The lettered choices as the user sees them: {"A": "...", ...}."""
    return dict(re.findall(r"^([A-J])\. (.*)$", example["messages"][0]["content"], re.MULTILINE))


def test_the_right_choice_is_the_answer_and_letters_are_balanced(home, tiny_tokenizer):
    task = MultipleChoicePractice.from_sources(home, "train")
    examples = [task[i] for i in range(len(task))]
    places = Counter()
    for question, example in zip(task.questions, examples):
        choices = choices_of(example)
        assert 2 <= len(choices) <= 5 and list(choices) == example["letters"]
        assert choices[example["answer"]] == question.answer and example["messages"][-1]["content"] == example["answer"]
        assert len({choice.casefold() for choice in choices.values()}) == len(choices)
        places[len(choices), example["answer"]] += 1
    assert {count for count, _ in places} == {2, 3, 4, 5}
    for count in range(2, 6):  # with n choices each letter is right 1/n of the time, within 4 sigma
        total = sum(places[count, letter] for letter in "ABCDE")
        sigma = (total * (1 / count) * (1 - 1 / count)) ** 0.5
        assert total > 100 and all(abs(places[count, letter] - total / count) < 4 * sigma for letter in "ABCDE"[:count])
    again = MultipleChoicePractice.from_sources(home, "train")
    assert [again[i] for i in range(len(again))] == examples  # the same on every run
    assert_chat_examples(task, tiny_tokenizer)
    assert task.score(examples[0], examples[0]["answer"]) and task.kind == "categorical"
    guess = sum(places[count, letter] / count for count, letter in places) / len(examples)
    assert task.random_baseline == pytest.approx(guess) and 0.2 < guess < 0.5


def test_practice_wrong_choices_are_never_right(home):
    train, evals = (MultipleChoicePractice.from_sources(home, split) for split in ("train", "eval"))
    assert not {q.text for q in train.questions} & {q.text for q in evals.questions}
    ai_answers = {c["messages"][1]["content"] for split in ("train", "eval")
                  for c in ChatterBot.from_package(home, split).examples
                  if c["messages"][0]["content"] == "What is AI?"}
    asked = [q for task in (train, evals) for q in task.questions]
    assert {q.answer for q in asked if q.text == "What is AI?"} == ai_answers  # both answers are asked...
    assert not any(ai_answers & set(q.wrong) for q in asked if q.text == "What is AI?")  # ...neither is wrong
    for question in asked:
        assert question.answer not in question.wrong and len(set(question.wrong)) == len(question.wrong)
        if question.answer in ("True", "False"):  # a yes/no question has only the other one to offer
            assert question.wrong == ({"True": "False", "False": "True"}[question.answer],)
        if question.text.split()[0] in NAMES:  # an ArithmeticWithTool problem: near misses, none below zero
            assert all(abs(int(wrong) - int(question.answer)) <= 20 and int(wrong) >= 0 for wrong in question.wrong)
    sources = Counter("arithmetic" if q.text.split()[0] in NAMES
                      else "mathematics" if ":" in q.text or q.text.startswith("Is ") else "chatterbot"
                      for q in train.questions)
    assert min(sources.values()) > 20 and len(sources) == 3


def test_practice_needs_questions_with_wrong_answers():
    with pytest.raises(UserError, match="at least one wrong answer"):
        MultipleChoicePractice("train", [Question("2 + 2?", "4", ())])
    with pytest.raises(UserError, match="split must be one of train, eval"):
        MultipleChoicePractice("test", [Question("2 + 2?", "4", ("5",))])
