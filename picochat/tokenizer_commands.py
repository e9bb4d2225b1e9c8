"""`picochat tokenizer train` and `picochat tokenizer eval`: the tokenizer step of the pipeline.

train learns the BPE merges from the corpus's train shards (tokenizer.py); eval reports compression in
bytes per token on the val shard, against GPT-2 and GPT-4's tokenizers when they can be downloaded, and
the corpus's size in documents, bytes and tokens (tokenizer/eval.json, for the report).

    picochat tokenizer train --vocab-size 4096 && picochat tokenizer eval
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import tiktoken

from picochat.common import UserError, atomic_write_text, picochat_home
from picochat.config import build, option
from picochat.data.fetch import url_reachable
from picochat.data.shards import corpus_dir, iter_texts, split_shards
from picochat.tokenizer import SPECIAL_TOKENS, Tokenizer, load_tokenizer, tokenizer_dir


@dataclass
class TokenizerTrainConfig:
    vocab_size: int = option(4096, "vocabulary size including the 9 special tokens (65536 for the GPU recipe)")
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
    # When it was trained makes each training's tokenizer.json another file: base, which records that file
    # as what it was made after (checkpoint.run_inputs), trains again after any tokenizer training.
    tokenizer.save(tokenizer_dir(home), train_seconds=round(seconds, 2),
                   trained_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
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
