"""SmolTalk: everyday and instruction-following conversations written for small models, from Hugging Face's
HuggingFaceTB/smol-smoltalk (Apache-2.0), the conversation set nanochat's SFT trains on. Its train file is
picochat's train split, its test file the eval split.

A conversation is kept if its turns alternate user/assistant after an optional system message (which
chat.py folds into the first user turn), end with the assistant and all hold text; the rest are dropped
and counted. Conversations stay in Arrow and become Python dicts one at a time, so the ~460k of the
train file cost their size once, not several times over.

    SmolTalk.from_hub(home, "eval")[0]
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pyarrow as pa

from picochat.chat import merge_system
from picochat.common import UserError
from picochat.data.hub import download_dataset_file, hub_dir, read_parquet
from picochat.tasks import Task

REPO = "HuggingFaceTB/smol-smoltalk"
FILES = {"train": "data/train-00000-of-00001.parquet", "eval": "data/test-00000-of-00001.parquet"}
CHECK_ROWS = 10_000  # conversations turned into Python at a time while checking them


class SmolTalk(Task):
    name = "smoltalk"
    source = f"hf:{REPO}/{FILES['train']} (eval: {FILES['eval']})"
    license = "Apache-2.0"

    def __init__(self, split: str, conversations: pa.Array | pa.ChunkedArray):
        """conversations: the file's `messages` column, a list of {"role", "content"} per row."""
        super().__init__(split)
        self.conversations = conversations
        self.kept = well_formed_rows(conversations)  # row numbers; the examples are these rows, in order
        self.dropped = len(conversations) - len(self.kept)

    @classmethod
    @functools.lru_cache(maxsize=2)  # a stage asks for its tasks several times (batches, val, fingerprint)
    def from_hub(cls, home: str | Path, split: str) -> "SmolTalk":
        if split not in FILES:
            raise UserError(f"smoltalk: split must be one of {', '.join(FILES)}, got {split!r}")
        path = download_dataset_file(REPO, FILES[split], hub_dir(home))
        return cls(split, read_parquet(path, ["messages"]).column("messages"))

    def __len__(self) -> int:
        return len(self.kept)

    def __getitem__(self, index: int) -> dict:
        return {"messages": self.conversations[int(self.kept[index])].as_py()}


def well_formed_rows(conversations: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Row numbers of the well-formed conversations, checked CHECK_ROWS at a time as Python lists."""
    rows: list[int] = []
    for start in range(0, len(conversations), CHECK_ROWS):
        batch = conversations.slice(start, CHECK_ROWS).to_pylist()
        rows += [start + offset for offset, messages in enumerate(batch) if is_well_formed(messages)]
    return np.array(rows, dtype=np.int64)


def is_well_formed(messages: list[dict] | None) -> bool:
    """Turns alternate user/assistant after an optional system message, end with the assistant, and each
    has a role and some text."""
    if not messages or not all(has_text(message) for message in messages):
        return False
    try:
        turns = merge_system(messages)
    except UserError:
        return False
    return turns[-1]["role"] == "assistant"


def has_text(message: dict | None) -> bool:
    return (isinstance(message, dict) and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str) and message["content"].strip() != "")
