"""download.py against a real HTTP server on 127.0.0.1 that can fail, stall, truncate, ignore Range,
redirect like Hugging Face, and publish right, wrong or meaningless checksums.

Run alone with `python -m pytest tests/test_download.py`.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from picochat.common import UserError
from picochat import cli
from picochat.data.download import DownloadConfig, download_shards, network_reachable, run
from picochat.data.shards import MANIFEST, open_shard, read_manifest, shard_name

FAST = dict(retries=4, timeout=2.0, backoff=0.01)
PREFIX = "/datasets/x/resolve/main/"
CDN = "/cdn/"   # where a redirecting server sends the client for the bytes
OTHER_SHA256 = hashlib.sha256(b"other bytes").hexdigest()


@dataclass
class Behaviour:
    """What the fake server does; each `first_*` applies to the first N GETs of each file."""
    fail_first: int = 0
    fail_mode: str = "500"          # "500", "drop" (close without a response) or "stall" (say nothing for 0.5 s)
    truncate_first: int = 0         # send the right Content-Length but only half the body
    ignore_range: bool = False      # always answer 200 with the whole file
    corrupt: bool = False           # serve bytes that are not parquet
    # Checksums and sizes published the way Hugging Face does; "{sha256}" stands for the file's sha256.
    linked_etag: str = ""           # X-Linked-Etag header to send, e.g. '"{sha256}"'
    etag: str = ""                  # ETag header to send, e.g. 'W/"{sha256}"' or an md5
    wrong_sha256_first: int = 0     # publish OTHER_SHA256 instead of the file's for the first N GETs
    linked_size: bool = False       # send X-Linked-Size: the whole file's size
    no_length: bool = False         # send no Content-Length: the body ends when the connection closes
    redirect: bool = False          # 302 to CDN + name with the headers above; the CDN sends its own ETag


@dataclass
class FakeHub:
    files: dict[str, bytes]
    behaviour: Behaviour
    url: str = ""
    gets: list[tuple[str, str | None]] = field(default_factory=list)   # (file, Range header) per GET
    lock: threading.Lock = field(default_factory=threading.Lock)

    def log_get(self, name: str, range_header: str | None) -> int:
        """Record a GET; returns how many GETs of this file came before it."""
        with self.lock:
            earlier = self.served(name)
            self.gets.append((name, range_header))
            return earlier

    def served(self, name: str) -> int:
        """GETs of this file so far (a redirect counts with the GET it leads to, not on its own)."""
        return sum(1 for seen, _ in self.gets if seen == name)

    def published(self, name: str, earlier: int) -> list[tuple[str, str]]:
        """The checksum and size headers that `behaviour` asks for, for the GET after `earlier` ones."""
        behaviour, data = self.behaviour, self.files[name]
        sha256 = OTHER_SHA256 if earlier < behaviour.wrong_sha256_first else hashlib.sha256(data).hexdigest()
        headers = [(header, value.format(sha256=sha256))
                   for header, value in [("X-Linked-Etag", behaviour.linked_etag), ("ETag", behaviour.etag)]
                   if value]
        if behaviour.linked_size:
            headers.append(("X-Linked-Size", str(len(data))))
        return headers

    def ranges(self) -> list[str]:
        return [header for _, header in self.gets if header]


class Handler(BaseHTTPRequestHandler):
    hub: FakeHub  # set on a per-server subclass

    def log_message(self, *args):
        pass  # keep pytest output clean

    def do_HEAD(self):
        name = self.path.removeprefix(PREFIX)
        self.send_response(200 if name in self.hub.files else 404)
        self.send_header("Content-Length", str(len(self.hub.files.get(name, b""))))
        self.end_headers()

    def do_GET(self):
        name = self.path.removeprefix(PREFIX).removeprefix(CDN)
        if name not in self.hub.files:
            self.send_error(404)
            return
        behaviour = self.hub.behaviour
        if behaviour.redirect and self.path.startswith(PREFIX):
            self._redirect(name)
            return
        earlier = self.hub.log_get(name, self.headers.get("Range"))
        if earlier < behaviour.fail_first:
            self._fail(behaviour.fail_mode)
            return
        data = b"this is not parquet\n" * 50 if behaviour.corrupt else self.hub.files[name]
        if behaviour.redirect:  # a storage backend's own 64-hex content hash: not the file's sha256
            headers = [("ETag", f'"{hashlib.sha256(b"chunk index").hexdigest()}"')]
        else:
            headers = self.hub.published(name, earlier)
        self._send(data, truncate=earlier < behaviour.fail_first + behaviour.truncate_first, headers=headers)

    def _redirect(self, name: str) -> None:
        """Like Hugging Face's `resolve`: a 302 to the CDN carrying the file's sha256 and size."""
        self.send_response(302)
        self.send_header("Location", CDN + name)
        for header, value in self.hub.published(name, self.hub.served(name)):
            self.send_header(header, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _fail(self, mode: str) -> None:
        if mode == "drop":
            return  # no status line at all: the client sees the connection close
        if mode == "stall":
            time.sleep(0.5)  # longer than the client's timeout in that test, which has hung up by now
            return
        self.send_error(500)

    def _send(self, data: bytes, truncate: bool, headers: list[tuple[str, str]]) -> None:
        start = 0
        range_header = self.headers.get("Range")
        if range_header and not self.hub.behaviour.ignore_range:
            start = int(range_header.removeprefix("bytes=").rstrip("-"))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        for header, value in headers:
            self.send_header(header, value)
        if not self.hub.behaviour.no_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # HTTP/1.0: the connection closes when the handler returns, so a short write is a truncation
        self.wfile.write(body[: len(body) // 2] if truncate else body)


def make_shard(path: Path, index: int, rows: int = 200) -> bytes:
    texts = [f"shard {index} document {row}: " + "educational text " * (row % 7 + 1) for row in range(rows)]
    pq.write_table(pa.table({"text": texts}), path)
    return path.read_bytes()


@pytest.fixture
def serve(tmp_path):
    """serve(n_shards, Behaviour) -> a running FakeHub; every server is shut down after the test."""
    servers = []

    def start(n_shards: int = 3, behaviour: Behaviour | None = None) -> FakeHub:
        source = tmp_path / f"source{len(servers)}"
        source.mkdir()
        files = {shard_name(i): make_shard(source / shard_name(i), i) for i in range(n_shards)}
        hub = FakeHub(files, behaviour or Behaviour())
        server = ThreadingHTTPServer(("127.0.0.1", 0), type("BoundHandler", (Handler,), {"hub": hub}))
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        hub.url = f"http://127.0.0.1:{server.server_address[1]}{PREFIX.rstrip('/')}"
        return hub

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def assert_downloaded(hub: FakeHub, directory: Path, paths: list[Path]) -> None:
    assert [p.name for p in paths] == sorted(hub.files)
    for path in paths:
        assert path.read_bytes() == hub.files[path.name]
    assert not list(directory.glob("*.part")) and not list(directory.glob(".*.tmp"))


def sha256_of(hub: FakeHub, name: str) -> str:
    return hashlib.sha256(hub.files[name]).hexdigest()


def flip_a_data_byte(path: Path) -> None:
    """Change one byte in the middle of the first column chunk's pages: same size, same footer."""
    column = pq.ParquetFile(path).metadata.row_group(0).column(0)
    start = column.dictionary_page_offset or column.data_page_offset
    offset = start + column.total_compressed_size // 2
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_parallel_download_matches_source_and_manifest(serve, tmp_path):
    hub = serve(5)
    out = tmp_path / "out"
    paths = download_shards(range(5), out, hub.url, workers=3, **FAST)
    assert_downloaded(hub, out, paths)
    manifest = read_manifest(out)
    assert manifest["source"] == "fineweb-edu" and manifest["base_url"] == hub.url
    assert manifest["shards"] == [{"file": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                                  for name, data in sorted(hub.files.items())]
    assert len(hub.gets) == 5 and not hub.ranges()


@pytest.mark.parametrize("mode", ["500", "drop", "stall"])
def test_retries_after_server_errors(serve, tmp_path, mode):
    hub = serve(2, Behaviour(fail_first=2, fail_mode=mode))
    out = tmp_path / "out"
    timeout = 0.2 if mode == "stall" else 2.0
    paths = download_shards(range(2), out, hub.url, workers=2, retries=3, timeout=timeout, backoff=0.01)
    assert_downloaded(hub, out, paths)
    assert len(hub.gets) == 6  # two failures then one success, per file


def test_truncated_transfer_resumes_with_range(serve, tmp_path):
    hub = serve(2, Behaviour(truncate_first=1))
    out = tmp_path / "out"
    paths = download_shards(range(2), out, hub.url, workers=2, **FAST)
    assert_downloaded(hub, out, paths)
    for name, data in hub.files.items():
        sent = len(data) // 2
        assert (name, f"bytes={sent}-") in hub.gets  # resumed exactly where the first transfer stopped
    assert len(hub.gets) == 4


def test_server_ignoring_range_restarts_from_scratch(serve, tmp_path):
    hub = serve(2, Behaviour(truncate_first=1, ignore_range=True))
    out = tmp_path / "out"
    paths = download_shards(range(2), out, hub.url, workers=1, **FAST)
    assert_downloaded(hub, out, paths)
    # the 200 reply to the Range request replaced the half file at once instead of being appended to it
    assert len(hub.gets) == 4 and len(hub.ranges()) == 2


@pytest.mark.parametrize("fraction", [0.5, 1.0])
def test_partial_file_from_an_interrupted_run(serve, tmp_path, fraction):
    hub = serve(1)
    out = tmp_path / "out"
    out.mkdir()
    data = hub.files[shard_name(0)]
    (out / f"{shard_name(0)}.part").write_bytes(data[: int(len(data) * fraction)])
    paths = download_shards([0], out, hub.url, **FAST)
    assert_downloaded(hub, out, paths)
    if fraction < 1:
        assert hub.gets == [(shard_name(0), f"bytes={len(data) // 2}-")]
    else:  # 416 Range Not Satisfiable: the client drops its partial file and fetches the whole shard
        assert hub.gets == [(shard_name(0), f"bytes={len(data)}-"), (shard_name(0), None)]


def test_corrupt_file_fails_with_clear_error(serve, tmp_path):
    hub = serve(1, Behaviour(corrupt=True))
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"shard_00000\.parquet.*after 3 attempts.*not a parquet") as info:
        download_shards([0], out, hub.url, retries=3, timeout=2.0, backoff=0.01)
    assert "\n" not in str(info.value)
    assert not (out / shard_name(0)).exists() and not list(out.glob("*.part"))
    assert not hub.ranges()  # each retry started over instead of appending to the bad bytes


