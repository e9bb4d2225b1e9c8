"""data/hub.py: URLs, downloads that land in the home and are reused, tokens sent to the hub only, checksums
and errors, against the fake Hugging Face of fakes.py on 127.0.0.1, reached through $HF_ENDPOINT as a mirror
would be. The tasks it feeds have their own files (test_smoltalk.py, test_gsm8k.py, test_tasks.py).

Run alone with `python -m pytest tests/test_hub.py`.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fakes import GSM8K_TRAIN, gsm8k_file, parquet_bytes
from picochat.common import UserError
from picochat.data.download import FINEWEB_URL
from picochat.data.hub import download_dataset_file, hub_dir, hub_url
from picochat.data.fetch import on_hub_endpoint
from picochat.tasks import gsm8k

FAST = dict(retries=3, timeout=2.0, backoff=0.01)


def closed_port() -> int:
    with socket.socket() as probe:  # a port that was just free: connections to it are refused at once
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ----------------------------------------------------------------------------------------------------------
# hub.py: URLs, download, reuse, tokens, errors

def test_hub_url_and_fineweb_follow_hf_endpoint(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert hub_url("openai/gsm8k", "main/train.parquet") == \
        "https://huggingface.co/datasets/openai/gsm8k/resolve/main/main/train.parquet"
    assert on_hub_endpoint(FINEWEB_URL) == FINEWEB_URL
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example/")
    assert hub_url("a/b", "dir/my file.parquet", "refs/convert/parquet") == \
        "https://mirror.example/datasets/a/b/resolve/refs%2Fconvert%2Fparquet/dir/my%20file.parquet"
    assert on_hub_endpoint(FINEWEB_URL) == FINEWEB_URL.replace("https://huggingface.co", "https://mirror.example")
    assert on_hub_endpoint("https://huggingface.co.evil/x") == "https://huggingface.co.evil/x"


def test_download_lands_in_home_is_reused_and_refetched_when_changed(hub_server, tmp_path):
    data = parquet_bytes(pa.table({"question": ["q"], "answer": ["#### 1"]}))
    hub = hub_server({GSM8K_TRAIN: data})
    path = download_dataset_file(gsm8k.REPO, gsm8k.FILES["train"], hub_dir(tmp_path), **FAST)
    assert path == tmp_path / "data" / "hub" / "openai" / "gsm8k" / "main" / "train-00000-of-00001.parquet"
    assert path.read_bytes() == data and hub.gets(GSM8K_TRAIN) == 1
    assert path.with_name(path.name + ".sha256").read_text().split()[0] == hashlib.sha256(data).hexdigest()
    assert download_dataset_file(gsm8k.REPO, gsm8k.FILES["train"], hub_dir(tmp_path), **FAST) == path
    assert hub.gets(GSM8K_TRAIN) == 1
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one changed byte: only the sha256 sees it
    download_dataset_file(gsm8k.REPO, gsm8k.FILES["train"], hub_dir(tmp_path), **FAST)
    assert path.read_bytes() == data and hub.gets(GSM8K_TRAIN) == 2
    assert not list(path.parent.glob("*.part"))


def test_processes_asking_at_once_download_once(hub_server, tmp_path):
    hub = hub_server(gsm8k_file([{"question": "q", "answer": "#### 1"}]))
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(download_dataset_file(
        gsm8k.REPO, gsm8k.FILES["train"], hub_dir(tmp_path), **FAST))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(paths) == 4 and len(set(paths)) == 1 and hub.gets(GSM8K_TRAIN) == 1


def test_a_file_put_there_by_hand_is_used_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    final = hub_dir(tmp_path) / GSM8K_TRAIN
    final.parent.mkdir(parents=True)
    pq.write_table(pa.table({"question": ["q"], "answer": ["#### 1"]}), final)
    assert download_dataset_file(gsm8k.REPO, gsm8k.FILES["train"], hub_dir(tmp_path), **FAST) == final
    assert final.with_name(final.name + ".sha256").exists()


@pytest.mark.parametrize("redirect", ["", "cdn", "hub"])
def test_token_goes_to_the_hub_and_nowhere_else(hub_server, tmp_path, monkeypatch, redirect):
    hub = hub_server(gsm8k_file([{"question": "q", "answer": "#### 1"}]), redirect=redirect)
    download_dataset_file(gsm8k.REPO, gsm8k.FILES["train"], hub_dir(tmp_path / "a"), **FAST)
    assert [auth for _, _, auth in hub.requests] == [None] * (2 if redirect else 1)

    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    hub.requests.clear()
    download_dataset_file(gsm8k.REPO, gsm8k.FILES["train"], hub_dir(tmp_path / "b"), **FAST)
    hub_request, *redirected = hub.requests
    assert hub_request[0].startswith("/datasets/") and hub_request[2] == "Bearer hf_secret"
    expected = {"": [], "cdn": [("/cdn/", None)], "hub": [("/cdn/", "Bearer hf_secret")]}[redirect]
    assert [(path[:5], auth) for path, _, auth in redirected] == expected

    monkeypatch.delenv("HF_TOKEN")  # then the token `hf auth login` saved is used
    (tmp_path / "hf_home").mkdir()
    (tmp_path / "hf_home" / "token").write_text("hf_saved\n")
    hub.requests.clear()
    download_dataset_file(gsm8k.REPO, gsm8k.FILES["train"], hub_dir(tmp_path / "c"), **FAST)
    assert hub.requests[0][2] == "Bearer hf_saved"


def test_wrong_published_sha256_is_retried_then_refused(hub_server, tmp_path):
    hub = hub_server(gsm8k_file([{"question": "q", "answer": "#### 1"}]), wrong_sha256_first=1)
    path = download_dataset_file(gsm8k.REPO, gsm8k.FILES["train"], hub_dir(tmp_path / "a"), **FAST)
    assert hub.gets(GSM8K_TRAIN) == 2 and path.read_bytes() == hub.files[GSM8K_TRAIN]

    hub = hub_server(hub.files, wrong_sha256_first=99)
    with pytest.raises(UserError, match=r"after 3 attempts.*sha256 mismatch") as info:
        download_dataset_file(gsm8k.REPO, gsm8k.FILES["train"], hub_dir(tmp_path / "b"), **FAST)
    assert "\n" not in str(info.value) and hub.gets(GSM8K_TRAIN) == 3
    folder = (hub_dir(tmp_path / "b") / GSM8K_TRAIN).parent
    assert not [p for p in folder.iterdir() if not p.name.endswith(".lock")]


@pytest.mark.parametrize("status, message", [(401, "HF_TOKEN"), (404, "404")])
def test_refused_or_missing_file_fails_at_once(hub_server, tmp_path, monkeypatch, status, message):
    hub = hub_server(gsm8k_file([{"question": "q", "answer": "#### 1"}]), status=status)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    with pytest.raises(UserError, match=message) as info:
        download_dataset_file(gsm8k.REPO, gsm8k.FILES["train"], hub_dir(tmp_path), **FAST)
    assert len(hub.requests) == 1  # no retry can fix it
    assert "hf_secret" not in str(info.value) and "\n" not in str(info.value)


def test_unreachable_hub_is_one_line_saying_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"could not reach http://127\.0\.0\.1.*HF_ENDPOINT.*offline") as info:
        download_dataset_file(gsm8k.REPO, gsm8k.FILES["train"], hub_dir(tmp_path), **FAST)
    assert "\n" not in str(info.value) and time.perf_counter() - start < 5


@pytest.mark.parametrize("repo, path", [("openai", "x.parquet"), ("../x", "x.parquet"), ("a/b", "../../x"),
                                        ("a/b", "/etc/passwd"), ("a/b", "dir//x"), ("a/..", "x")])
def test_names_that_would_leave_the_hub_folder_are_refused(tmp_path, repo, path):
    with pytest.raises(UserError, match="owner/name"):
        download_dataset_file(repo, path, hub_dir(tmp_path))
    assert not (tmp_path / "data").exists()
