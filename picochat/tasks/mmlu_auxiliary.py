"""MMLU auxiliary-train: ~100k multiple-choice questions (from ARC, MCTest, OpenBookQA and RACE) that
MMLU's authors collected for training, from Hugging Face's cais/mmlu (MIT). Training only: it teaches the
lettered-answer format that the MMLU and ARC evals ask in, and is never scored.

Each row becomes multiple_choice.py's conversation: the question and lettered choices, answered by the
right letter. Rows with a blank question or choice, or an answer that is not one of the choices, are
dropped and counted.

    MMLUAuxiliary.from_hub(home)[0]["messages"][0]["content"]
"""

from __future__ import annotations

import functools
from pathlib import Path

import pyarrow as pa

from picochat.common import UserError
from picochat.data.hub import download_dataset_file, hub_dir, read_parquet, select_columns
from picochat.tasks import Task
from picochat.tasks.multiple_choice import LETTERS, multiple_choice

REPO = "cais/mmlu"
FILES = {"train": "auxiliary_train/train-00000-of-00001.parquet"}
COLUMNS = ["question", "choices", "answer"]


class MMLUAuxiliary(Task):
    name = "mmlu_auxiliary"
    kind = "categorical"
    source = f"hf:{REPO}/{FILES['train']}"
    license = "MIT"

    def __init__(self, split: str, rows: list[dict]):
        """rows: {"question": str, "choices": [str], "answer": index of the right choice}."""
        super().__init__(split)
        if split != "train":
            raise UserError("mmlu_auxiliary: only a train split; MMLU's own questions are the eval")
        self.rows = [row for row in rows if is_well_formed(row)]
        self.dropped = len(rows) - len(self.rows)

    @classmethod
    @functools.lru_cache(maxsize=1)  # a stage asks for its tasks several times (batches, val, fingerprint)
    def from_hub(cls, home: str | Path) -> "MMLUAuxiliary":
        path = download_dataset_file(REPO, FILES["train"], hub_dir(home))
        table = read_parquet(path)
        if "train" in table.column_names:  # this file nests each row in one struct column named `train`
            table = pa.Table.from_struct_array(table.column("train"))
        return cls("train", select_columns(table, COLUMNS, path).to_pylist())

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        return multiple_choice(row["question"], row["choices"], row["answer"])


def is_well_formed(row: dict) -> bool:
    question, choices, answer = row.get("question"), row.get("choices"), row.get("answer")
    return (isinstance(question, str) and question.strip() != ""
            and isinstance(choices, list) and 2 <= len(choices) <= len(LETTERS)
            and all(isinstance(choice, str) and choice.strip() for choice in choices)
            and isinstance(answer, int) and 0 <= answer < len(choices))
