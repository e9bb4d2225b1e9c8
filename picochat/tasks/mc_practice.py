"""MultipleChoicePractice: questions with lettered choices, made from training data (never from an eval
benchmark), so the model learns the format the ARC and MMLU chat evals ask in (see multiple_choice.py).

A question comes from chatterbot-corpus (wrong choices: answers from its other categories), from
ArithmeticWithTool (wrong choices: numbers near the result) or from mathematics-dataset (wrong choices:
answers of the same shape from the same generator module). Each example draws 2-5 choices and the right
one's place with its own seeded RNG: among n choices each letter is right 1/n of the time, and every run
sees the same examples.

    MultipleChoicePractice.from_sources(home, "train")[0]["messages"]
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass
from pathlib import Path

from picochat.common import UserError
from picochat.tasks import Task
from picochat.tasks.arithmetic import ArithmeticWithTool
from picochat.tasks.chatterbot import PACKAGE as CHATTERBOT, ChatterBot
from picochat.tasks.mathematics import PACKAGE as MATHEMATICS, Mathematics
from picochat.tasks.multiple_choice import multiple_choice

CHOICE_COUNTS = (2, 3, 4, 4, 4, 5)  # ARC and MMLU mostly offer four
MAX_WRONG = 8                       # wrong answers kept per question; each example draws from them
MAX_CHOICE_CHARS = 150              # longer answers (code, long explanations) make poor choices
ARITHMETIC_QUESTIONS = {"train": 1_000, "eval": 100}
NUMBER = re.compile(r"-?\d+(?:[./]\d+)?")


@dataclass(frozen=True)
class Question:
    text: str
    answer: str
    wrong: tuple[str, ...]  # distinct wrong answers, at least one


class MultipleChoicePractice(Task):
    name = "mc_practice"
    kind = "categorical"
    source = (f"multiple-choice versions of questions from pypi:{CHATTERBOT.pin}, ArithmeticWithTool and "
              f"pypi:{MATHEMATICS.pin}, made by picochat/tasks/mc_practice.py")
    license = "BSD-3-Clause (chatterbot-corpus text), Apache-2.0 (mathematics-dataset), MIT (picochat)"

    def __init__(self, split: str, questions: list[Question]):
        super().__init__(split)
        if not questions or any(not question.wrong for question in questions):
            raise UserError(f"{self.name}: needs questions, each with at least one wrong answer")
        self.questions = questions

    @classmethod
    def from_sources(cls, home: str | Path, split: str) -> "MultipleChoicePractice":
        questions = chatterbot_questions(ChatterBot.from_package(home, split).examples)
        questions += arithmetic_questions(split)
        questions += mathematics_questions(Mathematics.from_package(home, split).problems)
        return cls(split, questions)

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, index: int) -> dict:
        question = self.questions[index]
        rng = random.Random(f"{self.split}/{index}")
        wrong = rng.sample(question.wrong, min(rng.choice(CHOICE_COUNTS) - 1, len(question.wrong)))
        place = rng.randrange(len(wrong) + 1)  # uniform, so no letter is a better guess than another
        return multiple_choice(question.text, wrong[:place] + [question.answer] + wrong[place:], place)

    def score(self, example: dict, answer: str) -> bool:
        return answer.strip() == example["answer"]

    @functools.cached_property
    def random_baseline(self) -> float:
        """The accuracy of guessing: the mean of 1/choices, which vary from 2 to 5 here."""
        return sum(1 / len(self[i]["letters"]) for i in range(len(self))) / len(self)


def pick_wrong(pool: list[str], right: set[str], key: str) -> tuple[str, ...]:
    """Up to MAX_WRONG answers of pool that are not right and differ from each other (ignoring case), chosen
    by a RNG seeded with key."""
    candidates = list({answer.casefold(): answer for answer in pool if answer.casefold() not in right}.values())
    return tuple(random.Random(key).sample(candidates, min(MAX_WRONG, len(candidates))))


def chatterbot_questions(conversations: list[dict]) -> list[Question]:
    """The first exchange of each conversation. Wrong choices answer questions of other categories: within
    one, another answer is often right too (tech_support asks "My screen is black." in many words), and
    never another answer to the same question ("What is AI?" has two)."""
    pairs = [(c["messages"][0]["content"], c["messages"][1]["content"], c["category"]) for c in conversations]
    # tech_support repeats some exchanges word for word: keep one of each
    pairs = list(dict.fromkeys((q, a, c) for q, a, c in pairs if len(a) <= MAX_CHOICE_CHARS and "\n" not in a))
    right: dict[str, set[str]] = {}
    for question, answer, _ in pairs:
        right.setdefault(question.casefold(), set()).add(answer.casefold())
    others = {category: sorted({a for _, a, c in pairs if c != category}) for category in {c for *_, c in pairs}}
    questions = []
    for question, answer, category in pairs:
        wrong = pick_wrong(others[category], right[question.casefold()], question + answer)
        if wrong:
            questions.append(Question(question, answer, wrong))
    return questions


def arithmetic_questions(split: str) -> list[Question]:
    """ArithmeticWithTool's questions with whole, non-negative results; wrong choices are numbers from a
    window of 21 around the result, placed at random so the right number is not always the middle one (and
    never below zero, like the results)."""
    task = ArithmeticWithTool(split, size=ARITHMETIC_QUESTIONS[split])
    questions = []
    for index in range(len(task)):
        example = task[index]
        if not example["answer"].isdigit():
            continue
        text, answer = example["messages"][0]["content"], int(example["answer"])
        rng = random.Random(f"arithmetic/{split}/{index}")
        low = answer - rng.randint(0, min(20, answer))
        wrong = rng.sample([n for n in range(low, low + 21) if n != answer], MAX_WRONG)
        questions.append(Question(text, str(answer), tuple(map(str, wrong))))
    return questions


def mathematics_questions(problems: list[dict]) -> list[Question]:
    """Problems with wrong choices from the answers of the same module and shape (see answer_kind). Left
    out: answers that are a letter (the question has lettered choices of its own) and answers that copy
    the question's numbers ("closest to 4 in 1/4, -1/6, -23?"), which other problems' answers would not."""
    problems = [p for p in problems if not re.fullmatch(r"[a-z]", p["answer"]) and not copies_question(p)]
    pools: dict[tuple, set[str]] = {}
    for problem in problems:
        pools.setdefault(answer_kind(problem), set()).add(problem["answer"])
    pools = {kind: sorted(answers) for kind, answers in pools.items()}
    questions = []
    for problem in problems:
        wrong = pick_wrong(pools[answer_kind(problem)], {problem["answer"].casefold()}, problem["question"])
        if wrong:
            questions.append(Question(problem["question"], problem["answer"], wrong))
    return questions


def copies_question(problem: dict) -> bool:
    numbers = NUMBER.findall(problem["answer"])
    return bool(numbers) and set(numbers) <= set(NUMBER.findall(problem["question"]))


def answer_kind(problem: dict) -> tuple[str, str]:
    """The module and the answer's shape, digits aside ("-0/0" for "-2/5", "0:0 PM" for "4:20 PM"), so the
    choices all look alike and only working the problem out tells them apart."""
    answer = problem["answer"]
    return problem["module"], "bool" if answer in ("True", "False") else re.sub(r"\d+", "0", answer)
