"""Where the code runs (runtime.py): inference's dtype and start-up, and torch.compile falling back to eager
where it cannot compile. DDP across processes is tested with the step it serves (tests/test_step.py).

    python -m pytest tests/test_runtime.py
"""

from __future__ import annotations

import subprocess
import sys

import torch

from helpers import TINY, flags_dict
from picochat.runtime import inference_runtime
from picochat.train import run


def test_inference_runs_in_fp32_on_a_cpu_unless_asked_otherwise():
    assert inference_runtime("cpu", "auto").dtype == torch.float32
    assert inference_runtime("cpu", "bfloat16").dtype == torch.bfloat16


def test_an_inference_runtime_leaves_out_the_switch_only_training_needs():
    """Deterministic algorithms fix the order of backward's atomic adds; turning them on imports
    torch._inductor, ~2 s of every eval's and chat's start-up. A fresh process: this one has imported it."""
    code = ("import sys, torch; from picochat.runtime import inference_runtime, setup_runtime; "
            "inference_runtime('cpu'); print(torch.are_deterministic_algorithms_enabled(), "
            "'torch._inductor' in sys.modules); setup_runtime('cpu', 'float32'); "
            "print(torch.are_deterministic_algorithms_enabled())")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert shown.split() == ["False", "False", "True"]


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
