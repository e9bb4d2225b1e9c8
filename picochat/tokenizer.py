"""Byte-level BPE tokenizer: trained with the rustbpe wheel, encoded with tiktoken, plus the chat template.

Second step of the pipeline (after `picochat data prepare`): learns merges from the train shards and saves
them under $PICOCHAT_HOME/tokenizer/. The chat template turns a conversation into token ids and a loss
mask (1 where the assistant speaks), which mid-training and SFT train on.

    picochat tokenizer train --vocab-size 8192 && picochat tokenizer eval
"""

from __future__ import annotations

import base64
import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import rustbpe
import tiktoken
import torch

from picochat.common import UserError, atomic_write_text, picochat_home
from picochat.config import build, option
from picochat.data.download import url_reachable
from picochat.data.shards import corpus_dir, iter_texts, split_shards

SPECIAL_TOKENS = [
    "<|bos|>",                                       # starts every document / conversation
    "<|user_start|>", "<|user_end|>",
    "<|assistant_start|>", "<|assistant_end|>",
    "<|python_start|>", "<|python_end|>",            # the assistant calls the calculator tool
    "<|output_start|>", "<|output_end|>",            # the engine writes the tool's result
]

# GPT-4's split pattern, except numbers split into runs of at most 2 digits (not 3): with a vocab of a few
# thousand tokens, spending merges on 3-digit numbers is wasteful.
SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|"""
                 r"""\s*[\r\n]|\s+(?!\S)|\s+""")

RANKS_FILE, META_FILE = "tokenizer.tiktoken", "tokenizer.json"


class Tokenizer:
    """A tiktoken Encoding with picochat's special tokens and chat template."""

    def __init__(self, encoding: tiktoken.Encoding):
        self.encoding = encoding
        self.bos_id = self.special("<|bos|>")
        self._token_bytes: torch.Tensor | None = None

    # ---- construction ----------------------------------------------------------------------------------

    @classmethod
    def from_ranks(cls, mergeable_ranks: dict[bytes, int], pattern: str = SPLIT_PATTERN) -> "Tokenizer":
        first_special = len(mergeable_ranks)
        specials = {name: first_special + i for i, name in enumerate(SPECIAL_TOKENS)}
        return cls(tiktoken.Encoding("picochat", pat_str=pattern, mergeable_ranks=mergeable_ranks,
                                     special_tokens=specials))

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "Tokenizer":
        """Learn vocab_size - 9 byte-level tokens (256 bytes + merges); the 9 specials complete the vocab."""
        bpe = rustbpe.Tokenizer()
        bpe.train_from_iterator(iter(texts), vocab_size - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
        return cls.from_ranks(dict(bpe.get_mergeable_ranks()), bpe.get_pattern())

    def save(self, directory: str | Path, **info) -> None:
        directory = Path(directory)
        # tiktoken's own text format: "<base64 token> <rank>" per line (readable, no pickle)
        lines = (f"{base64.b64encode(token).decode()} {rank}\n"
                 for token, rank in sorted(self.encoding._mergeable_ranks.items(), key=lambda item: item[1]))
        atomic_write_text(directory / RANKS_FILE, "".join(lines))
        meta = {"pattern": self.encoding._pat_str, "vocab_size": self.vocab_size,
                "special_tokens": self.encoding._special_tokens, **info}
        atomic_write_text(directory / META_FILE, json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> "Tokenizer":
        directory = Path(directory)
        if not (directory / RANKS_FILE).exists() or not (directory / META_FILE).exists():
            raise UserError(f"no tokenizer in {directory}; run `picochat tokenizer train` first")
        try:
            meta = json.loads((directory / META_FILE).read_text())
            ranks = {base64.b64decode(token, validate=True): int(rank) for token, rank in
                     (line.split() for line in (directory / RANKS_FILE).read_text().splitlines() if line)}
            pattern, vocab_size = meta["pattern"], meta["vocab_size"]
        except (ValueError, OSError, KeyError) as e:
            raise UserError(f"tokenizer in {directory} is corrupt ({e}); run `picochat tokenizer train` again") from e
        # A damaged file must not load with shifted ids: ranks are exactly 0..n-1 and the specials follow.
        if sorted(ranks.values()) != list(range(len(ranks))) or len(ranks) + len(SPECIAL_TOKENS) != vocab_size:
            raise UserError(f"tokenizer in {directory} is corrupt (ranks do not make a {vocab_size}-token "
                             "vocabulary); run `picochat tokenizer train` again")
        return cls.from_ranks(ranks, pattern)

    # ---- encoding ----------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.encoding.n_vocab

    def special(self, name: str) -> int:
        return self.encoding.encode_single_token(name)

    def encode(self, text: str, prepend_bos: bool = False) -> list[int]:
        ids = self.encoding.encode_ordinary(text)  # special-token text in documents stays plain text
        return [self.bos_id] + ids if prepend_bos else ids

    def encode_batch(self, texts: list[str], prepend_bos: bool = False, num_threads: int = 4) -> list[list[int]]:
        batch = self.encoding.encode_ordinary_batch(texts, num_threads=num_threads)
        return [[self.bos_id] + ids for ids in batch] if prepend_bos else batch

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(ids)

    def token_bytes(self) -> torch.Tensor:
        """(vocab_size,) int64: UTF-8 bytes of each token, 0 for specials, so bpb ignores them."""
        if self._token_bytes is None:  # computed once: every val bpb evaluation needs it
            sizes = torch.zeros(self.vocab_size, dtype=torch.int64)
            for token, rank in self.encoding._mergeable_ranks.items():
                sizes[rank] = len(token)
            self._token_bytes = sizes
        return self._token_bytes

    # ---- chat template -------------------------------------------------------------------------------

    def render_conversation(self, conversation: dict, max_tokens: int = 2048) -> tuple[list[int], list[int]]:
        """Conversation -> (ids, mask). mask is 1 on tokens the assistant must produce, 0 elsewhere.

        conversation = {"messages": [{"role": "system"|"user"|"assistant", "content": str | [parts]}]}
        where assistant parts are {"type": "text"|"python"|"python_output", "text": str}.
        """
        ids: list[int] = []
        mask: list[int] = []

        def add(tokens: list[int], trained: int) -> None:
            ids.extend(tokens)
            mask.extend([trained] * len(tokens))

        add([self.bos_id], 0)
        for message in _merge_system(conversation["messages"]):
            if message["role"] == "user":
                add([self.special("<|user_start|>")] + self.encode(message["content"])
                    + [self.special("<|user_end|>")], 0)
            else:
                add([self.special("<|assistant_start|>")], 0)  # the prompt gives this one
                for part in _parts(message["content"]):
                    self._render_part(part, add)
                add([self.special("<|assistant_end|>")], 1)
        return ids[:max_tokens], mask[:max_tokens]

    def _render_part(self, part: dict, add) -> None:
        text = self.encode(part["text"])
        if part["type"] == "text":
            add(text, 1)
        elif part["type"] == "python":
            add([self.special("<|python_start|>")] + text + [self.special("<|python_end|>")], 1)
        elif part["type"] == "python_output":
            # The engine computes tool output and forces it into the stream: never a training target.
            add([self.special("<|output_start|>")] + text + [self.special("<|output_end|>")], 0)
        else:
            raise ValueError(f"unknown assistant part type {part['type']!r}; use text, python or python_output")

    def render_for_completion(self, conversation: dict) -> list[int]:
        """Ids of a prompt that ends with <|assistant_start|>, ready for the model to answer."""
        conversation = copy.deepcopy(conversation)
        messages = conversation["messages"]
        if messages and messages[-1]["role"] == "assistant":
            messages.pop()
        ids, _ = self.render_conversation(conversation, max_tokens=1 << 30)
        return ids + [self.special("<|assistant_start|>")]


def _merge_system(messages: list[dict]) -> list[dict]:
    """Fold a leading system message into the first user turn; check turns alternate user/assistant."""
    messages = list(messages)
    if messages and messages[0]["role"] == "system":
        if len(messages) < 2 or messages[1]["role"] != "user":
            raise UserError("a system message must be followed by a user message")
        system, user = messages[0], messages[1]
        messages = [{"role": "user", "content": system["content"] + "\n\n" + user["content"]}] + messages[2:]
    for index, message in enumerate(messages):
        expected = "user" if index % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise UserError(f"message {index} has role {message['role']!r}, expected {expected!r} "
                             "(conversations alternate user/assistant, starting with user)")
    return messages


def _parts(content: str | list[dict]) -> list[dict]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


# ----------------------------------------------------------------------------------------------------------
# CLI commands

def tokenizer_dir(home: str | Path | None = None) -> Path:
    return picochat_home(home) / "tokenizer"


def load_tokenizer(home: str | Path | None = None) -> Tokenizer:
    return Tokenizer.load(tokenizer_dir(home))


@dataclass
class TokenizerTrainConfig:
    vocab_size: int = option(8192, "vocabulary size including the 9 special tokens (65536 for the GPU recipe)")
    max_chars: int = option(2_000_000_000, "train on at most this many characters of the train shards")
    doc_cap: int = option(10_000, "use at most this many characters of each document")
    home: str = option("", "artifact root (default: $PICOCHAT_HOME or ~/.cache/picochat)")

    def __post_init__(self):
        if self.vocab_size < 256 + len(SPECIAL_TOKENS) + 1:
            raise UserError(f"--vocab-size must be at least {256 + len(SPECIAL_TOKENS) + 1} "
                             f"(256 bytes + 9 specials + 1 merge), got {self.vocab_size}")
        if self.max_chars <= 0 or self.doc_cap <= 0:
            raise UserError("--max-chars and --doc-cap must be positive")


@dataclass
class TokenizerEvalConfig:
    home: str = option("", "artifact root (default: $PICOCHAT_HOME or ~/.cache/picochat)")
    max_chars: int = option(5_000_000, "evaluate on at most this many characters of the val shard")


def train_command(args) -> Tokenizer:
    config = build(TokenizerTrainConfig, args)
    home = picochat_home(config.home or None)
    train_shards, _ = split_shards(corpus_dir(home))
    texts = (text[:config.doc_cap] for text in iter_texts(train_shards, max_bytes=config.max_chars))
    start = time.perf_counter()
    tokenizer = Tokenizer.train(texts, config.vocab_size)
    seconds = time.perf_counter() - start
    tokenizer.save(tokenizer_dir(home), train_seconds=round(seconds, 2))
    print(f"tokenizer: vocab {tokenizer.vocab_size:,} trained in {seconds:.1f}s -> {tokenizer_dir(home)}")
    if tokenizer.vocab_size < config.vocab_size:
        print(f"warning: the corpus only supports {tokenizer.vocab_size:,} tokens, fewer than --vocab-size "
              f"{config.vocab_size:,}; use more data or a smaller vocabulary")
    return tokenizer


def compression(encode, texts: list[str]) -> float:
    """Bytes of UTF-8 per token: higher means the tokenizer compresses this text better."""
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_tokens = sum(len(encode(t)) for t in texts)
    return n_bytes / max(n_tokens, 1)


# Where tiktoken fetches the GPT-2 / GPT-4 vocabularies (unless they are in its cache).
TIKTOKEN_PROBE_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"


def eval_command(args) -> dict:
    config = build(TokenizerEvalConfig, args)
    home = picochat_home(config.home or None)
    tokenizer = load_tokenizer(home)
    train_shards, val_shards = split_shards(corpus_dir(home))
    texts = list(iter_texts(val_shards, max_bytes=config.max_chars))
    results = {"picochat": compression(tokenizer.encode, texts)}
    online = url_reachable(TIKTOKEN_PROBE_URL)
    for name in ("gpt2", "cl100k_base"):
        if not online:  # tiktoken's own download has no timeout: behind a firewall it would hang
            print(f"  {name:<12} skipped (offline: {TIKTOKEN_PROBE_URL.split('/')[2]} did not answer)")
            continue
        try:
            reference = tiktoken.get_encoding(name)
        except (OSError, ValueError) as e:  # offline: tiktoken cannot fetch its vocab files
            print(f"  {name:<12} skipped (offline: {type(e).__name__})")
            continue
        results[name] = compression(reference.encode_ordinary, texts)
    n_bytes = sum(len(t.encode('utf-8')) for t in texts)
    print(f"tokenizer eval on {len(texts):,} val documents ({n_bytes:,} bytes):")
    for name, ratio in results.items():
        print(f"  {name:<12} {ratio:.3f} bytes/token")
    stats = corpus_stats(tokenizer, train_shards + val_shards)
    print(f"corpus: {stats['documents']:,} documents, {stats['bytes']:,} bytes, {stats['tokens']:,} tokens "
          f"({stats['bytes'] / max(stats['tokens'], 1):.3f} bytes/token)")
    report = {"bytes_per_token": results, "corpus": stats}
    atomic_write_text(tokenizer_dir(home) / "eval.json", json.dumps(report, indent=2))
    return report


def corpus_stats(tokenizer: Tokenizer, shards: list[Path]) -> dict:
    """Documents, UTF-8 bytes and tokens (bos included) in the whole corpus."""
    stats = {"documents": 0, "bytes": 0, "tokens": 0}
    batch: list[str] = []
    for text in iter_texts(shards):
        batch.append(text)
        if len(batch) == 1024:
            _count(tokenizer, batch, stats)
            batch = []
    _count(tokenizer, batch, stats)
    return stats


def _count(tokenizer: Tokenizer, texts: list[str], stats: dict) -> None:
    stats["documents"] += len(texts)
    stats["bytes"] += sum(len(t.encode("utf-8")) for t in texts)
    stats["tokens"] += sum(map(len, tokenizer.encode_batch(texts, prepend_bos=True)))