def test_rerun_skips_valid_shards_and_replaces_broken_ones(serve, tmp_path):
    hub = serve(3)
    out = tmp_path / "out"
    download_shards(range(3), out, hub.url, workers=2, **FAST)
    requests = len(hub.gets)
    paths = download_shards(range(3), out, hub.url, workers=2, **FAST)
    assert len(hub.gets) == requests
    assert_downloaded(hub, out, paths)

    (out / shard_name(1)).write_bytes(b"garbage")
    paths = download_shards(range(3), out, hub.url, workers=2, **FAST)
    assert hub.gets[requests:] == [(shard_name(1), None)]
    assert_downloaded(hub, out, paths)
    recorded = {entry["file"]: entry["sha256"] for entry in read_manifest(out)["shards"]}
    assert recorded[shard_name(1)] == hashlib.sha256(hub.files[shard_name(1)]).hexdigest()


def test_rerun_refetches_a_shard_with_a_changed_byte(serve, tmp_path):
    hub = serve(3)
    out = tmp_path / "out"
    download_shards(range(3), out, hub.url, workers=2, **FAST)
    requests = len(hub.gets)
    damaged = out / shard_name(1)
    flip_a_data_byte(damaged)
    # the damage that only the sha256 sees: same size, and the footer still opens as a shard
    assert damaged.stat().st_size == len(hub.files[damaged.name]) and damaged.read_bytes() != hub.files[damaged.name]
    open_shard(damaged)
    paths = download_shards(range(3), out, hub.url, workers=2, **FAST)
    assert hub.gets[requests:] == [(shard_name(1), None)]  # the other two were hashed and kept
    assert_downloaded(hub, out, paths)


