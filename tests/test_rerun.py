"""`picochat eval ... --if-needed` (evals/rerun.py): an eval of the same checkpoint with the same settings is
skipped; other settings, a retrained checkpoint, no flag, or a results file cut short run it again.

    python -m pytest tests/test_rerun.py
"""

from __future__ import annotations

import json

from helpers import TINY, flags_dict
from picochat.evals.chat import run as eval_chat
from picochat.train import run


def test_if_needed_skips_an_eval_of_the_same_checkpoint_and_settings(fresh_home, capsys):
    run(flags_dict(*TINY, "--max-seq-len", "256", "--num-iterations", "2", "--home", str(fresh_home)))
    mid = flags_dict(*TINY, "--stage", "mid", "--num-iterations", "2", "--home", str(fresh_home))
    run(mid)
    flags = {"tasks": "arithmetic,identity", "max_problems": 2, "max_tokens": 8, "batch_size": 2, "device": "cpu",
             "home": str(fresh_home), "if_needed": True}
    results = fresh_home / "evals" / "mid_chat.json"
    first = eval_chat(flags)
    capsys.readouterr()

    def ran(changes: dict) -> bool:
        before = results.read_bytes()
        report = eval_chat({**flags, **changes})
        skipped = f"eval: already done ({results}: the same checkpoint and settings)" in capsys.readouterr().out
        assert report == json.loads(results.read_text()) and (results.read_bytes() == before or not skipped)
        return not skipped

    assert not ran({}) and json.loads(results.read_text()) == first
    assert ran({"max_problems": 3})  # other settings
    run(mid)  # mid trained again: another checkpoint
    assert ran({"max_problems": 3})
    assert ran({"max_problems": 3, "if_needed": False})  # without the flag it always runs
    results.write_text("{")  # cut short by hand: made again
    assert ran({"max_problems": 3})
