"""Download FineWeb-Edu parquet shards from Hugging Face: nanochat's real pretraining corpus.

The first step of the pipeline when there is network. Shards land in $PICOCHAT_HOME/data/base/ in the
format of shards.py, fetched in parallel by http.py (resumed after a dropped connection, retried with
backoff, $HF_ENDPOINT and $HF_TOKEN honoured), and recorded with their sha256 in manifest.json.

What is checked when:
- after each transfer: the byte count (Content-Length, Content-Range or Hugging Face's X-Linked-Size),
  the sha256 if the server published one (Hugging Face's X-Linked-Etag or ETag), and that it is parquet;
- on a re-run: each shard on disk is hashed again and kept only if it matches manifest.json, so a
  changed byte anywhere gets the shard fetched again. A shard the manifest has no sha256 for is only
  opened as parquet, then hashed into the manifest.

    picochat data download --num-shards 8 --workers 4
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from picochat.common import UserError, atomic_write_text, picochat_home
from picochat.config import build, option
from picochat.data.fetch import HF_ENDPOINT, download_file, is_complete, on_hub_endpoint, url_reachable
from picochat.data.shards import MANIFEST, corpus_dir, file_sha256, open_shard, read_manifest, shard_name

FINEWEB_URL = f"{HF_ENDPOINT}/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"
FINEWEB_SHARDS = 1823   # shard_00000 .. shard_01822, ~100 MB each (~170 GB in all)
SOURCE = "fineweb-edu"


@dataclass
class DownloadConfig:
    num_shards: int = option(8, "how many shards to fetch, from shard 0; the last one is the val split (-1 = all)")
    workers: int = option(4, "parallel downloads")
    base_url: str = option(FINEWEB_URL, "where shard_NNNNN.parquet files are served from")
    retries: int = option(5, "attempts per shard before giving up")
    timeout: float = option(30.0, "seconds to wait on a silent connection before retrying")
    home: str = option("", "artifact root; empty means $PICOCHAT_HOME or ~/.cache/picochat")
    output: str = option("", "folder for the shards; empty means <home>/data/base")

    def __post_init__(self):
        if self.num_shards != -1 and not 2 <= self.num_shards <= FINEWEB_SHARDS:
            raise UserError(f"--num-shards must be -1 (all) or 2..{FINEWEB_SHARDS} (one train shard plus "
                            f"the last as val), got {self.num_shards}")
        if self.workers < 1:
            raise UserError(f"--workers must be >= 1, got {self.workers}")
        if self.retries < 1:
            raise UserError(f"--retries must be >= 1 (attempts per shard), got {self.retries}")
        if self.timeout <= 0:
            raise UserError(f"--timeout must be > 0 seconds, got {self.timeout}")
        if not self.base_url.startswith(("http://", "https://")):
            raise UserError(f"--base-url must start with http:// or https://, got {self.base_url!r}")


def run(args: argparse.Namespace | dict) -> list[Path]:
    """`picochat data download`: fetch the first --num-shards shards into --output."""
    config = build(DownloadConfig, args)
    directory = Path(config.output) if config.output else corpus_dir(picochat_home(config.home or None), "base")
    count = FINEWEB_SHARDS if config.num_shards == -1 else config.num_shards
    paths = download_shards(range(count), directory, config.base_url, workers=config.workers,
                            retries=config.retries, timeout=config.timeout)
    size = sum(path.stat().st_size for path in paths)
    print(f"{len(paths)} FineWeb-Edu shards ({size / 1e9:.2f} GB) ready in {directory}", flush=True)
    return paths


def shard_url(base_url: str, name: str) -> str:
    return f"{base_url.rstrip('/')}/{name}"


def network_reachable(base_url: str = FINEWEB_URL, timeout: float = 3.0) -> bool:
    """True if shard 0 answers within `timeout`; used to fall back to the offline corpus."""
    return url_reachable(shard_url(base_url, shard_name(0)), timeout)


def download_shards(indices, directory: str | Path, base_url: str = FINEWEB_URL, workers: int = 4,
                    retries: int = 5, timeout: float = 30.0, backoff: float = 1.0) -> list[Path]:
    """Download shards `indices` into `directory` (skipping valid ones), refresh the manifest, return paths.

    Raises UserError naming the first shard that failed all `retries` attempts.
    """
    directory, base_url = Path(directory), on_hub_endpoint(base_url)
    directory.mkdir(parents=True, exist_ok=True)
    recorded = _recorded_shards(directory)
    indices = list(indices)
    entries: dict[int, dict] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(_download_one, index, directory, base_url, recorded, retries, timeout,
                               backoff): index for index in indices}
        try:
            for future in tqdm(as_completed(futures), total=len(futures), unit="shard", desc=SOURCE):
                entries[futures[future]] = future.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)  # don't start queued shards; running ones finish
            raise
    ordered = [entries[index] for index in indices]
    _write_manifest(directory, base_url, ordered, recorded)
    return [directory / entry["file"] for entry in ordered]


def _recorded_shards(directory: Path) -> dict[str, dict]:
    """Manifest entries by file name; refuses to mix FineWeb shards into another corpus's folder."""
    manifest = read_manifest(directory)
    if manifest and manifest.get("source") != SOURCE:
        raise UserError(f"{directory} already holds a {manifest.get('source', 'different')!r} corpus; "
                        "pass another --output or delete that folder first")
    return {entry["file"]: entry for entry in manifest.get("shards", [])}


def _download_one(index: int, directory: Path, base_url: str, recorded: dict[str, dict], retries: int,
                  timeout: float, backoff: float) -> dict:
    """The manifest entry of one shard: the recorded one if the file on disk still matches it, else a new
    one after downloading it, retrying with exponential backoff.

    Runs in a worker thread, so the shards are hashed in parallel.
    """
    name = shard_name(index)
    final, part = directory / name, directory / f"{name}.part"
    entry = recorded.get(name)
    # A shard without a recorded sha256 must at least open as parquet: check_shard reads only the footer,
    # so checking 1,823 shards stays cheap.
    size, sha256 = (entry["bytes"], entry.get("sha256")) if entry else (None, None)
    if is_complete(final, check_shard, size, sha256):
        part.unlink(missing_ok=True)
        return entry or {"file": name, "bytes": final.stat().st_size}  # no sha256 yet: _write_manifest adds it
    return {"file": name, **download_file(shard_url(base_url, name), final, check_shard, retries, timeout,
                                          backoff)}


def check_shard(path: Path) -> None:
    try:
        open_shard(path)
    except ValueError as error:
        raise ValueError(f"not a parquet shard with a text column ({error.__cause__ or error})") from error


def _write_manifest(directory: Path, base_url: str, entries: list[dict], recorded: dict[str, dict]) -> None:
    """Record `entries` and the recorded shards still present outside them (from a larger earlier run).

    The workers hashed every shard they checked or downloaded; only one kept without a recorded sha256
    is hashed here.
    """
    shards = {name: entry for name, entry in recorded.items() if (directory / name).exists()}
    for entry in entries:
        if "sha256" not in entry:
            entry = {**entry, "sha256": file_sha256(directory / entry["file"])}
        shards[entry["file"]] = entry
    manifest = {"source": SOURCE, "base_url": base_url, "shards": [shards[name] for name in sorted(shards)]}
    atomic_write_text(directory / MANIFEST, json.dumps(manifest, indent=2))
