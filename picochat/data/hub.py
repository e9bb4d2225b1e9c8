"""Files of Hugging Face datasets (SmolTalk, MMLU, GSM8K), fetched once into $PICOCHAT_HOME/data/hub/.

The chat tasks read parquet files straight out of dataset repos, without the `datasets` library. A file
is served at <endpoint>/datasets/<repo>/resolve/<revision>/<path> and fetched by http.py (resumed,
retried, checked against the sha256 Hugging Face publishes, renamed into place), honouring $HF_ENDPOINT
and $HF_TOKEN. It lands at <home>/data/hub/<repo>/<path> beside a sha256sum-style <path>.sha256; a later
call hashes the file again and reuses it if it still matches.

    download_dataset_file("openai/gsm8k", "main/train-00000-of-00001.parquet", hub_dir(home))
"""

from __future__ import annotations

import re
import urllib.error
from pathlib import Path
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq

from picochat.common import UserError
from picochat.data.fetch import download_once, hub_endpoint

REPO = re.compile(r"[\w.-]+/[\w.-]+")  # owner/name, as Hugging Face spells repos


def hub_dir(home: str | Path) -> Path:
    return Path(home) / "data" / "hub"


def hub_url(repo: str, path: str, revision: str = "main") -> str:
    """Where Hugging Face (or the mirror in $HF_ENDPOINT) serves one file of a dataset repo."""
    # a revision like refs/convert/parquet is one URL segment, so its slashes are escaped too
    return f"{hub_endpoint()}/datasets/{repo}/resolve/{quote(revision, safe='')}/{quote(path)}"


def download_dataset_file(repo: str, path: str, directory: str | Path, revision: str = "main",
                          retries: int = 5, timeout: float = 30.0, backoff: float = 1.0) -> Path:
    """<directory>/<repo>/<path>: reused if it matches its recorded sha256, else downloaded (parquet only),
    once however many processes (torchrun ranks) ask at once."""
    check_names(repo, path)
    try:
        return download_once(hub_url(repo, path, revision), Path(directory) / repo / path, check_parquet,
                             retries, timeout, backoff)
    except UserError as error:
        cause = error.__cause__
        if isinstance(cause, urllib.error.URLError) and not isinstance(cause, urllib.error.HTTPError):
            raise UserError(f"could not reach {hub_endpoint()} for {repo}/{path} ({cause.reason}); set "
                            "HF_ENDPOINT to a Hugging Face mirror you can reach, or train on the offline "
                            "default conversations (ChitChat) instead") from error
        raise


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
# Checks

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
