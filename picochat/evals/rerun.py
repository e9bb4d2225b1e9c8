"""`picochat eval ... --if-needed`: an eval's results file records what it was made from (the checkpoint, its
stage's done.json, and the eval's settings); the same inputs again mean the eval is already done."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from picochat.checkpoint import checkpoint_dir, file_fingerprint, find_checkpoint
from picochat.config import option


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
