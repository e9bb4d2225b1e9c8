"""The chat template: a conversation -> token ids plus a loss mask, and a prompt for the model to answer.

    <|bos|> <|user_start|> question <|user_end|> <|assistant_start|> answer <|assistant_end|> ...

The mask is 1 on the tokens the assistant must produce (its text, its calculator calls and its
<|assistant_end|>) and 0 elsewhere; mid-training and SFT take the loss only where it is 1. The engine
renders prompts with render_for_completion and runs the calculator between <|python_start|> and
<|python_end|>, forcing <|output_start|> result <|output_end|> into the stream.

    ids, mask = render_conversation(tokenizer, {"messages": [{"role": "user", "content": "Hi"},
                                                             {"role": "assistant", "content": "Hello!"}]})
"""

from __future__ import annotations

import re

from picochat.common import UserError
from picochat.tokenizer import Tokenizer


def render_conversation(tokenizer: Tokenizer, conversation: dict,
                        max_tokens: int = 2048) -> tuple[list[int], list[int]]:
    """Conversation -> (ids, mask), both cut to max_tokens.

    conversation = {"messages": [{"role": "system"|"user"|"assistant", "content": str | [parts]}]}
    where assistant parts are {"type": "text"|"python"|"python_output", "text": str}.
    """
    ids: list[int] = []
    mask: list[int] = []

    def add(tokens: list[int], trained: int) -> None:
        ids.extend(tokens)
        mask.extend([trained] * len(tokens))

    special = tokenizer.special
    add([tokenizer.bos_id], 0)
    for message in merge_system(conversation["messages"]):
        if message["role"] == "user":
            add([special("<|user_start|>")] + tokenizer.encode(message["content"]) + [special("<|user_end|>")], 0)
        else:
            add([special("<|assistant_start|>")], 0)  # the prompt gives this one
            for part in _parts(message["content"]):
                _render_part(tokenizer, part, add)
            add([special("<|assistant_end|>")], 1)
    return ids[:max_tokens], mask[:max_tokens]


def _render_part(tokenizer: Tokenizer, part: dict, add) -> None:
    text, special = tokenizer.encode(part["text"]), tokenizer.special
    if part["type"] == "text":
        add(text, 1)
    elif part["type"] == "python":
        add([special("<|python_start|>")] + text + [special("<|python_end|>")], 1)
    elif part["type"] == "python_output":
        # The engine computes tool output and forces it into the stream: never a training target.
        add([special("<|output_start|>")] + text + [special("<|output_end|>")], 0)
    else:
        raise UserError(f"unknown assistant part type {part['type']!r}; use text, python or python_output")


def render_for_completion(tokenizer: Tokenizer, conversation: dict) -> list[int]:
    """Ids of a prompt that ends with <|assistant_start|>, ready for the model to answer. A trailing
    assistant message (the answer of a training example) is left out."""
    messages = list(conversation["messages"])
    if messages and messages[-1]["role"] == "assistant":
        messages.pop()
    ids, _ = render_conversation(tokenizer, {"messages": messages}, max_tokens=1 << 30)
    return ids + [tokenizer.special("<|assistant_start|>")]


def merge_system(messages: list[dict]) -> list[dict]:
    """Fold a leading system message into the first user turn; check turns alternate user/assistant."""
    messages = list(messages)
    if messages and messages[0]["role"] == "system":
        if len(messages) < 2 or messages[1]["role"] != "user":
            raise UserError("a system message must be followed by a user message")
        system, user = messages[0], messages[1]
        messages = [{"role": "user", "content": system["content"] + "\n\n" + user["content"]}] + messages[2:]
    for index, message in enumerate(messages):
        expected = "user" if index % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise UserError(f"message {index} has role {message['role']!r}, expected {expected!r} "
                            "(conversations alternate user/assistant, starting with user)")
    return messages


# A calculator call as the engine shows it in text (engine.TOOL_TEXT): <<expression=result>>. The result is
# what follows the last "=" (a number or a count never holds one); the expression may hold "=" itself.
TOOL_CALL_TEXT = re.compile(r"<<((?:(?!>>).)*)=((?:(?!>>)[^=])*)>>", re.DOTALL)


def _parts(content: str | list[dict]) -> list[dict]:
    """An assistant message's parts. Text as the engine shows it (the server and the web page send earlier
    answers back so) turns its <<expression=result>> back into the calculator call and output the model
    produced, so the next turn sees the tokens it wrote, not text it never trained on."""
    if not isinstance(content, str):
        return content
    parts, end = [], 0
    for call in TOOL_CALL_TEXT.finditer(content):
        parts.append({"type": "text", "text": content[end:call.start()]})
        parts += [{"type": "python", "text": call[1]}, {"type": "python_output", "text": call[2]}]
        end = call.end()
    parts.append({"type": "text", "text": content[end:]})
    return [part for part in parts if part["text"] or part["type"] != "text"]
