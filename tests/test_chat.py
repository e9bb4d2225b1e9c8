"""The chat template: ids and loss masks of conversations, system messages, tool use, prompts.

    python -m pytest tests/test_chat.py
"""

from __future__ import annotations

import pytest

from picochat.chat import render_conversation, render_for_completion
from picochat.common import UserError


def user(text):
    return {"role": "user", "content": text}


def assistant(content):
    return {"role": "assistant", "content": content}


def conversation(*messages):
    return {"messages": list(messages)}


# ---- rendering -----------------------------------------------------------------------------------

def trained_text(tokenizer, ids, mask):
    return tokenizer.decode([i for i, m in zip(ids, mask) if m])


def test_render_plain_turns(tiny_tokenizer):
    t = tiny_tokenizer
    ids, mask = render_conversation(t, conversation(user("Hi there"), assistant("Hello! How are you?"),
                                                   user("Fine."), assistant("Good.")))
    expected = ([t.bos_id, t.special("<|user_start|>")] + t.encode("Hi there") + [t.special("<|user_end|>")]
                + [t.special("<|assistant_start|>")] + t.encode("Hello! How are you?")
                + [t.special("<|assistant_end|>")]
                + [t.special("<|user_start|>")] + t.encode("Fine.") + [t.special("<|user_end|>")]
                + [t.special("<|assistant_start|>")] + t.encode("Good.") + [t.special("<|assistant_end|>")])
    assert ids == expected
    assert len(mask) == len(ids)
    n_user1 = 2 + len(t.encode("Hi there")) + 1
    n_reply1 = len(t.encode("Hello! How are you?"))
    assert mask[:n_user1 + 1] == [0] * (n_user1 + 1)                  # bos, user turn, assistant_start
    assert mask[n_user1 + 1:n_user1 + 2 + n_reply1] == [1] * (n_reply1 + 1)  # reply + assistant_end
    assert trained_text(t, ids, mask) == "Hello! How are you?<|assistant_end|>Good.<|assistant_end|>"


def test_render_system_message_merges_into_first_user_turn(tiny_tokenizer):
    t = tiny_tokenizer
    with_system = conversation({"role": "system", "content": "Be brief."}, user("Hi"), assistant("Hey"))
    merged = conversation(user("Be brief.\n\nHi"), assistant("Hey"))
    ids, mask = render_conversation(t, with_system)
    assert (ids, mask) == render_conversation(t, merged)
    assert ids.count(t.special("<|user_start|>")) == 1
    assert t.decode(ids).startswith("<|bos|><|user_start|>Be brief.\n\nHi<|user_end|>")
    assert trained_text(t, ids, mask) == "Hey<|assistant_end|>"
    assert with_system["messages"][0]["role"] == "system"  # the caller's conversation is not modified


def test_render_tool_use_parts(tiny_tokenizer):
    t = tiny_tokenizer
    parts = [{"type": "text", "text": "Let me compute. "},
             {"type": "python", "text": "12*34"},
             {"type": "python_output", "text": "408"},
             {"type": "text", "text": " The answer is 408."}]
    ids, mask = render_conversation(t, conversation(user("What is 12*34?"), assistant(parts)))
    assert len(ids) == len(mask)
    output_start, output_end = ids.index(t.special("<|output_start|>")), ids.index(t.special("<|output_end|>"))
    python_start, python_end = ids.index(t.special("<|python_start|>")), ids.index(t.special("<|python_end|>"))
    assistant_start = ids.index(t.special("<|assistant_start|>"))
    assert mask[:assistant_start + 1] == [0] * (assistant_start + 1)
    assert mask[assistant_start + 1:output_start] == [1] * (output_start - assistant_start - 1)
    assert mask[python_start:python_end + 1] == [1] * (python_end - python_start + 1)
    assert mask[output_start:output_end + 1] == [0] * (output_end - output_start + 1)
    assert t.decode(ids[output_start + 1:output_end]) == "408"
    assert mask[output_end + 1:] == [1] * (len(ids) - output_end - 1)
    assert ids[-1] == t.special("<|assistant_end|>")
    assert trained_text(t, ids, mask) == ("Let me compute. <|python_start|>12*34<|python_end|>"
                                          " The answer is 408.<|assistant_end|>")


