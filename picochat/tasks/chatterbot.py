"""ChatterBot: 774 distinct short English conversations (trivia, small talk, coding, science...) from the
PyPI package chatterbot-corpus 1.3.3 (BSD-3-Clause; the text is user contributed). The first speaker
becomes the user, the second the assistant. One question in ten, chosen by its hash, is the eval split, so
the several answers some questions have all land in the same split.

The wheel is fetched with `pip download` into $PICOCHAT_HOME/data/packages and read without installing
it; its YAML files are read by the small reader below, which knows just the YAML the corpus uses.

    ChatterBot.from_package(home, "train")[0]
"""

from __future__ import annotations

import functools
import re
import zipfile
import zlib
from pathlib import Path

from picochat.common import UserError
from picochat.data.offline import Source, fetch_required
from picochat.tasks import ListTask

# BSD-3-Clause per the sdist's license.md and pyproject.toml (the wheel only says "BSD License").
PACKAGE = Source("chatterbot-corpus", "1.3.3", "wheel", "BSD-3-Clause", reader=None)
FOLDER = "chatterbot_corpus/data/english/"
EVAL_SHARE = 10
# These speak as ChatterBot's own persona ("I am the original chat bot", "my robot body"); picochat says who
# it is through tasks/identity.py.
PERSONA = ("ai", "botprofile")


class ChatterBot(ListTask):
    name = "chatterbot"
    source = f"pypi:{PACKAGE.pin}/{FOLDER}*.yml"
    license = "BSD-3-Clause (user-contributed text)"

    @classmethod
    def from_package(cls, home: str | Path, split: str) -> "ChatterBot":
        return cls(split, conversations_of_package(Path(home) / "data" / "packages")[split])


@functools.lru_cache(maxsize=2)  # a stage asks for its tasks several times (batches, val, fingerprint)
def conversations_of_package(cache_dir: Path) -> dict[str, list[dict]]:
    """Every English conversation of the wheel as {"messages", "category"}, split by its first question."""
    archive = fetch_required(PACKAGE, cache_dir, "it holds chat conversations of mid-training and SFT")
    try:
        with zipfile.ZipFile(archive) as wheel:
            files = {name: wheel.read(name).decode("utf-8") for name in sorted(wheel.namelist())
                     if name.startswith(FOLDER) and name.endswith(".yml")}
    except (zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise UserError(f"{archive} is not the {PACKAGE.pin} wheel ({e}); delete it and run again") from e
    if not files:
        raise UserError(f"{archive} has no {FOLDER}*.yml; is it the {PACKAGE.pin} wheel?")
    splits: dict[str, list[dict]] = {"train": [], "eval": []}
    seen = set()
    for name, text in files.items():
        category = Path(name).stem
        if category in PERSONA:
            continue
        # trivia.yml has one entry that lost its "- -" and reads as a single string: not a conversation
        for turns in (t for t in read_corpus_yaml(text, name).get("conversations", []) if isinstance(t, list)):
            conversation = to_conversation(turns, category)
            if conversation is None or repr(conversation["messages"]) in seen:
                continue  # tech_support.yml says its 10 exchanges 1,050 times, coding.yml some twice
            seen.add(repr(conversation["messages"]))
            question = conversation["messages"][0]["content"].lower()
            splits["eval" if zlib.crc32(question.encode()) % EVAL_SHARE == 0 else "train"].append(conversation)
    return splits


def to_conversation(turns: list[str], category: str) -> dict | None:
    """Alternating turns -> user/assistant messages ending with the assistant; None without an exchange."""
    texts = [turn.strip() for turn in turns if turn.strip()]
    texts = texts[:len(texts) // 2 * 2]  # a last question without an answer teaches nothing
    if not texts:
        return None
    roles = ["user", "assistant"] * (len(texts) // 2)
    return {"messages": [{"role": role, "content": text} for role, text in zip(roles, texts)],
            "category": category}


# ----------------------------------------------------------------------------------------------------------
# The YAML of chatterbot-corpus: top-level keys holding lists of strings or of lists of strings. Scalars are
# plain, 'single' or "double" quoted (all may run over several lines), or | literal blocks (code). The
# result matches PyYAML's on all 21 English files; anything else raises, never reads wrong.

KEY = re.compile(r"(\w+):\s*")
ITEM = re.compile(r"((?: *- )+)(.*)")  # "- - question", "  - answer", "- category"


def read_corpus_yaml(text: str, where: str) -> dict[str, list]:
    lines, data, key, at = text.splitlines(), {}, None, 0
    while at < len(lines):
        line, here = lines[at], f"{where}:{at + 1}"
        at += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if key_line := KEY.fullmatch(line):
            key = key_line.group(1)
            data[key] = []
            continue
        item = ITEM.fullmatch(line) if key else None
        if item is None:
            raise unknown_yaml(here, line)
        dashes = [m.start() for m in re.finditer("-", item.group(1))]
        end = at
        while end < len(lines) and (not lines[end].strip() or indent(lines[end]) > dashes[-1]):
            end += 1  # the item's scalar goes on while lines are blank or indented past its dash
        value, at = scalar(item.group(2), lines[at:end], here), end
        if dashes == [0]:
            data[key].append(value)
        elif dashes == [0, 2]:
            data[key].append([value])
        elif dashes == [2] and data[key] and isinstance(data[key][-1], list):
            data[key][-1].append(value)
        else:
            raise unknown_yaml(here, line)
    return data


def indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def scalar(first: str, rest: list[str], where: str) -> str:
    """One item's text from the rest of its first line and its continuation lines."""
    if first.strip() == "|":  # literal block: lines kept as they are, less the block's indentation
        while rest and not rest[-1].strip():
            rest = rest[:-1]
        margin = min((indent(line) for line in rest if line.strip()), default=0)
        return "\n".join(line[margin:] for line in rest) + "\n"
    text = fold([first] + rest)
    if text[:1] == "'" and text[-1:] == "'" and len(text) > 1 and re.fullmatch(r"(?:[^']|'')*", text[1:-1]):
        return text[1:-1].replace("''", "'")
    if text[:1] == '"' and text[-1:] == '"' and len(text) > 1 and re.fullmatch(r'[^"\\]*', text[1:-1]):
        return text[1:-1]  # (no escapes: the corpus has none)
    if text[:1] in "'\"|>[]{}&*!%@`" or ": " in text or " #" in text or text.endswith(":"):
        raise unknown_yaml(where, text)
    return text


def unknown_yaml(where: str, text: str) -> UserError:
    return UserError(f"{where}: YAML that picochat's reader does not know: {text.strip()[:60]!r}")


def fold(lines: list[str]) -> str:
    """YAML's folding of a multi-line scalar: a line break becomes a space, a blank line a newline."""
    text, breaks = "", 0
    for line in (line.strip(" \t") for line in lines):  # YAML's whitespace; str.strip() would eat a \xa0
        if not line:
            breaks += 1
            continue
        if text:
            text += "\n" * breaks if breaks else " "
        text, breaks = text + line, 0
    return text