def test_rerun_with_a_manifest_without_sha256_checks_parquet_and_adds_it(serve, tmp_path):
    hub = serve(2)
    out = tmp_path / "out"
    download_shards(range(2), out, hub.url, **FAST)
    manifest = read_manifest(out)
    for entry in manifest["shards"]:
        del entry["sha256"]  # as an older picochat might have written it
    (out / MANIFEST).write_text(json.dumps(manifest))
    (out / shard_name(1)).write_bytes(b"garbage")
    requests = len(hub.gets)
    paths = download_shards(range(2), out, hub.url, **FAST)
    assert hub.gets[requests:] == [(shard_name(1), None)]  # shard 0 opened as parquet and was kept
    assert_downloaded(hub, out, paths)
    assert {entry["file"]: entry["sha256"] for entry in read_manifest(out)["shards"]} == {
        name: sha256_of(hub, name) for name in hub.files}


@pytest.mark.parametrize("behaviour", [
    Behaviour(linked_etag='"{sha256}"'),
    Behaviour(etag='W/"{sha256}"'),                       # only the ETag carries it, marked weak
    Behaviour(linked_etag='"{sha256}"', etag=f'"{OTHER_SHA256}"'),  # X-Linked-Etag wins over ETag
    Behaviour(linked_etag='"{sha256}"', linked_size=True, redirect=True),  # on Hugging Face's 302
], ids=["x-linked-etag", "weak-etag", "x-linked-etag-first", "redirect"])
def test_published_sha256_is_checked_and_recorded(serve, tmp_path, behaviour):
    hub = serve(2, behaviour)
    out = tmp_path / "out"
    paths = download_shards(range(2), out, hub.url, workers=2, **FAST)
    assert_downloaded(hub, out, paths)
    assert len(hub.gets) == 2
    for entry in read_manifest(out)["shards"]:
        assert entry["sha256"] == entry["server_sha256"] == sha256_of(hub, entry["file"])


