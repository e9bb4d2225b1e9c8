"""Files of Hugging Face datasets (SmolTalk, MMLU, GSM8K), fetched once into $PICOCHAT_HOME/data/hub/.

The chat tasks read parquet files straight out of dataset repos, without the `datasets` library. A file
is served at <endpoint>/datasets/<repo>/resolve/<revision>/<path> and fetched by download.py's machinery
(resumed, retried, checked against the sha256 Hugging Face publishes, renamed into place), honouring
$HF_ENDPOINT and $HF_TOKEN. It lands at <home>/data/hub/<repo>/<path> beside a sha256sum-style
<path>.sha256; a later call hashes the file again and reuses it if it still matches.

    download_dataset_file("openai/gsm8k", "main/train-00000-of-00001.parquet", hub_dir(home))
"""

from __future__ import annotations

import fcntl
import re
import urllib.error
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq

from picochat.common import UserError, atomic_write_text
from picochat.data.download import download_file, hub_endpoint
from picochat.data.shards import file_sha256

REPO = re.compile(r"[\w.-]+/[\w.-]+")  # owner/name, as Hugging Face spells repos


def hub_dir(home: str | Path) -> Path:
    return Path(home) / "data" / "hub"


def hub_url(repo: str, path: str, revision: str = "main") -> str:
    """Where Hugging Face (or the mirror in $HF_ENDPOINT) serves one file of a dataset repo."""
    # a revision like refs/convert/parquet is one URL segment, so its slashes are escaped too
    return f"{hub_endpoint()}/datasets/{repo}/resolve/{quote(revision, safe='')}/{quote(path)}"


def download_dataset_file(repo: str, path: str, directory: str | Path, revision: str = "main",
                          retries: int = 5, timeout: float = 30.0, backoff: float = 1.0) -> Path:
    """<directory>/<repo>/<path>: reused if it matches its recorded sha256, else downloaded (parquet only).

    A lock makes processes that ask at once (torchrun ranks) download it once; the others wait, then reuse it.
    """
    check_names(repo, path)
    final = Path(directory) / repo / path
    final.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(final.with_name(f"{final.name}.lock")):
        if is_downloaded(final):
            return final
        url = hub_url(repo, path, revision)
        try:
            entry = download_file(url, final, check_parquet, retries, timeout, backoff)
        except UserError as error:
            cause = error.__cause__
            if isinstance(cause, urllib.error.URLError) and not isinstance(cause, urllib.error.HTTPError):
                raise UserError(f"could not reach {hub_endpoint()} for {repo}/{path} ({cause.reason}); set "
                                "HF_ENDPOINT to a Hugging Face mirror you can reach, or train on the offline "
                                "default conversations (ChitChat) instead") from error
            raise
        write_checksum(final, entry["sha256"])
    return final


def read_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    """A downloaded parquet file, only `columns` if given; a damaged file is one clear line."""
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise UserError(f"{path} is not a readable parquet file ({error}); delete it and run again") from error
    return table if columns is None else select_columns(table, columns, path)


def select_columns(table: pa.Table, columns: list[str], path: Path) -> pa.Table:
    missing = [column for column in columns if column not in table.column_names]
    if missing:
        raise UserError(f"{path} has no column {missing[0]!r} (it has {', '.join(table.column_names)}); "
                        "is it the right dataset file?")
    return table.select(columns)


# ----------------------------------------------------------------------------------------------------------
# Checks, records and the lock

def check_names(repo: str, path: str) -> None:
    """Both become folders under the home, so neither may climb out of it."""
    parts = f"{repo}/{path}".split("/")
    if not REPO.fullmatch(repo) or path.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise UserError(f"expected a dataset repo like owner/name and a relative path inside it, "
                        f"got {repo!r} and {path!r}")


def check_parquet(path: Path) -> None:
    try:
        pq.read_metadata(path)  # the footer: enough to tell a parquet file from an error page
    except (pa.ArrowException, OSError) as error:
        raise ValueError(f"not a parquet file ({error})") from error


def checksum_path(final: Path) -> Path:
    return final.with_name(f"{final.name}.sha256")


def write_checksum(final: Path, sha256: str) -> None:
    atomic_write_text(checksum_path(final), f"{sha256}  {final.name}\n")  # `sha256sum -c` reads it


def is_downloaded(final: Path) -> bool:
    """final matches its recorded sha256. A file put there by hand (no record yet) must open as parquet,
    and is then recorded, so a machine without network can be given the files another one fetched."""
    if not final.exists():
        return False
    recorded = checksum_path(final)
    if recorded.exists():
        return recorded.read_text().split()[:1] == [file_sha256(final)]
    try:
        check_parquet(final)
    except ValueError:
        return False
    write_checksum(final, file_sha256(final))
    return True


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, even if the process dies
        yield
