"""Evaluations. bpb.py: validation bits per byte, the tokenizer-independent loss every stage reports.
core.py (`picochat eval base`) and chat.py (`picochat eval chat`) write evals/<stage>_<kind>.json, which
records what it was made from, so `--if-needed` can skip an eval whose checkpoint and settings are unchanged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from picochat.checkpoint import checkpoint_dir, file_fingerprint
from picochat.config import option
from picochat.engine import find_checkpoint


@dataclass
class RerunConfig:
    if_needed: bool = option(False, "skip the eval if its results file was made from the same checkpoint with "
                                    "the same settings")


def earlier_results(home: Path, kind: str, source: str, step: int, settings) -> tuple[Path, dict, dict | None]:
    """(results file, what this eval is made from, the file's report if it was made from the same). The
    checkpoint is named by its path and its stage's done.json, which every finished run writes anew."""
    stage, path, _ = find_checkpoint(home, source, step)
    inputs = {"checkpoint": f"{path} {file_fingerprint(checkpoint_dir(home, stage) / 'done.json')}",
              "settings": asdict(settings)}
    results = home / "evals" / f"{stage}_{kind}.json"
    try:
        earlier = json.loads(results.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: this eval writes it anew
        earlier = {}
    return results, inputs, earlier if isinstance(earlier, dict) and earlier.get("inputs") == inputs else None