@pytest.mark.parametrize("redirect", [False, True])
def test_wrong_published_sha256_is_retried_from_scratch(serve, tmp_path, redirect):
    hub = serve(2, Behaviour(linked_etag='"{sha256}"', wrong_sha256_first=2, redirect=redirect))
    out = tmp_path / "out"
    paths = download_shards(range(2), out, hub.url, workers=2, retries=3, timeout=2.0, backoff=0.01)
    assert_downloaded(hub, out, paths)
    assert len(hub.gets) == 6 and not hub.ranges()  # two mismatches then a match, per file; no resuming


def test_always_wrong_sha256_fails_naming_both_hashes(serve, tmp_path):
    hub = serve(1, Behaviour(linked_etag='"{sha256}"', wrong_sha256_first=99))
    out = tmp_path / "out"
    right = sha256_of(hub, shard_name(0))
    with pytest.raises(UserError, match=rf"shard_00000\.parquet.*after 3 attempts.*sha256 mismatch.*"
                                        rf"{OTHER_SHA256}.*{right}"):
        download_shards([0], out, hub.url, retries=3, timeout=2.0, backoff=0.01)
    assert len(hub.gets) == 3
    assert not (out / shard_name(0)).exists() and not list(out.glob("*.part"))


@pytest.mark.parametrize("behaviour", [
    Behaviour(etag='"d41d8cd98f00b204e9800998ecf8427e"'),  # an md5, as S3 sends
    Behaviour(linked_etag='W/"v1-a3f"'),                   # an opaque version label
    Behaviour(linked_etag=f'"{OTHER_SHA256}0"'),           # 65 hex digits: a sha256 has exactly 64
    Behaviour(linked_etag=f'"{OTHER_SHA256[:-1]}g"'),      # 64 characters, not all hex
    Behaviour(redirect=True),                              # the CDN's own 64-hex ETag, after a bare 302
], ids=["md5", "label", "65-hex", "not-hex", "cdn-etag"])
def test_etag_that_is_not_a_sha256_is_ignored(serve, tmp_path, behaviour):
    hub = serve(1, behaviour)
    out = tmp_path / "out"
    paths = download_shards([0], out, hub.url, retries=1, timeout=2.0, backoff=0.01)  # a mismatch would fail
    assert_downloaded(hub, out, paths)
    assert "server_sha256" not in read_manifest(out)["shards"][0]


