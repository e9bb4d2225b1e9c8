"""Pretraining text in mid-training and SFT: documents of the corpus the base model learned from, so its
plain-text knowledge is rehearsed while it learns the chat format. An example is {"text": ...}, not a conversation;
every one of its tokens is a target (data/conversations.py renders it). Train documents come from the
corpus's train shards, eval documents from its val shard.

    PretrainingText.from_corpus(home, "train")[0]["text"][:80]
"""

from __future__ import annotations

import functools
from pathlib import Path

from picochat.data.shards import corpus_dir, iter_texts, split_shards
from picochat.tasks import Task

# ~830k tokens, a fifth of the mid mixture's. At 1 MB (a twelfth), 2 minutes of mid took the default CPU
# model's pretraining val bpb from 1.58 to 1.86 (vocab 8,192, 2026-12-06).
MAX_BYTES = {"train": 3_000_000, "eval": 100_000}


class PretrainingText(Task):
    name = "pretraining_text"
    source = "the pretraining corpus (per-document source in its manifest and shards)"
    license = "per document, as recorded in the corpus shards"

    def __init__(self, split: str, texts: tuple[str, ...]):
        super().__init__(split)
        self.texts = texts

    @classmethod
    def from_corpus(cls, home: str | Path, split: str) -> "PretrainingText":
        return cls(split, corpus_texts(Path(home), split))

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> dict:
        return {"text": self.texts[index]}


@functools.lru_cache(maxsize=4)  # a stage asks for its tasks several times (batches, val, fingerprint)
def corpus_texts(home: Path, split: str) -> tuple[str, ...]:
    train_shards, val_shards = split_shards(corpus_dir(home))
    return tuple(iter_texts(train_shards if split == "train" else val_shards, max_bytes=MAX_BYTES[split]))
