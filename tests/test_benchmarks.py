"""Every benchmark script starts: its imports still name picochat's modules where they are (a benchmark is
run by hand, so nothing else would notice a move), and --help says what it measures.

    python -m pytest tests/test_benchmarks.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda path: path.name)
def test_the_benchmark_starts_and_explains_itself(script):
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ") and "--out" in result.stdout