@pytest.mark.parametrize("linked_size", [True, False])
def test_linked_size_detects_a_short_body_without_content_length(serve, tmp_path, linked_size):
    hub = serve(1, Behaviour(truncate_first=1, no_length=True, linked_size=linked_size))
    out = tmp_path / "out"
    paths = download_shards([0], out, hub.url, **FAST)
    assert_downloaded(hub, out, paths)
    half = len(hub.files[shard_name(0)]) // 2
    if linked_size:  # counted short against X-Linked-Size: resumed where the body stopped
        assert hub.gets == [(shard_name(0), None), (shard_name(0), f"bytes={half}-")]
    else:  # no size at all: only the parquet check catches the half file, and it starts over
        assert hub.gets == [(shard_name(0), None), (shard_name(0), None)]


@pytest.mark.parametrize("damage", [lambda path: path.write_bytes(b"garbage"), flip_a_data_byte],
                         ids=["garbage", "flipped-byte"])
def test_prepare_repairs_a_damaged_fineweb_corpus_shard_by_shard(serve, tmp_path, capsys, damage):
    hub = serve(3)
    flags = ["data", "prepare", "--source", "fineweb", "--num-shards", "3", "--base-url", hub.url,
             "--home", str(tmp_path)]
    cli.main(flags)
    directory = tmp_path / "data" / "base"
    requests = len(hub.gets)
    damage(directory / shard_name(2))
    cli.main(flags[:4] + flags[6:])  # default --num-shards (8): the repair keeps the corpus's own 3
    assert "repairing the fineweb corpus" in capsys.readouterr().out
    assert hub.gets[requests:] == [(shard_name(2), None)]
    assert_downloaded(hub, directory, sorted(directory.glob("shard_*.parquet")))


def test_refuses_a_folder_holding_another_corpus(serve, tmp_path):
    hub = serve(1)
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST).write_text(json.dumps({"source": "offline", "shards": []}))
    with pytest.raises(ValueError, match="offline.*--output"):
        download_shards([0], out, hub.url, **FAST)
    assert hub.gets == []


def test_network_reachable(serve):
    hub = serve(1)
    assert network_reachable(hub.url, timeout=2.0)
    with socket.socket() as probe:  # a port that was just free: connections to it are refused at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.perf_counter()
    assert not network_reachable(f"http://127.0.0.1:{port}/x", timeout=1.0)
    assert not network_reachable(hub.url + "/missing", timeout=1.0)  # 404 counts as unreachable
    assert time.perf_counter() - start < 2.0


def test_run_from_cli_flags(serve, tmp_path, capsys):
    hub = serve(2)
    out = tmp_path / "out"
    paths = run({"num_shards": 2, "workers": 2, "base_url": hub.url, "retries": 2, "output": str(out)})
    assert_downloaded(hub, out, paths)
    assert "2 FineWeb-Edu shards" in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [
    ({"workers": 0}, "--workers must be >= 1, got 0"),
    ({"num_shards": 0}, "--num-shards must be -1"),
    ({"num_shards": 5000}, "--num-shards must be -1"),
    ({"retries": 0}, "--retries"),
    ({"timeout": 0.0}, "--timeout"),
    ({"base_url": "ftp://example.com"}, "--base-url"),
])
def test_config_validation(flags, message):
    with pytest.raises(ValueError, match=message):
        DownloadConfig(**flags)


def test_cli_reports_bad_flag_in_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["data", "download", "--workers", "0"])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == "picochat: error: --workers must be >= 1, got 0"


def test_all_shards_flag_is_accepted():
    assert DownloadConfig(num_shards=-1).num_shards == -1
