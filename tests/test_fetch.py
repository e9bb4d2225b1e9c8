"""data/fetch.py's "is it already here?" side, which FineWeb (manifest) and the hub datasets (sidecar) share.

The transfers themselves (retries, Range resume, published sha256) are tested against fake servers in
test_download.py and test_hub.py. Run alone with `python -m pytest tests/test_fetch.py`.
"""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest

from picochat.data.fetch import checksum_path, download_once, is_complete, is_downloaded

DATA = b"GOOD bytes of a file\n"
SHA256 = hashlib.sha256(DATA).hexdigest()


def starts_good(path: Path) -> None:
    """A stand-in for a format check (is it parquet?): the client takes any."""
    if not path.read_bytes().startswith(b"GOOD"):
        raise ValueError("not a good file")


@pytest.mark.parametrize("size, sha256, content, expected", [
    (None, None, DATA, True),                 # nothing recorded: the check decides
    (None, None, b"bad", False),
    (len(DATA), SHA256, DATA, True),
    (len(DATA) + 1, SHA256, DATA, False),     # the size alone rules it out
    (None, "0" * 64, DATA, False),            # passes the check, but not the recorded hash
    (len(b"GOOD change"), hashlib.sha256(b"GOOD other!").hexdigest(), b"GOOD change", False),
])
def test_is_complete(tmp_path, size, sha256, content, expected):
    path = tmp_path / "file"
    assert not is_complete(path, starts_good, size, sha256)
    path.write_bytes(content)
    assert is_complete(path, starts_good, size, sha256) == expected


def test_is_downloaded_records_a_file_put_there_by_hand_and_then_trusts_only_the_record(tmp_path):
    final = tmp_path / "file"
    final.write_bytes(DATA)
    assert is_downloaded(final, starts_good)
    assert checksum_path(final).read_text() == f"{SHA256}  file\n"  # as `sha256sum` writes it
    final.write_bytes(b"GOOD but changed\n")  # passes the check, but no longer matches the record
    assert not is_downloaded(final, starts_good)
    checksum_path(final).write_text("")       # an empty record matches nothing
    final.write_bytes(DATA)
    assert not is_downloaded(final, starts_good)


def test_download_once_reuses_a_recorded_file_without_network(tmp_path):
    with socket.socket() as probe:  # a port that was just free: nothing answers there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    final = tmp_path / "dir" / "file"
    final.parent.mkdir()
    final.write_bytes(DATA)
    checksum_path(final).write_text(f"{SHA256}  file\n")
    assert download_once(f"http://127.0.0.1:{port}/file", final, starts_good, retries=1, timeout=1.0) == final
    assert final.read_bytes() == DATA
