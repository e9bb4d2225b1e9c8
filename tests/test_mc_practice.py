"""The multiple-choice practice (tasks/mc_practice.py) built from chatterbot-corpus, mathematics-dataset and
ArithmeticWithTool: the right choice is the answer, letters are balanced, wrong choices are never right.

    python -m pytest tests/test_mc_practice.py
"""

from __future__ import annotations

import re
from collections import Counter

import pytest

from helpers import assert_chat_examples
from picochat.common import UserError
from picochat.tasks.arithmetic import NAMES
from picochat.tasks.chatterbot import ChatterBot
from picochat.tasks.mc_practice import MultipleChoicePractice, Question

pytestmark = pytest.mark.usefixtures("fresh_package_caches")


def choices_of(example: dict) -> dict[str, str]:
    """The lettered choices as the user sees them: {"A": "...", ...}."""
    return dict(re.findall(r"^([A-J])\. (.*)$", example["messages"][0]["content"], re.MULTILINE))


def test_the_right_choice_is_the_answer_and_letters_are_balanced(package_home, tiny_tokenizer):
    task = MultipleChoicePractice.from_sources(package_home, "train")
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
    again = MultipleChoicePractice.from_sources(package_home, "train")
    assert [again[i] for i in range(len(again))] == examples  # the same on every run
    assert_chat_examples(task, tiny_tokenizer)
    assert task.score(examples[0], examples[0]["answer"]) and task.kind == "categorical"
    guess = sum(places[count, letter] / count for count, letter in places) / len(examples)
    assert task.random_baseline == pytest.approx(guess) and 0.2 < guess < 0.5


def test_practice_wrong_choices_are_never_right(package_home):
    train, evals = (MultipleChoicePractice.from_sources(package_home, split) for split in ("train", "eval"))
    assert not {q.text for q in train.questions} & {q.text for q in evals.questions}
    ai_answers = {c["messages"][1]["content"] for split in ("train", "eval")
                  for c in ChatterBot.from_package(package_home, split).examples
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
