"""Tasks: conversations to train on and problems to evaluate, one small file per task.

A Task is a list of examples, each a conversation in chat.py's format ({"messages": [...]}) whose last
message is the assistant's reference answer. An eval task also says how to score a model's answer:
generative tasks check the text the engine sampled (`score`); categorical ones (multiple choice) will
compare the model's scores of the answer letters. Every task records where its examples come from and
under which licence, and which split it is: a split reported as an eval is never trained on.

    task = ArithmeticWithTool("train"); task[0]["messages"]
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from picochat.common import UserError

SPLITS = ("train", "eval")
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


class Task:
    name = ""
    source = ""      # where the examples come from
    license = ""
    kind = "generative"
    random_baseline = 0.0  # the accuracy of guessing: 1/choices for multiple choice, 0 for free answers

    def __init__(self, split: str):
        if split not in SPLITS:
            raise UserError(f"{self.name}: split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.split = split

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict:
        raise NotImplementedError

    def score(self, example: dict, answer: str) -> bool:
        """Whether a model's answer (visible text) to example's question is right."""
        raise NotImplementedError

    def score_all(self, pairs: Iterable[tuple[dict, str]]) -> list[bool]:
        """score() of each (example, answer), in order. A task whose scoring waits on processes overrides it."""
        return [self.score(example, answer) for example, answer in pairs]

    def prompt(self, index: int) -> dict:
        """The example without its reference answer: what the model is asked."""
        return {"messages": self[index]["messages"][:-1]}


class GeneratedTask(Task):
    """A task whose examples code makes from their index (`make`): `size` of them, by default SIZES[split]."""
    SIZES = {"train": 0, "eval": 0}

    def __init__(self, split: str, size: int = 0):
        super().__init__(split)
        self.size = size or self.SIZES[split]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.size:
            raise IndexError(index)
        return self.make(index)

    def make(self, index: int) -> dict:
        raise NotImplementedError


def tool_answer(call: str, result: str, sentence: str) -> list[dict]:
    """An assistant answer through the calculator: the call, its output, and the sentence that reports it."""
    return [{"type": "python", "text": call}, {"type": "python_output", "text": result},
            {"type": "text", "text": " " + sentence}]


class ListTask(Task):
    """A task whose examples are one list, read once (from a package's archive)."""

    def __init__(self, split: str, examples: list[dict]):
        super().__init__(split)
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        return self.examples[index]


def final_number(text: str) -> str | None:
    """The answer a text gives as a number: after its last '####' if it has one (GSM8K's convention),
    else its last number. Thousands separators are dropped and "7.0" reads as "7"."""
    tail = text.rsplit("####", 1)[1] if "####" in text else text
    numbers = NUMBER.findall(tail)
    if not numbers:
        return None
    value = numbers[0 if "####" in text else -1].replace(",", "")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value
