"""Byte-level BPE tokenizer: trained with the rustbpe wheel, encoded with tiktoken, 9 special tokens.

Second step of the pipeline (after `picochat data prepare`; the commands are in tokenizer_commands.py):
merges learnt from the train shards, saved under $PICOCHAT_HOME/tokenizer/ in tiktoken's own text format.
chat.py builds the chat template on top of it.

    tokenizer = load_tokenizer(); tokenizer.decode(tokenizer.encode("hello world"))
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Iterable

import rustbpe
import tiktoken
import torch

from picochat.common import UserError, atomic_write_text, picochat_home

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
    """A tiktoken Encoding with picochat's special tokens."""

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

    def encode_special(self, text: str) -> list[int]:
        """Special tokens written out as text ("<|bos|>") become their ids: for the server's /tokenize, where
        a client asks what picochat's tokens are."""
        return self.encoding.encode(text, allowed_special="all")

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

    def fingerprint(self) -> str:
        """sha256 of the merges, split pattern and special tokens: equal fingerprints encode text alike."""
        digest = hashlib.sha256(self.encoding._pat_str.encode())
        for token, rank in sorted(self.encoding._mergeable_ranks.items(), key=lambda item: item[1]):
            digest.update(rank.to_bytes(4, "little") + len(token).to_bytes(2, "little") + token)
        digest.update(json.dumps(self.encoding._special_tokens, sort_keys=True).encode())
        return digest.hexdigest()


def tokenizer_dir(home: str | Path | None = None) -> Path:
    return picochat_home(home) / "tokenizer"


def load_tokenizer(home: str | Path | None = None) -> Tokenizer:
    return Tokenizer.load(tokenizer_dir(home))