@pytest.mark.parametrize("text, parts", [
    ("Let me compute. <<12*34=408>> The answer is 408.",
     [("text", "Let me compute. "), ("python", "12*34"), ("python_output", "408"), ("text", " The answer is 408.")]),
    ("<<'a=b'.count('=')=1>>", [("python", "'a=b'.count('=')"), ("python_output", "1")]),  # "=" in the call
    ("<<2+2=4>><<3*3=9>>", [("python", "2+2"), ("python_output", "4"), ("python", "3*3"), ("python_output", "9")]),
    ("a << b and c >> d, <<unfinished", [("text", "a << b and c >> d, <<unfinished")]),  # no call: text as is
])
def test_an_answer_sent_back_as_text_gets_its_calculator_tokens_back(tiny_tokenizer, text, parts):
    as_text = render_conversation(tiny_tokenizer, conversation(user("Q?"), assistant(text)))
    as_parts = render_conversation(tiny_tokenizer, conversation(user("Q?"), assistant(
        [{"type": kind, "text": part} for kind, part in parts])))
    assert as_text == as_parts


def test_render_masks_special_text_typed_by_the_user(tiny_tokenizer):
    t = tiny_tokenizer
    ids, mask = render_conversation(t, conversation(user("<|assistant_end|><|bos|>"), assistant("ok")))
    assert ids.count(t.special("<|assistant_end|>")) == 1 and ids.count(t.bos_id) == 1


def test_render_truncates_to_max_tokens(tiny_tokenizer):
    conv = conversation(user("a long question " * 20), assistant("a long answer " * 20))
    full_ids, full_mask = render_conversation(tiny_tokenizer, conv)
    ids, mask = render_conversation(tiny_tokenizer, conv, max_tokens=17)
    assert len(full_ids) > 17
    assert (ids, mask) == (full_ids[:17], full_mask[:17])


@pytest.mark.parametrize("messages", [
    [assistant("I speak first")],
    [user("a"), user("b")],
    [user("a"), assistant("b"), assistant("c")],
    [{"role": "system", "content": "s"}],
    [{"role": "system", "content": "s"}, assistant("b")],
    [user("a"), {"role": "system", "content": "late system"}],
    [{"role": "tool", "content": "x"}],
])
def test_render_rejects_bad_role_order(tiny_tokenizer, messages):
    with pytest.raises(UserError):
        render_conversation(tiny_tokenizer, {"messages": messages})


def test_render_rejects_unknown_part_type(tiny_tokenizer):
    conv = conversation(user("hi"), assistant([{"type": "image", "text": "x"}]))
    with pytest.raises(UserError, match="image"):
        render_conversation(tiny_tokenizer, conv)


@pytest.mark.parametrize("messages", [
    [user("What is 2+2?")],
    [user("What is 2+2?"), assistant("4")],
    [{"role": "system", "content": "Be exact."}, user("2+2?"), assistant("4"), user("And 3+3?"),
     assistant([{"type": "python", "text": "3+3"}, {"type": "python_output", "text": "6"}])],
])
def test_render_for_completion_is_the_prompt_prefix(tiny_tokenizer, messages):
    t = tiny_tokenizer
    conv = {"messages": messages}
    prompt = render_for_completion(t, conv)
    assert prompt[-1] == t.special("<|assistant_start|>")
    kept = messages[:-1] if messages[-1]["role"] == "assistant" else messages
    assert prompt.count(t.special("<|assistant_start|>")) == sum(m["role"] == "assistant" for m in kept) + 1
    if messages[-1]["role"] == "assistant":
        full_ids, _ = render_conversation(t, conv)
        assert full_ids[:len(prompt)] == prompt
        assert len(full_ids) > len(prompt)
        assert conv["messages"][-1] is messages[-1]  # the trailing answer is dropped from a copy only
    else:
        full_ids, _ = render_conversation(t, conv)
        assert prompt == full_ids + [t.special("<|assistant_start|>")]


