"""Tokenizing data loader for pretraining: parquet shards -> Batches of (inputs, targets), each (B, T).

Documents are prefixed with <|bos|> and concatenated into one token stream. Each DDP rank reads every
world_size-th row group, counted over all shards. `state_dict()` names the exact token where the next batch starts
(epoch, shard, row group, row, offset), so a resumed run sees exactly the batches it would have seen.

    loader = TokenLoader(tokenizer, train_shards, batch_size=8, seq_len=512)
    batch = next(loader)    # batch.inputs, batch.targets

Batch, defined here, is what every loader yields and the training step takes (conversations.py, rl.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import torch

from picochat.common import UserError
from picochat.data.shards import open_shard


class Batch(NamedTuple):
    """One micro-batch, each tensor (B, T)."""
    inputs: torch.Tensor                 # token ids
    targets: torch.Tensor                # the next token at each position; IGNORE_INDEX: no loss there
    weights: torch.Tensor | None = None  # each target's loss weight (RL's advantages); None: all 1


@dataclass
class LoaderState:
    epoch: int = 0
    shard: int = 0       # index into the shard list
    row_group: int = 0   # row group inside that shard
    row: int = 0         # document inside that row group
    offset: int = 0      # token inside that document (its bos is token 0)


class TokenLoader:
    def __init__(self, tokenizer, shards: list[Path], batch_size: int, seq_len: int, *, rank: int = 0,
                 world_size: int = 1, device: torch.device | str = "cpu", loop: bool = True,
                 state: dict | None = None):
        if not shards:
            raise ValueError("the loader needs at least one shard")
        self.tokenizer = tokenizer
        self.shards = list(shards)
        self.batch_size, self.seq_len = batch_size, seq_len
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.loop = loop
        self.state = LoaderState(**state) if state else LoaderState()
        self._documents = self._iter_documents(LoaderState(**asdict(self.state)))
        self._current: tuple[LoaderState, list[int]] | None = None
        self._resume_offset = self.state.offset  # only the first document after a restore starts mid-way

    def state_dict(self) -> dict:
        return asdict(self.state)

    def __iter__(self) -> "TokenLoader":
        return self

    def stats(self, step_seconds: float) -> dict:
        """What the step's metrics record shows of this loader: the pass over the corpus it is in."""
        return {"epoch": self.state.epoch}

    def __next__(self) -> Batch:
        needed = self.batch_size * self.seq_len + 1
        tokens: list[int] = []
        while len(tokens) < needed:
            _, document = self._current_document()
            if self.state.offset >= len(document):
                self._current = None  # used up: move on to the following document
                continue
            take = document[self.state.offset:self.state.offset + needed - len(tokens)]
            tokens.extend(take)
            self.state.offset += len(take)
        # The last target is also the next batch's first input, so no token is skipped and k micro-batches
        # of B rows see exactly the tokens of one batch of k*B rows.
        self.state.offset -= 1
        buffer = torch.tensor(tokens, dtype=torch.long)
        if self.device.type == "cuda":
            buffer = buffer.pin_memory().to(self.device, non_blocking=True)
        else:
            buffer = buffer.to(self.device)
        return Batch(buffer[:-1].view(self.batch_size, self.seq_len), buffer[1:].view(self.batch_size, self.seq_len))

    def _current_document(self) -> tuple[LoaderState, list[int]]:
        if self._current is None:
            self._current = next(self._documents)  # StopIteration ends a non-looping loader
            self.state = LoaderState(**asdict(self._current[0]))
            self.state.offset, self._resume_offset = self._resume_offset, 0
        return self._current

    def _owned_row_groups(self, parquets: list) -> list[tuple[int, int]]:
        """(shard, row group) pairs of this rank: every world_size-th row group counted over all shards,
        so even many small shards of one row group each are shared fairly."""
        pairs = [(shard, group) for shard, parquet in enumerate(parquets)
                 for group in range(parquet.num_row_groups)]
        return pairs[self.rank::self.world_size]

    def _iter_documents(self, start: LoaderState) -> Iterator[tuple[LoaderState, list[int]]]:
        """Yield (position, bos + tokens) for this rank's documents, from `start` on, forever if looping."""
        parquets = [open_shard(path) for path in self.shards]  # opened once, read row group by row group
        owned = self._owned_row_groups(parquets)
        if not owned and self.loop:  # a finite (val) loader may come up empty on some ranks; training may not
            raise UserError(f"rank {self.rank} of {self.world_size} got no documents: the shards have "
                            "fewer row groups than there are ranks; use more data or fewer processes")
        epoch, resume_at = start.epoch, (start.shard, start.row_group)
        while True:
            for shard, group in owned:
                if resume_at and (shard, group) < resume_at:
                    continue  # before the restored position
                row_start = start.row if (shard, group) == resume_at else 0
                resume_at = None
                texts = parquets[shard].read_row_group(group, columns=["text"]).column("text")
                encoded = self.tokenizer.encode_batch(texts.to_pylist()[row_start:], prepend_bos=True)
                for row, ids in enumerate(encoded, start=row_start):
                    yield LoaderState(epoch, shard, group, row, 0), ids
            if not self.loop:
                return
            epoch += 1
