"""Tasks made by code: arithmetic with the calculator, SpellingBee, identity; the answer parser; splits, and
for every task of the training mixture that has both splits, that no eval item is a training item.

    python -m pytest tests/test_tasks.py
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from picochat.calculator import calculate
from picochat.chat import render_conversation
from picochat.common import UserError
from picochat.stages import mid_mixture
from picochat.tasks import final_number
from picochat.tasks.arithmetic import ArithmeticWithTool
from picochat.tasks.identity import Identity
from picochat.tasks.spelling_bee import SpellingBee, is_eval_word


@pytest.mark.parametrize("text, number", [
    ("#### 42", "42"), ("The answer is 1,234.", "1234"), ("#### -7", "-7"), ("so 7.0", "7"), ("3.50", "3.5"),
    ("no number here", None), ("<<12*3=36>> so 36 apples #### 36", "36"), ("#### 12 apples, not 5", "12"),
    ("first 3, then 4, finally: 5\n\n", "5"), ("#### ", None), ("It costs $1,000,000 #### 1,000,000", "1000000"),
])
def test_final_number(text, number):
    assert final_number(text) == number


def test_arithmetic_reference_answers_use_the_tool_and_score_right():
    task = ArithmeticWithTool("train", size=200)
    for example in (task[i] for i in range(200)):
        call, output = example["messages"][-1]["content"][1:3]
        assert call["type"] == "python" and output["type"] == "python_output"
        assert calculate(call["text"]) == output["text"] == example["answer"]
        assert int(example["answer"]) >= 0  # a > b and exact division: whole, non-negative answers
        text = "".join(part["text"] for part in example["messages"][-1]["content"])
        assert task.score(example, text) and not task.score(example, text + " #### 99999")


def test_arithmetic_train_and_eval_are_drawn_apart_and_repeatable():
    train, evals = ArithmeticWithTool("train"), ArithmeticWithTool("eval")
    assert (len(train), len(evals)) == (5_000, 500)
    assert train[5] == ArithmeticWithTool("train")[5]
    assert len(asked(evals)) > 450  # few repeats within a split, and none across (the test below)


def asked(task) -> set[str]:
    """What each item asks the model: the conversation without its last answer, or a plain document."""
    return {json.dumps(task.prompt(i) if "messages" in task[i] else task[i], sort_keys=True)
            for i in range(len(task))}


def test_no_eval_item_is_a_training_item_in_any_task_with_both_splits(tiny_home):
    """Over the one list of training tasks (mid's mixture: every chat task, plus pretraining text): each
    task's whole eval split against its whole train split, as sets, not index by index."""
    config = SimpleNamespace(home_path=tiny_home)
    evals = {task.name: task for task, _ in mid_mixture(config, "eval")}
    checked = []
    for train, _ in mid_mixture(config, "train"):
        if train.name in evals:
            overlap = asked(train) & asked(evals[train.name])
            assert not overlap, f"{train.name}: {len(overlap)} eval items are training items, e.g. {min(overlap)}"
            checked.append(train.name)
    assert {"arithmetic", "spelling_bee", "chitchat", "chatterbot", "mathematics", "mc_practice",
            "pretraining_text"} <= set(checked)


def test_the_tool_output_is_masked_and_the_call_is_trained(tiny_tokenizer):
    example = ArithmeticWithTool("eval")[0]
    ids, mask = render_conversation(tiny_tokenizer, example)
    output_start, output_end = tiny_tokenizer.special("<|output_start|>"), tiny_tokenizer.special("<|output_end|>")
    python_start = tiny_tokenizer.special("<|python_start|>")
    start, end = ids.index(output_start), ids.index(output_end)
    assert set(mask[start:end + 1]) == {0}  # the engine writes the tool's output: never a target
    assert mask[ids.index(python_start)] == 1 and mask[-1] == 1


def test_spelling_bee_counts_right_and_keeps_eval_words_out_of_training():
    words = ["strawberry", "banana", "committee", "mississippi", "apple", "letter", "bookkeeper", "zebra",
             "queue", "rhythm", "occurrence", "parallel", "balloon", "coffee", "success"]
    words += [f"{a}{b}{c}" for a in "abcdefgh" for b in "aeiou" for c in "lmnrst"]  # enough for both splits
    train, evals = SpellingBee("train", words, size=300), SpellingBee("eval", words, size=100)
    assert not set(train.words) & set(evals.words) and all(is_eval_word(w) for w in evals.words)
    for task in (train, evals):
        for example in (task[i] for i in range(len(task))):
            call = example["messages"][-1]["content"][1]["text"]
            word, letter = call.split("'")[1], call.split("'")[3]
            assert int(example["answer"]) == word.count(letter) and word in task.words
            assert calculate(call) == example["answer"]
            assert task.score(example, f"... #### {example['answer']}")
    with pytest.raises(UserError, match="no eval words"):
        SpellingBee("eval", [w for w in words if not is_eval_word(w)])


def test_spelling_bee_from_the_corpus(tiny_home):
    task = SpellingBee.from_corpus(tiny_home, "train", size=50)
    assert len(task) == 50 and len(task.words) > 20


def test_identity_is_training_only_and_names_picochat():
    answers = {Identity()[i]["messages"][-1]["content"] for i in range(50)}
    assert all("picochat" in answer for answer in answers) and len(answers) > 1
    with pytest.raises(UserError, match="only a train split"):
        Identity("eval")
    with pytest.raises(UserError, match="split must be one of train, eval"):
        ArithmeticWithTool("test")


def test_chitchat_turns_become_user_and_assistant_messages():
    from picochat.tasks.chitchat import to_conversation
    say = lambda *texts: [{"text": text} for text in texts]
    assert to_conversation([say("hi", "how are you?"), say("fine"), say("good")]) == {"messages": [
        {"role": "user", "content": "hi\nhow are you?"}, {"role": "assistant", "content": "fine"}]}
    assert to_conversation([say("only one speaker")]) is None
    assert to_conversation([say(" "), say("x")]) is None  # an empty turn is dropped, leaving no exchange


def test_chitchat_from_the_package_splits_by_conversation(tiny_home, tmp_path):
    from picochat.tasks.chitchat import ChitChat
    train, evals = ChitChat.from_package(tiny_home, "train"), ChitChat.from_package(tiny_home, "eval")
    assert len(train) + len(evals) == 60 and len(evals) > 0  # the fake wheel of conftest.py
    assert not {repr(c) for c in train.examples} & {repr(c) for c in evals.examples}
    assert all(m["role"] == ("user", "assistant")[i % 2] for c in train.examples
               for i, m in enumerate(c["messages"]))
    packages = tmp_path / "data" / "packages"
    packages.mkdir(parents=True)
    (packages / "chitchat_dataset-0.9.0-py3-none-any.whl").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="is not the chitchat-dataset==0.9.0 wheel"):
        ChitChat.from_package(tmp_path, "train")
