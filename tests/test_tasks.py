"""Tasks made by code: arithmetic, SpellingBee and spelling with the calculator, identity, multi-turn; the
answer parser; the wordings held out of training; and for every task of the training mixture that has both
splits, that no eval item is a training item.

    python -m pytest tests/test_tasks.py
"""

from __future__ import annotations

import json
import random
import re
from types import SimpleNamespace

import pytest

from picochat.calculator import calculate
from picochat.chat import render_conversation
from picochat.common import UserError
from picochat.stages import mid_mixture
from picochat.tasks import final_number
from picochat.tasks.arithmetic import ArithmeticWithTool
from picochat.tasks.identity import Identity
from picochat.tasks.multi_turn import MultiTurn
from picochat.tasks.phrasing import CLOSINGS, OPENINGS, chatty, held_out, number_words
from picochat.tasks.spelling_bee import Spelling, SpellingBee, is_eval_word


@pytest.mark.parametrize("text, number", [
    ("#### 42", "42"), ("The answer is 1,234.", "1234"), ("#### -7", "-7"), ("so 7.0", "7"), ("3.50", "3.5"),
    ("no number here", None), ("<<12*3=36>> so 36 apples #### 36", "36"), ("#### 12 apples, not 5", "12"),
    ("first 3, then 4, finally: 5\n\n", "5"), ("#### ", None), ("It costs $1,000,000 #### 1,000,000", "1000000"),
])
def test_final_number(text, number):
    assert final_number(text) == number


def test_arithmetic_reference_answers_use_the_tool_and_score_right():
    task = ArithmeticWithTool("train", size=300)
    for example in (task[i] for i in range(300)):
        call, output = example["messages"][-1]["content"][:2]
        assert call["type"] == "python" and output["type"] == "python_output"
        assert calculate(call["text"]) == output["text"] == example["answer"]
        assert not example["answer"].startswith("error")
        text = "".join(part["text"] for part in example["messages"][-1]["content"])
        assert task.score(example, text) and not task.score(example, text + " so 99999")


def test_arithmetic_train_and_eval_are_drawn_apart_and_repeatable():
    train, evals = ArithmeticWithTool("train"), ArithmeticWithTool("eval")
    assert (len(train), len(evals)) == (10_000, 500)
    assert train[5] == ArithmeticWithTool("train")[5]
    assert len(asked(evals)) > 480  # few repeats within a split, and none across (the test below)


def test_arithmetic_is_asked_in_everyday_forms_in_both_splits():
    """The vocabulary of operations and numbers is broad and shared; only the frames around it are held out."""
    vocabulary = ["times", "multiplied by", " x ", "×", "plus", "minus", "divided by", "÷", "% of", "percent",
                  "twenty", "-seven", ",", "squared", "power", "("]
    frames = ["what's", "calculate", "how much is", "?", "="]
    for split, size, forms in (("train", 5000, vocabulary + frames), ("eval", 500, vocabulary)):
        questions = [ArithmeticWithTool(split)[i]["messages"][0]["content"].lower() for i in range(size)]
        missing = [form for form in forms if not any(form in q for q in questions)]
        assert not missing, f"{split}: no question says {missing}"


def test_generated_tasks_ask_eval_questions_only_in_held_out_wordings(tiny_home):
    """Every task that makes questions from templates: the wordings its eval split asks in are never
    trained on, and both splits use many of them."""
    makers = [lambda split: ArithmeticWithTool(split, size=3000), lambda split: Identity(split, size=3000),
              lambda split: SpellingBee.from_corpus(tiny_home, split, 3000),
              lambda split: Spelling.from_corpus(tiny_home, split, 3000)]
    for make in makers:
        train, evals = make("train"), make("eval")
        used = {task.split: {task[i]["template"] for i in range(len(task))} for task in (train, evals)}
        assert not used["train"] & used["eval"], f"{train.name}: eval wordings trained on"
        assert len(used["eval"]) >= 5 and len(used["train"]) >= 3 * len(used["eval"]) // 2, train.name


def test_openings_and_closings_are_held_out_like_templates():
    """chatty() wraps questions in openings and closings of its split only; both splits use several."""
    for split in ("train", "eval"):
        rng = random.Random(0)
        wrapped = [chatty("{q}", rng, split) for _ in range(2000)]
        openings = {w[:w.index("{q}")] for w in wrapped} - {""}
        closings = {w[w.index("{q}") + 3:] for w in wrapped} - {""}
        assert openings <= set(held_out(OPENINGS, split)) and len(openings) >= 5, split
        assert closings <= set(held_out(CLOSINGS, split)) and len(closings) >= 3, split
    rng = random.Random(1)
    for wrapped in (chatty("What is {x}?", rng, "train") for _ in range(200)):
        opening = wrapped[:wrapped.lower().index("what is")]
        runs_on = opening and opening.rstrip()[-1] not in ".!?:"
        assert wrapped[len(opening):].startswith("what is" if runs_on else "What is"), wrapped


