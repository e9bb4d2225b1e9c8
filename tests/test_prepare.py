"""`picochat data prepare` without the network: offline build, re-runs, repairs, source switches.

    python -m pytest tests/test_prepare.py
"""

from __future__ import annotations

import pytest

from picochat import cli
from picochat.data import prepare
from picochat.data.shards import MANIFEST, Document, corpus_dir, iter_texts, list_shards, read_manifest, write_corpus


# ---- `picochat data prepare` without the network -----------------------------------------------------

@pytest.fixture
def offline(monkeypatch, tmp_path, corpus_documents):
    """PICOCHAT_HOME in tmp, a fake offline builder that records its calls, and no network at all."""
    calls = []

    def fake_build(out_dir, cache_dir, max_bytes=None, log=print):
        calls.append({"out_dir": out_dir, "cache_dir": cache_dir, "max_bytes": max_bytes})
        return write_corpus(corpus_documents[:60], out_dir, shard_bytes=5000, description={"source": "offline"})

    def no_network(*args, **kwargs):
        raise AssertionError("the tests must not touch the network")

    monkeypatch.setenv("PICOCHAT_HOME", str(tmp_path))
    monkeypatch.setattr(prepare, "build_offline_corpus", fake_build)
    monkeypatch.setattr(prepare, "download_shards", no_network)
    monkeypatch.setattr(prepare, "network_reachable", no_network)
    return calls


def test_prepare_offline_writes_the_corpus(offline, tmp_path, capsys):
    cli.main(["data", "prepare", "--source", "offline"])
    directory = corpus_dir(tmp_path)
    manifest = read_manifest(directory)
    shards = list_shards(directory)
    assert len(offline) == 1
    assert offline[0]["out_dir"] == directory and offline[0]["max_bytes"] is None
    assert offline[0]["cache_dir"] == tmp_path / "data" / "packages"
    assert manifest["documents"] == 60 and len(shards) == len(manifest["shards"]) >= 3
    assert (f"data: offline corpus in {directory}: {len(shards)} shards, 60 documents, "
            f"{manifest['bytes']:,} bytes of text") in capsys.readouterr().out


@pytest.mark.parametrize("source", ["offline", "auto"])
def test_prepare_again_does_nothing(offline, tmp_path, capsys, source):
    cli.main(["data", "prepare", "--source", "offline"])
    before = {p: p.stat().st_mtime_ns for p in corpus_dir(tmp_path).iterdir()}
    capsys.readouterr()
    cli.main(["data", "prepare", "--source", source])
    out = capsys.readouterr().out
    assert "already" in out and "--force" in out
    assert len(offline) == 1
    assert {p: p.stat().st_mtime_ns for p in corpus_dir(tmp_path).iterdir()} == before


@pytest.mark.parametrize("force", [["--force", "true"], ["--force"]])
def test_prepare_force_rebuilds(offline, tmp_path, capsys, force):
    cli.main(["data", "prepare", "--source", "offline"])
    cli.main(["data", "prepare", "--source", "offline", *force, "--max-bytes", "5000"])
    assert len(offline) == 2 and offline[1]["max_bytes"] == 5000
    assert "already" not in capsys.readouterr().out
    assert read_manifest(corpus_dir(tmp_path))["documents"] == 60


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_prepare_repairs_a_damaged_corpus(offline, tmp_path, capsys, damage):
    cli.main(["data", "prepare", "--source", "offline"])
    directory = corpus_dir(tmp_path)
    victim = list_shards(directory)[1]
    if damage == "delete":
        victim.unlink()
    else:
        victim.write_bytes(victim.read_bytes()[:100])
    capsys.readouterr()
    cli.main(["data", "prepare"])  # auto: keeps the offline source and never probes the network
    out = capsys.readouterr().out
    assert f"1 shard(s) missing or damaged ({victim.name}); repairing the offline corpus" in out
    assert len(offline) == 2
    assert sum(1 for _ in iter_texts(list_shards(directory))) == 60


def test_prepare_other_source_clears_the_old_corpus_first(offline, tmp_path, monkeypatch):
    cli.main(["data", "prepare", "--source", "offline"])
    directory = corpus_dir(tmp_path)
    downloaded = [Document(f"Downloaded page {i}.", "fake", "CC0") for i in range(10)]
    seen = []

    def fake_download(indices, out_dir, base_url, workers=4):
        seen.append(sorted(p.name for p in out_dir.iterdir() if p.name.startswith("shard_") or p.name == MANIFEST))
        write_corpus(downloaded, out_dir, description={"source": "fineweb-edu"})

    monkeypatch.setattr(prepare, "download_shards", fake_download)
    cli.main(["data", "prepare", "--source", "fineweb", "--num-shards", "3"])
    assert seen == [[]]  # no offline shard was left to mix with the downloaded ones
    assert read_manifest(directory)["source"] == "fineweb-edu"
    assert sorted(iter_texts(list_shards(directory))) == sorted(d.text for d in downloaded)
    assert len(offline) == 1


def test_prepare_auto_falls_back_to_offline(offline, tmp_path, monkeypatch, capsys):
    probed = []
    monkeypatch.setattr(prepare, "network_reachable", lambda url: probed.append(url) or False)
    cli.main(["data", "prepare"])
    out = capsys.readouterr().out
    assert probed == [prepare.FINEWEB_URL]
    assert "unreachable" in out and "building the offline corpus instead" in out
    assert "data: offline corpus in" in out
    assert len(offline) == 1
    assert len(list_shards(corpus_dir(tmp_path))) >= 2
