"""SmolTalk (tasks/smoltalk.py): well-formed conversations kept in order and the rest counted, read from
the fake hub's train and test files.

    python -m pytest tests/test_smoltalk.py
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from fakes import parquet_bytes
from picochat.chat import merge_system, render_conversation
from picochat.common import UserError
from picochat.tasks import smoltalk
from picochat.tasks.smoltalk import SmolTalk


def turn(role: str, content: str | None) -> dict:
    return {"role": role, "content": content}


GOOD_CONVERSATIONS = [
    [turn("user", "Hi!"), turn("assistant", "Hello. How can I help?")],
    [turn("system", "Be brief."), turn("user", "2+2?"), turn("assistant", "4"), turn("user", "And 3+3?"),
     turn("assistant", "6")],
]
BAD_CONVERSATIONS = [
    [turn("assistant", "I start."), turn("user", "Odd.")],
    [turn("user", "Question?"), turn("assistant", "Answer."), turn("user", "No answer to this one?")],
    [turn("user", "One."), turn("user", "Two."), turn("assistant", "Three.")],
    [turn("user", "Say something."), turn("assistant", "   ")],
    [turn("user", "Missing content?"), turn("assistant", None)],
    [turn("system", "Rules."), turn("assistant", "No user.")],
    [turn("system", "Only a system prompt.")],
    [],
    None,
]


def test_smoltalk_keeps_well_formed_conversations_in_order_and_counts_the_rest(tiny_tokenizer):
    rows = [BAD_CONVERSATIONS[0], GOOD_CONVERSATIONS[0], *BAD_CONVERSATIONS[1:], GOOD_CONVERSATIONS[1]]
    task = SmolTalk("train", pa.array(rows))
    assert (len(task), task.dropped) == (2, len(BAD_CONVERSATIONS))
    assert [task[i]["messages"] for i in range(len(task))] == GOOD_CONVERSATIONS
    with_system = task[1]
    assert merge_system(with_system["messages"])[0]["content"].startswith("Be brief.")
    ids, mask = render_conversation(tiny_tokenizer, with_system)
    assert sum(mask) > 0 and len(ids) == len(mask)
    with pytest.raises(IndexError):
        task[2]


def test_smoltalk_from_hub_reads_train_and_test_files(hub_server, tmp_path):
    hub_server({f"{smoltalk.REPO}/{smoltalk.FILES['train']}": parquet_bytes(pa.table({
               "messages": [*GOOD_CONVERSATIONS, BAD_CONVERSATIONS[2]], "source": ["a", "b", "c"]})),
           f"{smoltalk.REPO}/{smoltalk.FILES['eval']}": parquet_bytes(pa.table({
               "messages": GOOD_CONVERSATIONS[:1]}))})
    train, evals = SmolTalk.from_hub(tmp_path, "train"), SmolTalk.from_hub(tmp_path, "eval")
    assert (len(train), train.dropped, len(evals), evals.dropped) == (2, 1, 1, 0)
    assert evals[0]["messages"] == GOOD_CONVERSATIONS[0] and train.split == "train" and evals.split == "eval"
    assert SmolTalk.from_hub(tmp_path, "train") is train  # read once per process
    with pytest.raises(UserError, match="split must be one of train, eval"):
        SmolTalk.from_hub(tmp_path, "test")


def test_smoltalk_file_without_messages_column_is_one_clear_error(hub_server, tmp_path):
    hub_server({f"{smoltalk.REPO}/{smoltalk.FILES['eval']}": parquet_bytes(pa.table({"text": ["hello"]}))})
    with pytest.raises(UserError, match="has no column 'messages'"):
        SmolTalk.from_hub(tmp_path, "eval")