def test_held_out_splits_every_list_of_templates():
    templates = [f"t{i}" for i in range(10)]
    train, evals = held_out(templates, "train"), held_out(templates, "eval")
    assert evals == ["t3", "t7"] and sorted(train + evals) == sorted(templates)


@pytest.mark.parametrize("n, words", [(0, "zero"), (13, "thirteen"), (40, "forty"), (37, "thirty-seven"),
                                      (100, "one hundred"), (1234, "one thousand two hundred thirty-four"),
                                      (999_999, "nine hundred ninety-nine thousand nine hundred ninety-nine")])
def test_number_words(n, words):
    assert number_words(n) == words


def called_word(call: str) -> str:
    """The word a calculator call asks about: ' cometh'.strip(), 'cometh' or "cometh"."""
    return re.search(r"""['"] ?([a-z]+)['"]""", call)[1]


def test_a_calculator_call_copies_the_words_tokens_from_the_question(tiny_home, tiny_tokenizer):
    """A bare word after a space keeps its space in the call (' word'.strip()), a quoted one its quotes, so
    the call repeats the question's tokens for the word instead of respelling it in other tokens."""
    for task in (SpellingBee.from_corpus(tiny_home, "train", 300), Spelling.from_corpus(tiny_home, "train", 300)):
        for example in (task[i] for i in range(len(task))):
            question, call = example["messages"][0]["content"], example["messages"][1]["content"][0]["text"]
            run = tiny_tokenizer.encode((" " if "strip()" in call else "") + called_word(call))
            for text in (question, call):
                ids = tiny_tokenizer.encode(text)
                assert any(ids[i:i + len(run)] == run for i in range(len(ids))), (question, call)


def test_spelling_questions_are_answered_by_the_calculator():
    words = ["strawberry", "banana", "committee", "mississippi", "apple", "letter", "bookkeeper", "zebra"]
    words += [f"{a}{b}{c}" for a in "abcdefgh" for b in "aeiou" for c in "lmnrst"]
    for split in ("train", "eval"):
        task = Spelling(split, words, size=400)
        for example in (task[i] for i in range(len(task))):
            call, output, said = example["messages"][-1]["content"]
            word = called_word(call["text"])
            assert word in task.words and calculate(call["text"]) == output["text"] == example["answer"]
            reply = f"<<{call['text']}={output['text']}>>{said['text']}"
            assert task.score(example, reply)
            assert not task.score(example, f"<<{call['text']}={output['text']}>> I am not sure.")
        calls = " ".join(task[i]["messages"][-1]["content"][0]["text"] for i in range(len(task)))
        assert all(kind in calls for kind in ("[::-1]", "[0]", "[-1]", "'-'.join(", "len("))


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
    assert {"arithmetic", "spelling_bee", "spelling", "identity", "multi_turn", "chitchat", "chatterbot",
            "mathematics", "mc_practice", "pretraining_text"} <= set(checked)


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
            call = example["messages"][-1]["content"][0]["text"]
            word, letter = called_word(call), call.split("'")[-2]
            assert int(example["answer"]) == word.count(letter) and word in task.words
            assert calculate(call) == example["answer"]
            assert task.score(example, f"... #### {example['answer']}")
    with pytest.raises(UserError, match="no eval words"):
        SpellingBee("eval", [w for w in words if not is_eval_word(w)])


def test_spelling_bee_from_the_corpus(tiny_home):
    task = SpellingBee.from_corpus(tiny_home, "train", size=50)
    assert len(task) == 50 and len(task.words) > 20


def test_identity_scores_the_behaviour_it_asks_for():
    task = Identity("eval")
    behaviours = {task[i]["behaviour"] for i in range(len(task))}
    assert {"greeting", "thanks", "goodbye", "who", "can do", "cannot do", "unanswerable"} == behaviours
    for example in (task[i] for i in range(len(task))):
        assert task.score(example, example["messages"][-1]["content"])
    who = next(task[i] for i in range(len(task)) if task[i]["behaviour"] == "who")
    assert task.score(who, "I'm picochat.") and not task.score(who, "Hi again!!!!!! How's you?")
    unanswerable = next(task[i] for i in range(len(task)) if task[i]["behaviour"] == "unanswerable")
    assert task.score(unanswerable, "Sorry, I can’t answer that.") and not task.score(unanswerable, "It is Paris.")
    with pytest.raises(UserError, match="split must be one of train, eval"):
        ArithmeticWithTool("test")


def test_multi_turn_conversations_hold_only_their_split(tiny_home):
    for split in ("train", "eval"):
        parts = [ArithmeticWithTool(split, size=50), Identity(split, size=50)]
        singles = {json.dumps(t[i]["messages"]) for t in parts for i in range(len(t))}
        task = MultiTurn(split, parts, size=40)
        for example in (task[i] for i in range(len(task))):
            turns = example["messages"]
            assert 4 <= len(turns) <= 8 and all(json.dumps(turns[i:i + 2]) in singles for i in range(0, len(turns), 2))
    with pytest.raises(ValueError, match="must be of the eval split"):
        MultiTurn("eval", [ArithmeticWithTool("train", size=5)])


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
