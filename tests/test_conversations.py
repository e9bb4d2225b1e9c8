"""The conversation loader for mid-training and SFT: masked targets, the mixture's epochs, the DDP split,
exact resume.

    python -m pytest tests/test_conversations.py
"""

from __future__ import annotations

import pytest
import torch

from picochat.chat import render_conversation
from picochat.common import IGNORE_INDEX, UserError
from picochat.data.conversations import ConversationLoader, epoch_order, render_example
from picochat.tasks.arithmetic import ArithmeticWithTool
from picochat.tasks.identity import Identity
from picochat.tasks.pretraining_text import PretrainingText


def mixture():
    return [(ArithmeticWithTool("train", size=40), 1.0), (Identity("train", size=10), 2.0)]


def test_targets_are_the_assistant_tokens_only(tiny_tokenizer):
    loader = ConversationLoader(tiny_tokenizer, mixture(), batch_size=1, seq_len=1024, loop=False)
    inputs, targets, _ = next(loader)
    stream = inputs[0].tolist() + [None]
    expected = []  # rebuild the stream from the rendered examples, in the loader's order
    for task, index in epoch_order([40, 10], [1.0, 2.0], 0, 0):
        ids, mask = render_conversation(tiny_tokenizer, mixture()[task][0][index], max_tokens=1025)
        expected += list(zip(ids, mask))
    expected = expected[:1025]
    assert stream[:-1] == [token for token, _ in expected[:-1]]
    wanted = [token if trained else IGNORE_INDEX for token, trained in expected[1:]]
    assert targets[0].tolist() == wanted
    assert 0.2 < (targets >= 0).float().mean() < 0.9  # prompts are masked, answers are not


def test_weights_repeat_tasks_and_epochs_reshuffle():
    order = epoch_order([40, 10], [1.0, 2.5], 0, 0)
    assert sum(task == 0 for task, _ in order) == 40 and sum(task == 1 for task, _ in order) == 25
    assert order != epoch_order([40, 10], [1.0, 2.5], 1, 0)
    assert order == epoch_order([40, 10], [1.0, 2.5], 0, 0)


def batches(loader, count):
    return [next(loader) for _ in range(count)]


def test_resume_at_every_batch_gives_the_same_batches(tiny_tokenizer):
    make = lambda state=None: ConversationLoader(tiny_tokenizer, mixture(), 2, 64, state=state)
    reference = batches(make(), 30)  # several epochs of this small mixture
    loader = make()
    for index in range(29):
        next(loader)
        resumed = make(loader.state_dict())
        for (a, b, _), (c, d, _) in zip(batches(resumed, 1), reference[index + 1:index + 2]):
            assert torch.equal(a, c) and torch.equal(b, d), index


def test_ranks_take_disjoint_examples(tiny_tokenizer):
    orders = [ConversationLoader(tiny_tokenizer, mixture(), 1, 16, rank=r, world_size=3).order for r in range(3)]
    everything = epoch_order([40, 10], [1.0, 2.0], 0, 0)
    assert sorted(sum(orders, [])) == sorted(everything) and sum(map(len, orders)) == len(everything)


def test_a_finite_loader_stops_and_bad_mixtures_are_refused(tiny_tokenizer):
    loader = ConversationLoader(tiny_tokenizer, [(Identity("train", size=3), 1.0)], 1, 32, loop=False)
    assert 0 < len(list(loader)) < 10
    with pytest.raises(UserError):
        ConversationLoader(tiny_tokenizer, [(Identity("train", size=3), 0.0)], 1, 32)


def test_a_conversation_longer_than_a_row_spans_rows(tiny_tokenizer):
    """Packing continues a conversation in the next row; cutting it to one row would drop every answer."""
    loader = ConversationLoader(tiny_tokenizer, [(ArithmeticWithTool("eval", size=5), 1.0)], 1, 8, loop=False)
    rows = list(loader)
    trained = sum(int((row.targets >= 0).sum()) for row in rows)
    total = sum(len(render_conversation(tiny_tokenizer, ArithmeticWithTool("eval", size=5)[i])[0]) for i in range(5))
    assert len(rows) == total // 9 and trained > len(rows)  # each row takes 8 + 1 fresh tokens


def test_a_plain_document_is_all_targets(tiny_tokenizer):
    text = "The cat sat on the mat. It was warm."
    ids, mask = render_example(tiny_tokenizer, {"text": text})
    assert ids == [tiny_tokenizer.bos_id] + tiny_tokenizer.encode(text) and mask == [0] + [1] * (len(ids) - 1)
    loader = ConversationLoader(tiny_tokenizer, [(PretrainingText("train", (text,) * 3), 1.0)], batch_size=1,
                                seq_len=len(ids) * 2 - 1, loop=False)  # exactly two documents
    targets = next(loader).targets
    assert (targets[0] == IGNORE_INDEX).sum() == 1  # only the second document's <|bos|> is not a target


