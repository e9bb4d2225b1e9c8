"""`picochat chat`: one-shot answers on stdout only, the REPL's history, /clear, /quit, Ctrl-C stopping
one answer, and one-line errors.

    python -m pytest tests/test_chat_cli.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from helpers import TINY, flags_dict
from picochat.chat_cli import repl
from picochat.common import UserError
from picochat.runtime import setup_runtime
from picochat.checkpoint import load_engine
from picochat.engine import Sampling
from picochat.train import run


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory, tiny_home):
    home = tmp_path_factory.mktemp("chat") / "home"
    shutil.copytree(tiny_home, home)
    run(flags_dict(*TINY, "--num-iterations", "20", "--home", str(home)))
    return home


def chat(home, *flags: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "picochat.cli", "chat", "--device", "cpu", "--dtype", "float32", *flags],
                          input=stdin, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PICOCHAT_HOME": str(home)})


def test_one_shot_prints_only_the_answer(trained_home):
    done = chat(trained_home, "-p", "hi", "--temperature", "0", "--max-tokens", "20")
    assert done.returncode == 0, done.stderr
    engine = load_engine(trained_home, runtime=setup_runtime("cpu", "float32"), quiet=True)
    expected = engine.complete([engine.prompt_ids({"messages": [{"role": "user", "content": "hi"}]})],
                               Sampling(temperature=0, max_tokens=20))[0]["text"]
    assert done.stdout == expected + "\n" and expected.strip()


def test_the_repl_answers_until_quit(trained_home):
    done = chat(trained_home, "--max-tokens", "8", "--seed", "1", stdin="hello\n/clear\nagain\n/quit\nnever read\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("picochat> ") == 2 and "(new conversation)" in done.stdout


def test_without_a_checkpoint_or_with_bad_flags_it_is_one_line(tiny_home):
    for flags, message in ((["-p", "hi"], "create one with `picochat train --stage base`"),
                           (["--top-p", "0"], "top_p must be in (0, 1]"),
                           (["--source", "sft"], "`picochat train --stage sft`")):
        done = chat(tiny_home, *flags)
        assert done.returncode == 2 and message in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


class FakeEngine:
    """Records the conversations it is asked to continue; answers from a script."""

    def __init__(self, answers):
        self.answers, self.seen = list(answers), []

    def stream(self, conversation, sampling):
        self.seen.append([dict(m) for m in conversation["messages"]])
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        for word in answer:
            if word is KeyboardInterrupt:
                raise KeyboardInterrupt
            yield word


def lines(*inputs):
    queue = list(inputs)

    def read(prompt):
        if not queue:
            raise EOFError
        item = queue.pop(0)
        if item is KeyboardInterrupt:
            raise KeyboardInterrupt
        return item
    return read


def test_history_clear_and_ctrl_c(capsys):
    engine = FakeEngine([["Hi", " there"], ["Par", KeyboardInterrupt, "never"], ["ok"], ["fresh"]])
    repl(engine, Sampling(), read=lines("hello", "long one", "go on", "/clear", "new", "/quit", "unread"))
    user = lambda text: {"role": "user", "content": text}
    bot = lambda text: {"role": "assistant", "content": text}
    assert engine.seen == [
        [user("hello")],
        [user("hello"), bot("Hi there"), user("long one")],
        [user("hello"), bot("Hi there"), user("long one"), bot("Par"), user("go on")],  # Ctrl-C kept the part shown
        [user("new")],
    ]
    out = capsys.readouterr().out
    assert "Par [stopped]\n" in out and "(new conversation)" in out


def test_an_error_keeps_the_conversation_usable(capsys):
    engine = FakeEngine([UserError("prompt exceeds the model's context"), ["fine"]])
    repl(engine, Sampling(), read=lines("too long", KeyboardInterrupt, "short"))  # Ctrl-C at the prompt: go on
    assert engine.seen[1] == [{"role": "user", "content": "short"}]  # the failed turn was dropped
    assert "error: prompt exceeds the model's context; /clear starts a new conversation" in capsys.readouterr().err
