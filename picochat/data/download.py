"""Download FineWeb-Edu parquet shards from Hugging Face: nanochat's real pretraining corpus.

The first step of the pipeline when there is network. Shards land in $PICOCHAT_HOME/data/base/ in the
format of shards.py, fetched in parallel, resumed after a dropped connection, retried with backoff, and
recorded with their sha256 in manifest.json. As with huggingface_hub, $HF_ENDPOINT (a mirror) replaces
https://huggingface.co, and $HF_TOKEN (else the token `hf auth login` saved) is sent to it, never elsewhere.

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
import http.client
import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from tqdm import tqdm

from picochat.common import UserError, atomic_write_text, durable_replace, picochat_home
from picochat.config import build, option
from picochat.data.shards import MANIFEST, corpus_dir, file_sha256, open_shard, read_manifest, shard_name

HF_ENDPOINT = "https://huggingface.co"
FINEWEB_URL = f"{HF_ENDPOINT}/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"
FINEWEB_SHARDS = 1823   # shard_00000 .. shard_01822, ~100 MB each (~170 GB in all)
SOURCE = "fineweb-edu"
USER_AGENT = "picochat-download/0.1"
CHUNK_BYTES = 1 << 20   # 1 MiB reads: few syscalls, little memory per worker

# What one failed attempt can raise: socket/HTTP errors (OSError, incl. URLError and timeouts),
# a malformed HTTP response (HTTPException is not an OSError), or a file that is not a shard (ValueError).
RETRYABLE = (OSError, http.client.HTTPException, ValueError)

# A client error that no retry fixes: no access (401, 403) or no such file (404).
PERMANENT_HTTP_ERRORS = (401, 403, 404)

# An etag that is a sha256: 64 hex digits, usually quoted, maybe marked weak (W/"...").
SHA256_ETAG = re.compile(r'(?:W/)?"?([0-9a-fA-F]{64})"?')


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


def url_reachable(url: str, timeout: float = 3.0) -> bool:
    """True if `url` answers a HEAD request with success within `timeout`."""
    url = on_hub_endpoint(url)
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT})
    _authorize(request)
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return True
    except (OSError, http.client.HTTPException):  # URLError, HTTPError and timeouts are all OSErrors
        return False


def hub_endpoint() -> str:
    """Where Hugging Face is: $HF_ENDPOINT (a mirror, read as huggingface_hub reads it) or huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or HF_ENDPOINT).rstrip("/")


def on_hub_endpoint(url: str) -> str:
    """A huggingface.co URL moved to $HF_ENDPOINT when that is set; any other URL as it is."""
    if url == HF_ENDPOINT or url.startswith(HF_ENDPOINT + "/"):
        return hub_endpoint() + url[len(HF_ENDPOINT):]
    return url


def hub_token() -> str | None:
    """$HF_TOKEN, else the token `hf auth login` saved in $HF_HOME/token (~/.cache/huggingface/token)."""
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    saved = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "token"
    if not saved.is_file():
        return None
    return saved.read_text().strip() or None


def _authorize(request: urllib.request.Request) -> None:
    """Send the hub token to the hub's own host, and never to a redirect elsewhere (urllib would forward
    ordinary headers to Hugging Face's CDN, which refuses a signed URL that also carries a token)."""
    token = hub_token()
    if token and urlsplit(request.full_url).netloc == urlsplit(hub_endpoint()).netloc:
        request.add_unredirected_header("Authorization", f"Bearer {token}")


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
    if _is_complete(final, entry):
        part.unlink(missing_ok=True)
        return entry or {"file": name, "bytes": final.stat().st_size}  # no sha256 yet: _write_manifest adds it
    return {"file": name, **download_file(shard_url(base_url, name), final, check_shard, retries, timeout,
                                          backoff)}


def download_file(url: str, final: Path, check: Callable[[Path], object], retries: int = 5,
                  timeout: float = 30.0, backoff: float = 1.0) -> dict:
    """Fetch url into final (resuming final + ".part"), retrying with exponential backoff; the bytes must
    match the sha256 the server published and pass `check` (which raises ValueError) before the rename.

    Returns {"bytes", "sha256"} plus "server_sha256" when the server published one. Raises UserError
    after `retries` failed attempts, or at once on 401, 403 or 404, chained to the last error.
    """
    part = final.with_name(f"{final.name}.part")
    last_error: BaseException | None = None
    for attempt in range(retries):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))  # 1, 2, 4, 8 s: let a busy server recover
        try:
            published = _fetch(url, part, timeout)
            sha256 = _check_sha256(part, published)
            _move_into_place(part, final, check)
            entry = {"bytes": final.stat().st_size, "sha256": sha256}
            if published:
                entry["server_sha256"] = published  # the same hash, recorded as vouched for by the server
            return entry
        except RETRYABLE as error:
            last_error = error
            if isinstance(error, urllib.error.HTTPError) and error.code in PERMANENT_HTTP_ERRORS:
                hint = " (set HF_TOKEN to a token allowed to read it)" if error.code in (401, 403) else ""
                raise UserError(f"could not download {final.name} from {url}: {error}{hint}") from error
    raise UserError(f"could not download {final.name} from {url} after {retries} attempts: "
                    f"{type(last_error).__name__}: {last_error}") from last_error


