"""Resumable HTTP downloads: the one client behind the FineWeb shards and the Hugging Face dataset files.

One file is fetched like this:
1. download_once: take a lock, and reuse the file if it still matches the sha256 recorded beside it;
2. download_file: try up to `retries` times, waiting 1, 2, 4, 8 s between tries;
3. _fetch: one try, resuming <file>.part with a Range request, following Hugging Face's redirect;
4. checks: the byte count, the sha256 the server published, and the caller's own check (is it parquet?);
5. an fsync and a rename, so the file is never half there.

As with huggingface_hub, $HF_ENDPOINT (a mirror) replaces https://huggingface.co, and $HF_TOKEN (else the
token `hf auth login` saved) is sent to it, never elsewhere.
"""

from __future__ import annotations

import fcntl
import http.client
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit

from picochat.common import UserError, atomic_write_text, durable_replace
from picochat.data.shards import file_sha256

HF_ENDPOINT = "https://huggingface.co"
USER_AGENT = "picochat-download/0.1"
CHUNK_BYTES = 1 << 20   # 1 MiB reads: few syscalls, little memory per worker

# What one failed attempt can raise: socket/HTTP errors (OSError, incl. URLError and timeouts),
# a malformed HTTP response (HTTPException is not an OSError), or a file that fails a check (ValueError).
RETRYABLE = (OSError, http.client.HTTPException, ValueError)

# A client error that no retry fixes: no access (401, 403) or no such file (404).
PERMANENT_HTTP_ERRORS = (401, 403, 404)

# An etag that is a sha256: 64 hex digits, usually quoted, maybe marked weak (W/"...").
SHA256_ETAG = re.compile(r'(?:W/)?"?([0-9a-fA-F]{64})"?')

Check = Callable[[Path], object]  # raises ValueError if the bytes are not the kind of file expected


# ----------------------------------------------------------------------------------------------------------
# Fetch once, retry, resume

def download_once(url: str, final: Path, check: Check, retries: int = 5, timeout: float = 30.0,
                  backoff: float = 1.0) -> Path:
    """final, downloaded from url unless it still matches the sha256 recorded beside it.

    A lock makes processes that ask at once (torchrun ranks) download it once; the others wait, then reuse it.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(final.with_name(f"{final.name}.lock")):
        if not is_downloaded(final, check):
            entry = download_file(url, final, check, retries, timeout, backoff)
            write_checksum(final, entry["sha256"])
    return final


def download_file(url: str, final: Path, check: Check, retries: int = 5, timeout: float = 30.0,
                  backoff: float = 1.0) -> dict:
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
        if error.code == 416:  # the partial file is already as long as the file: start over cleanly
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


def _parse_content_range(header: str | None) -> tuple[int, int | None]:
    """'bytes 100-199/200' -> (100, 200); the total is None when the server writes '*'."""
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (header or "").strip())
    if match is None:
        raise ConnectionError(f"206 response with a bad Content-Range header {header!r}")
    return int(match.group(1)), None if match.group(2) == "*" else int(match.group(2))


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


# ----------------------------------------------------------------------------------------------------------
# Checks after a transfer

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


def _move_into_place(part: Path, final: Path, check: Check) -> None:
    """Check the bytes, then fsync and rename, so `final` is never half a file."""
    try:
        check(part)
    except ValueError:
        part.unlink()  # complete but wrong bytes: resuming would keep them, so refetch from scratch
        raise
    durable_replace(part, final)


# ----------------------------------------------------------------------------------------------------------
# Is it already here? Records and the lock

def is_complete(path: Path, check: Check, size: int | None = None, sha256: str | None = None) -> bool:
    """path holds the whole file: the recorded size and sha256 where known, else it must at least pass check."""
    if not path.exists():
        return False
    if size is not None and path.stat().st_size != size:
        return False  # free to check, and catches a truncated file without reading it
    if sha256 is not None:
        # Reads the whole file, so a changed byte anywhere shows. No `check` needed: the hash was
        # recorded after the file passed one.
        return file_sha256(path) == sha256
    try:
        check(path)
    except ValueError:
        return False
    return True


def checksum_path(final: Path) -> Path:
    return final.with_name(f"{final.name}.sha256")


def write_checksum(final: Path, sha256: str) -> None:
    atomic_write_text(checksum_path(final), f"{sha256}  {final.name}\n")  # `sha256sum -c` reads it


def is_downloaded(final: Path, check: Check) -> bool:
    """final matches the sha256 recorded beside it. A file put there by hand (no record yet) must pass
    check, and is then recorded, so a machine without network can be given the files another one fetched."""
    record = checksum_path(final)
    recorded = (record.read_text().split() or [""])[0] if record.exists() else None
    if not is_complete(final, check, sha256=recorded):
        return False
    if recorded is None:
        write_checksum(final, file_sha256(final))
    return True


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, even if the process dies
        yield


# ----------------------------------------------------------------------------------------------------------
# Where Hugging Face is, and who we are there

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
