"""Conversation loader for mid-training and SFT: a weighted mixture of tasks -> packed Batches.

An example is a conversation, rendered with the chat template, or a plain document {"text": ...} (the
pretraining text of mid-training), every token of which is a target.

Each epoch shuffles the mixture's examples with a seed of its own (a task of weight 2 appears twice per
epoch), renders each with the chat template, and packs the ids into rows of seq_len + 1 tokens. Targets
are IGNORE_INDEX wherever the loss mask is 0 (the user's turns, tool output), so only what the assistant
says is trained. Each batch takes fresh tokens (unlike pretraining, the last target is not the next
batch's first input: a conversation's first token, <|bos|>, is never a target anyway). Ranks take every
world_size-th example. `state_dict()` names the next example and the token inside it, so a resumed run
sees exactly the batches it would have seen.

    loader = ConversationLoader(tokenizer, [(ArithmeticWithTool("train"), 1.0)], batch_size=8, seq_len=512)
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

import torch

from picochat.chat import render_conversation
from picochat.common import IGNORE_INDEX, UserError
from picochat.data.loader import Batch


# A conversation may span several rows (it is packed, not cut to one row); this only bounds a huge one.
MAX_TOKENS = 16_384


@dataclass
class ConversationState:
    epoch: int = 0
    position: int = 0   # index into the epoch's shuffled order
    offset: int = 0     # token inside that example


def epoch_order(sizes: list[int], weights: list[float], epoch: int, seed: int) -> list[tuple[int, int]]:
    """(task, example) pairs of one epoch: each task's examples repeated by its weight (a fraction takes
    that share of them), shuffled deterministically."""
    order = []
    for task, (size, weight) in enumerate(zip(sizes, weights)):
        whole, part = int(weight), weight - int(weight)
        order += [(task, i) for _ in range(whole) for i in range(size)]
        order += [(task, i) for i in range(math.floor(size * part))]
    random.Random(f"{seed}-{epoch}").shuffle(order)
    return order


def render_example(tokenizer, example: dict) -> tuple[list[int], list[int]]:
    """(ids, loss mask) of a conversation, or of a plain document whose every token after <|bos|> counts."""
    if "text" in example:
        ids = [tokenizer.bos_id] + tokenizer.encode(example["text"])
        return ids[:MAX_TOKENS], ([0] + [1] * (len(ids) - 1))[:MAX_TOKENS]
    return render_conversation(tokenizer, example, max_tokens=MAX_TOKENS)


class ConversationLoader:
    def __init__(self, tokenizer, mixture: list[tuple[object, float]], batch_size: int, seq_len: int, *,
                 rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu", loop: bool = True,
                 seed: int = 0, state: dict | None = None):
        if not mixture or any(weight <= 0 for _, weight in mixture):
            raise UserError("a data mixture needs at least one task, each with a weight > 0")
        self.tokenizer, self.tasks = tokenizer, [task for task, _ in mixture]
        self.weights = [weight for _, weight in mixture]
        self.batch_size, self.seq_len = batch_size, seq_len
        self.rank, self.world_size, self.device, self.loop, self.seed = rank, world_size, torch.device(device), loop, seed
        self.state = ConversationState(**state) if state else ConversationState()
        self.order = self._epoch(self.state.epoch)
        self.current: tuple[list[int], list[int]] | None = None

    def state_dict(self) -> dict:
        return asdict(self.state)

    def __iter__(self) -> "ConversationLoader":
        return self

    def stats(self, step_seconds: float) -> dict:
        """What the step's metrics record shows of this loader: the pass over the mixture it is in."""
        return {"epoch": self.state.epoch}

    def __next__(self) -> Batch:
        needed = self.batch_size * self.seq_len + 1
        ids: list[int] = []
        mask: list[int] = []
        while len(ids) < needed:
            example_ids, example_mask = self._example()
            take = slice(self.state.offset, self.state.offset + needed - len(ids))
            ids += example_ids[take]
            mask += example_mask[take]
            self.state.offset += len(example_ids[take])
            if self.state.offset >= len(example_ids):
                self._next_example()
        buffer = torch.tensor(ids, dtype=torch.long)
        targets = buffer[1:].masked_fill(torch.tensor(mask[1:]) == 0, IGNORE_INDEX)
        return Batch(buffer[:-1].view(self.batch_size, self.seq_len).to(self.device),
                     targets.view(self.batch_size, self.seq_len).to(self.device))

    # ---- position bookkeeping -----------------------------------------------------------------------------

    def _epoch(self, epoch: int) -> list[tuple[int, int]]:
        order = epoch_order([len(t) for t in self.tasks], self.weights, epoch, self.seed)[self.rank::self.world_size]
        if not order:
            raise UserError(f"rank {self.rank} of {self.world_size} got no conversations; use more data")
        return order

    def _example(self) -> tuple[list[int], list[int]]:
        if self.current is None:
            if self.state.position >= len(self.order):
                if not self.loop:
                    raise StopIteration
                self.state = ConversationState(self.state.epoch + 1, 0, 0)
                self.order = self._epoch(self.state.epoch)
            task, index = self.order[self.state.position]
            self.current = render_example(self.tokenizer, self.tasks[task][index])
        return self.current

    def _next_example(self) -> None:
        self.state.position += 1
        self.state.offset = 0
        self.current = None