def _is_complete(path: Path, entry: dict | None) -> bool:
    """A shard on disk counts as done if it has the size and sha256 the manifest recorded.

    A shard the manifest has no sha256 for (none recorded yet) must at least open as parquet.
    """
    if not path.exists():
        return False
    if entry is not None and path.stat().st_size != entry["bytes"]:
        return False  # free to check, and catches a truncated file without reading it
    if entry is not None and "sha256" in entry:
        # Reads the whole file, so a changed byte anywhere shows. No parquet check needed: the hash was
        # recorded after the shard passed one.
        return file_sha256(path) == entry["sha256"]
    try:
        open_shard(path)  # reads only the footer, so checking 1,823 shards stays cheap
    except ValueError:
        return False
    return True


class _RedirectLog(urllib.request.HTTPRedirectHandler):
    """Follows redirects as urllib does, keeping each redirect's headers.

    Hugging Face answers a `resolve` URL with a redirect to its CDN and publishes the file's sha256 and
    size (X-Linked-Etag, X-Linked-Size) on that redirect, not on the CDN's answer.
    """

    def __init__(self):
        self.headers = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.headers.append(headers)
        redirected = super().redirect_request(req, fp, code, msg, headers, newurl)
        if redirected is not None:
            _authorize(redirected)  # again if it stays on the hub (a renamed repo); never to the CDN
        return redirected


def _fetch(url: str, part: Path, timeout: float) -> str | None:
    """One HTTP attempt: fill `part`, resuming from its current size with a Range request.

    Returns the sha256 the server published for the whole file, or None if it published none.
    """
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    _authorize(request)
    redirects = _RedirectLog()
    try:
        response = urllib.request.build_opener(redirects).open(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416:  # the partial file is already as long as the shard: start over cleanly
            part.unlink(missing_ok=True)
        raise
    with response:
        chain = [*redirects.headers, response.headers]  # every answer on the way, the bytes' last
        if response.status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != have:
                part.unlink(missing_ok=True)
                raise ConnectionError(f"asked for bytes from {have}, server sent from {start}")
            mode = "ab"
        else:  # 200: the server ignored Range and sent the whole file
            length = response.headers.get("Content-Length")
            total, mode = (int(length) if length else None), "wb"
        with open(part, mode) as file:
            shutil.copyfileobj(response, file, CHUNK_BYTES)
    _check_size(part, total if total is not None else _linked_size(chain))
    return _published_sha256(chain)


def _linked_size(chain: list) -> int | None:
    """The file's size as Hugging Face publishes it (X-Linked-Size), for a reply that gave no length."""
    sizes = [headers["X-Linked-Size"] for headers in chain if headers.get("X-Linked-Size")]
    return int(sizes[0]) if sizes else None


def _published_sha256(chain: list) -> str | None:
    """The file's sha256 as the server published it in an etag, or None.

    Hugging Face puts it in X-Linked-Etag (on its redirect to the CDN), or only in the ETag of the URL we
    asked for. Any other etag (an md5, a version label, the CDN's own hash) is not the file's sha256 and
    is ignored.
    """
    etags = [headers.get("X-Linked-Etag") for headers in chain] + [chain[0].get("ETag")]
    for etag in etags:
        match = SHA256_ETAG.fullmatch((etag or "").strip())
        if match:
            return match.group(1).lower()
    return None


def _parse_content_range(header: str | None) -> tuple[int, int | None]:
    """'bytes 100-199/200' -> (100, 200); the total is None when the server writes '*'."""
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (header or "").strip())
    if match is None:
        raise ConnectionError(f"206 response with a bad Content-Range header {header!r}")
    return int(match.group(1)), None if match.group(2) == "*" else int(match.group(2))


def _check_size(part: Path, total: int | None) -> None:
    # http.client returns a short body silently when the server hangs up early, so count the bytes.
    size = part.stat().st_size
    if total is None or size == total:
        return
    if size > total:
        part.unlink()  # more bytes than the file has: the partial file is garbage, not resumable
    raise ConnectionError(f"transfer ended early: got {size} of {total} bytes")


def _check_sha256(part: Path, published: str | None) -> str:
    """The sha256 of the downloaded `part`, which must match the one the server published, if any."""
    sha256 = file_sha256(part)
    if published is not None and sha256 != published:
        part.unlink()  # complete but wrong bytes: resuming would keep them, so refetch from scratch
        raise ValueError(f"sha256 mismatch: the server published {published}, the download has {sha256}")
    return sha256


def _move_into_place(part: Path, final: Path, check: Callable[[Path], object]) -> None:
    """Check the bytes, then fsync and rename, so `final` is never half a file."""
    try:
        check(part)
    except ValueError:
        part.unlink()  # complete but wrong bytes: resuming would keep them, so refetch from scratch
        raise
    durable_replace(part, final)


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
