"""`picochat chat`: talk to a trained model in the terminal, streaming each answer as it is generated.

Interactive: multi-turn history, /clear starts a new conversation, /quit or Ctrl-D leaves, and Ctrl-C
stops the current answer only (at the prompt it drops the line typed so far). One-shot: -p "prompt" prints only the answer, for scripts.

    picochat chat                       # the newest stage's newest checkpoint
    picochat chat -p "Why is the sky blue?" --temperature 0
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from picochat.common import UserError
from picochat.config import build, option
from picochat.checkpoint import LoadConfig, open_engine
from picochat.engine import Engine, Sampling

HELP = "/clear starts a new conversation, /quit or Ctrl-D leaves, Ctrl-C stops an answer"


@dataclass
class ChatConfig:
    prompt: str = option("", "one-shot: answer this prompt, print only the answer and exit", short="-p")
    temperature: float = option(0.6, "sampling temperature (0: greedy)")
    top_k: int = option(50, "sample from the k most likely tokens (0: all)")
    top_p: float = option(1.0, "sample from the smallest set of tokens with this much probability")
    max_tokens: int = option(512, "longest answer, in tokens")
    seed: int = option(-1, "random seed for sampling (-1: a new one for every answer)")

    def sampling(self) -> Sampling:
        return Sampling(self.temperature, self.top_k, self.top_p, self.max_tokens,
                        None if self.seed < 0 else self.seed)


def run(args) -> None:
    config = build(ChatConfig, args)
    sampling = config.sampling()  # checks the sampling flags before loading anything
    engine = open_engine(build(LoadConfig, args), quiet=bool(config.prompt))
    if config.prompt:
        answer(engine, [{"role": "user", "content": config.prompt}], sampling)
        return
    print(f"picochat chat: {HELP}", flush=True)
    repl(engine, sampling)


def answer(engine: Engine, messages: list[dict], sampling: Sampling) -> str:
    """Stream one answer to stdout; Ctrl-C cuts it short. Returns the text shown."""
    shown = []
    try:
        for delta in engine.stream({"messages": messages}, sampling):
            shown.append(delta)
            print(delta, end="", flush=True)
    except KeyboardInterrupt:
        print(" [stopped]", end="")
    print(flush=True)
    return "".join(shown)


def repl(engine: Engine, sampling: Sampling, read=input) -> None:
    messages: list[dict] = []
    while True:
        try:
            line = read("you> ").strip()
        except KeyboardInterrupt:  # Ctrl-C at the prompt drops the line, as a shell does
            print()
            continue
        except EOFError:  # Ctrl-D
            print()
            return
        if line == "/quit":
            return
        if line == "/clear":
            messages = []
            print("(new conversation)")
            continue
        if not line:
            continue
        messages.append({"role": "user", "content": line})
        print("picochat> ", end="", flush=True)
        try:
            messages.append({"role": "assistant", "content": answer(engine, messages, sampling)})
        except UserError as error:  # e.g. the conversation outgrew the model's context
            messages.pop()
            print(f"\nerror: {error}; /clear starts a new conversation", file=sys.stderr, flush=True)
