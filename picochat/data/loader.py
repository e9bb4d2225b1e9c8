"""Tokenizing data loader for pretraining: parquet shards -> (inputs, targets) batches of shape (B, T).

Documents are prefixed with <|bos|> and concatenated into one token stream. Each DDP rank reads every
world_size-th row group of each shard. `state_dict()` names the exact token where the next batch starts
(epoch, shard, row group, row, offset), so a resumed run sees exactly the batches it would have seen.

    loader = TokenLoader(tokenizer, train_shards, batch_size=8, seq_len=512)
    inputs, targets = next(loader)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch

from picochat.data.shards import open_shard

IGNORE_INDEX = -1  # targets equal to this are masked out of the loss (used by SFT; base masks nothing)


@dataclass
class LoaderState:
    epoch: int = 0
    shard: int = 0       # index into the shard list
    row_group: int = 0   # row group inside that shard (always one this rank owns)
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
        self.state = LoaderState(**state) if state else LoaderState(row_group=rank)
        self._documents = self._iter_documents(LoaderState(**asdict(self.state)))
        self._current: tuple[LoaderState, list[int]] | None = None
        self._resume_offset = self.state.offset  # only the first document after a restore starts mid-way

    def state_dict(self) -> dict:
        return asdict(self.state)

    def __iter__(self) -> "TokenLoader":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        needed = self.batch_size * self.seq_len + 1
        tokens: list[int] = []
        while len(tokens) < needed:
            position, document = self._current_document()
            take = document[self.state.offset:self.state.offset + needed - len(tokens)]
            tokens.extend(take)
            self.state.offset += len(take)
            if self.state.offset >= len(document):
                self._current = None  # next call moves on to the following document
        if self._current is None and self.loop:
            self._current_document()  # so state_dict() already points at the next batch's first token
        buffer = torch.tensor(tokens, dtype=torch.long)
        if self.device.type == "cuda":
            buffer = buffer.pin_memory().to(self.device, non_blocking=True)
        else:
            buffer = buffer.to(self.device)
        inputs = buffer[:-1].view(self.batch_size, self.seq_len)
        targets = buffer[1:].view(self.batch_size, self.seq_len)
        return inputs, targets

    def _current_document(self) -> tuple[LoaderState, list[int]]:
        if self._current is None:
            self._current = next(self._documents)  # StopIteration ends a non-looping loader
            self.state = LoaderState(**asdict(self._current[0]))
            self.state.offset, self._resume_offset = self._resume_offset, 0
        return self._current

    def _iter_documents(self, start: LoaderState) -> Iterator[tuple[LoaderState, list[int]]]:
        """Yield (position, bos + tokens) for this rank's documents, from `start` on, forever if looping."""
        epoch, first = start.epoch, True
        while True:
            yielded = False
            for shard_index in range(start.shard if first else 0, len(self.shards)):
                parquet = open_shard(self.shards[shard_index])
                group_start = start.row_group if first else self.rank
                for group in range(group_start, parquet.num_row_groups, self.world_size):
                    texts = parquet.read_row_group(group, columns=["text"]).column("text").to_pylist()
                    row_start = start.row if first else 0
                    first = False
                    encoded = self.tokenizer.encode_batch(texts[row_start:], prepend_bos=True)
                    for row, ids in enumerate(encoded, start=row_start):
                        yielded = True
                        yield LoaderState(epoch, shard_index, group, row, 0), ids
                first = False
            if not self.loop:
                return
            if not yielded:
                raise ValueError(f"rank {self.rank} of {self.world_size} got no documents: the shards have "
                                 "fewer row groups than there are ranks; use more data or fewer processes")
            epoch += 1
