"""chatterbot-corpus (tasks/chatterbot.py): its YAML reader, conversations split by question, and a corrupt
or missing wheel. A small fake wheel, laid out like the real one (fakes.py), keeps it offline.

    python -m pytest tests/test_chatterbot.py
"""

from __future__ import annotations

import pytest

from fakes import FEATURES_PARSED, FEATURES_YML, TRIVIA
from helpers import assert_chat_examples
from picochat.common import UserError
from picochat.data import offline
from picochat.tasks.chatterbot import ChatterBot, conversations_of_package, read_corpus_yaml

pytestmark = pytest.mark.usefixtures("fresh_package_caches")


def test_the_yaml_reader_reads_every_kind_of_item_the_corpus_has():
    assert read_corpus_yaml(FEATURES_YML, "features.yml") == FEATURES_PARSED


@pytest.mark.parametrize("text", [
    "conversations:\n- - [a, b]\n",                  # flow sequence
    "conversations:\n- - question\n  - key: value\n",  # a mapping
    'conversations:\n- - "tab\\there"\n',             # escapes
    "conversations:\n- - >\n    folded\n",            # folded block
    "conversations:\n      - - too deep\n",           # another indentation
    "- no key above\n",
    "conversations:\n  - answer before any question\n",
])
def test_the_yaml_reader_raises_on_what_it_does_not_know(text):
    with pytest.raises(UserError, match="YAML that picochat's reader does not know"):
        read_corpus_yaml(text, "x.yml")


def test_chatterbot_conversations_split_by_question(package_home, tiny_tokenizer):
    train, evals = ChatterBot.from_package(package_home, "train"), ChatterBot.from_package(package_home, "eval")
    # features.yml holds 7 distinct conversations (a duplicate and a broken entry are dropped); no Spanish
    assert len(train) + len(evals) == 7 + TRIVIA and 0 < len(evals) < len(train)
    questions = {split: {c["messages"][0]["content"] for c in task.examples}
                 for split, task in [("train", train), ("eval", evals)]}
    assert not questions["train"] & questions["eval"]
    assert not any(q.startswith("Cuál") for q in questions["train"] | questions["eval"])
    hello = next(c for c in train.examples + evals.examples if c["messages"][0]["content"] == "Hello")
    assert [m["content"] for m in hello["messages"]] == ["Hello", "Hi", "How are you?", "Fine."]
    assert sum(c["messages"][0]["content"] == "What is AI?" for c in train.examples + evals.examples) == 2
    for task in (train, evals):
        assert_chat_examples(task, tiny_tokenizer)
    conversations_of_package.cache_clear()
    assert ChatterBot.from_package(package_home, "eval").examples == evals.examples


def test_chatterbot_corrupt_or_missing_wheel_is_a_user_error(tmp_path, monkeypatch):
    packages = tmp_path / "data" / "packages"
    packages.mkdir(parents=True)
    (packages / "chatterbot_corpus-1.3.3-py2.py3-none-any.whl").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="is not the chatterbot-corpus==1.3.3 wheel"):
        ChatterBot.from_package(tmp_path, "train")
    monkeypatch.setattr(offline, "fetch", lambda source, cache_dir: None)  # as when PyPI is unreachable
    with pytest.raises(UserError, match="could not download chatterbot-corpus==1.3.3"):
        ChatterBot.from_package(tmp_path / "elsewhere", "train")
