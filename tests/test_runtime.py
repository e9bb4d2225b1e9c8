"""Where the code runs (runtime.py): inference's dtype, and torch.compile falling back to eager where it
cannot compile. DDP across processes is tested with the step it serves (tests/test_step.py).

    python -m pytest tests/test_runtime.py
"""

from __future__ import annotations

import torch

from helpers import TINY, flags_dict
from picochat.runtime import inference_runtime
from picochat.train import run


def test_inference_runs_in_fp32_on_a_cpu_unless_asked_otherwise():
    assert inference_runtime("cpu", "auto").dtype == torch.float32
    assert inference_runtime("cpu", "bfloat16").dtype == torch.bfloat16


def test_compile_failure_falls_back_to_eager(fresh_home, monkeypatch, capsys):
    def broken_compile(model, *args, **kwargs):
        def fail(*a, **k):
            raise RuntimeError("no C++ compiler found\nmore detail")
        return fail
    monkeypatch.setattr(torch, "compile", broken_compile)
    state = run(flags_dict(*TINY, "--compile", "true", "--num-iterations", "2", "--home", str(fresh_home)))
    assert state.step == 2
    assert "torch.compile is not available here (RuntimeError: no C++ compiler found); training eager" \
        in capsys.readouterr().out
