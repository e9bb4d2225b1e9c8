"""Shared plumbing: atomic files.

    python -m pytest tests/test_common.py
"""

from __future__ import annotations

import stat

import pytest

from picochat.common import atomic_path, atomic_write_text


# ---- atomic files ------------------------------------------------------------------------------------

def test_atomic_path_failure_leaves_nothing(tmp_path):
    final = tmp_path / "sub" / "artifact.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            assert tmp.parent == final.parent and tmp.name.startswith(".artifact.bin.")
            tmp.write_bytes(b"half of it")
            raise RuntimeError("crash mid-write")
    assert not final.exists()
    assert list(final.parent.iterdir()) == []


def test_atomic_path_failure_keeps_the_old_file(tmp_path):
    final = tmp_path / "artifact.txt"
    final.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(final) as tmp:
            tmp.write_text("new but unfinished")
            raise KeyboardInterrupt
    assert final.read_text() == "old"
    assert list(tmp_path.iterdir()) == [final]


def test_atomic_path_success(tmp_path):
    final = tmp_path / "deep" / "er" / "artifact.txt"
    with atomic_path(final) as tmp:
        tmp.write_text("done")
        assert not final.exists()  # nothing shows until the block finishes
    assert final.read_text() == "done"
    assert stat.S_IMODE(final.stat().st_mode) == 0o644
    assert list(final.parent.iterdir()) == [final]
    atomic_write_text(final, "replaced")
    assert final.read_text() == "replaced" and list(final.parent.iterdir()) == [final]
