"""Checkpoints: keep-last pruning, payload round trip (weights, optimizers, RNG), fingerprints, setting old
files aside, the one-run-per-stage lock (in process, across a kill -9, and between two real runs), and
loading a checkpoint for inference (load_model: its weights, the tokenizer it needs, corrupt files).

    python -m pytest tests/test_checkpoint.py
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import TINY, flags_dict, losses, train_cli
from picochat.checkpoint import (StageLock, check_fingerprints, list_checkpoints, load_checkpoint, load_model,
                                 make_payload, restore, save_checkpoint, set_aside_newer, set_aside_previous_run)
from picochat.common import UserError
from picochat.runtime import Runtime
from picochat.model import GPT, GPTConfig
from picochat.optim import OptimConfig, build_optimizers
from picochat.step import train_step
from picochat.tokenizer import Tokenizer
from picochat.train import TrainConfig, TrainState, run
from picochat.data.loader import Batch

CPU = Runtime(torch.device("cpu"), torch.float32)


def model_and_optimizers(seed: int) -> tuple[GPT, list]:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(sequence_len=16, vocab_size=64, n_layer=1, n_embd=64, n_head=1, n_kv_head=1))
    return model, build_optimizers(model, OptimConfig(), torch.float32)


def payload_after_a_step(seed: int = 0) -> tuple[dict, GPT, list]:
    model, optimizers = model_and_optimizers(seed)
    train_step(model, model, optimizers, [Batch(torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16)))], CPU)
    configs = {"config": TrainConfig(), "optim_config": OptimConfig()}
    payload = make_payload(model, optimizers, [{"epoch": 0, "shard": 1}], TrainState(step=1, tokens=32), configs,
                           {"corpus": "c" * 64, "tokenizer": "t" * 64}, "base", CPU)
    return payload, model, optimizers


# ---- files ---------------------------------------------------------------------------------------------

def test_save_keeps_the_newest_k_and_loads_back(tmp_path):
    payload, _, _ = payload_after_a_step()
    for step in (1, 2, 3, 10):
        save_checkpoint(tmp_path, step, payload, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000003.pt", "step_000010.pt"]
    assert not list(tmp_path.glob(".*.tmp"))  # no temp file left behind
    loaded = load_checkpoint(tmp_path / "step_000010.pt")
    assert loaded["train_state"]["step"] == 1 and loaded["fingerprints"]["corpus"] == "c" * 64


def test_payload_round_trip_restores_weights_optimizers_and_rng(tmp_path):
    payload, model, optimizers = payload_after_a_step()
    torch.manual_seed(5)
    random.seed(5)
    save_checkpoint(tmp_path, 1, make_payload(model, optimizers, payload["loaders"], TrainState(step=1),
                                              {"config": TrainConfig()}, {}, "base", CPU), keep_last=1)
    expected_draws = (torch.rand(3), random.random())
    other, other_optimizers = model_and_optimizers(seed=1)
    state, loader = restore(load_checkpoint(tmp_path / "step_000001.pt"), other, other_optimizers, CPU)
    assert (state["step"], loader) == (1, {"epoch": 0, "shard": 1})
    assert torch.equal(torch.rand(3), expected_draws[0]) and random.random() == expected_draws[1]
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    assert str(optimizers[1].state_dict()) == str(other_optimizers[1].state_dict())  # Muon momentum


def test_restore_refuses_another_process_count():
    payload, _, _ = payload_after_a_step()
    model, optimizers = model_and_optimizers(0)
    two = Runtime(torch.device("cpu"), torch.float32, rank=0, world_size=2)
    with pytest.raises(UserError, match=r"written by 1 process\(es\); resume with the same number \(now 2\)"):
        restore(payload, model, optimizers, two)


def test_fingerprints_must_match_when_recorded():
    saved = {"fingerprints": {"corpus": "a" * 64, "tokenizer": "b" * 64}}
    check_fingerprints(saved, {"corpus": "a" * 64, "tokenizer": "b" * 64})
    check_fingerprints({}, {"corpus": "x" * 64})  # a checkpoint from before fingerprints: nothing to compare
    with pytest.raises(UserError, match=r"^the tokenizer changed since this checkpoint was written \(bbbbbbbbbbbb "
                                        r"then, cccccccccccc now\)"):
        check_fingerprints(saved, {"corpus": "a" * 64, "tokenizer": "c" * 64})


# ---- setting files aside, never deleting them -----------------------------------------------------------

def touch(directory: Path, *names: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_text(name)


def test_fresh_start_moves_the_previous_run_aside(tmp_path):
    touch(tmp_path, "step_000002.pt", "step_000004.pt", "done.json", "metrics.jsonl", ".lock")
    set_aside_previous_run(tmp_path)
    (folder,) = tmp_path.glob("previous-*")
    assert sorted(p.name for p in folder.iterdir()) == ["done.json", "metrics.jsonl", "step_000002.pt",
                                                        "step_000004.pt"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [".lock"]


def test_resuming_an_older_checkpoint_moves_only_the_newer_ones(tmp_path):
    touch(tmp_path, "step_000002.pt", "step_000004.pt", "step_000006.pt", "done.json", "metrics.jsonl")
    set_aside_newer(tmp_path, tmp_path / "step_000004.pt")
    (folder,) = tmp_path.glob("abandoned-*")
    assert sorted(p.name for p in folder.iterdir()) == ["done.json", "step_000006.pt"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000002.pt", "step_000004.pt"]
    set_aside_newer(tmp_path, tmp_path / "step_000004.pt")  # nothing newer left: nothing moves
    assert len(list(tmp_path.glob("abandoned-*"))) == 1


def test_resuming_from_a_file_elsewhere_moves_every_checkpoint_here(tmp_path):
    touch(tmp_path / "base", "step_000002.pt", "step_000004.pt")
    touch(tmp_path / "backup", "step_000003.pt")
    set_aside_newer(tmp_path / "base", tmp_path / "backup" / "step_000003.pt")
    assert list_checkpoints(tmp_path / "base") == []
    assert len(list((tmp_path / "base").glob("abandoned-*/step_*.pt"))) == 2


# ---- one run per stage directory ------------------------------------------------------------------------

def test_a_second_lock_is_refused_naming_the_holder(tmp_path):
    with StageLock(tmp_path):
        with pytest.raises(UserError, match=rf"is in use by another run \(pid {os.getpid()} on "):
            with StageLock(tmp_path):
                pass
    with StageLock(tmp_path):  # released on exit
        pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from picochat.checkpoint import StageLock\n"
                               f"with StageLock({str(tmp_path)!r}):\n    print('locked', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=rf"pid {holder.pid} "):
            with StageLock(tmp_path):
                pass
    finally:
        holder.kill()  # SIGKILL: no chance to unlock
        holder.wait()
    with StageLock(tmp_path):
        pass


def test_a_second_training_run_on_the_same_stage_is_refused(fresh_home):
    """Started as a new user would, in a second terminal: it must not touch the first run's files."""
    out = fresh_home / "checkpoints" / "base"
    first = train_cli(fresh_home, "--num-iterations", "100000", "--eval-every", "0", "--save-every", "5")
    deadline = time.monotonic() + 120
    while not list_checkpoints(out):
        assert first.poll() is None and time.monotonic() < deadline, first.stdout.read()
        time.sleep(0.05)
    second = train_cli(fresh_home, "--num-iterations", "3", stderr=subprocess.PIPE)
    second_out, second_err = second.communicate(timeout=120)
    assert second.returncode == 2
    assert second_err.startswith(f"picochat: error: {out} is in use by another run (pid {first.pid} on ")
    assert len(second_err.strip().splitlines()) == 1 and second_out == ""
    assert not list(out.glob("previous-*"))  # the first run's checkpoints were not moved
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 0
    stopped_at = load_checkpoint(list_checkpoints(out)[-1])["train_state"]["step"]
    assert sorted(losses(fresh_home)) == list(range(1, stopped_at + 1))  # one run's metrics, no second writer


# ---- loading a checkpoint for inference ------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory, tiny_home):
    home = tmp_path_factory.mktemp("engine") / "home"
    shutil.copytree(tiny_home, home)
    run(flags_dict(*TINY, "--num-iterations", "4", "--save-every", "2", "--keep-last", "3", "--home", str(home)))
    return home


def test_load_model_gives_the_checkpoint_weights_in_eval_mode(trained_home):
    model, tokenizer, info = load_model(trained_home)
    assert info["stage"] == "base" and info["step"] == 4 and not model.training
    saved = torch.load(trained_home / "checkpoints" / "base" / "step_000004.pt", weights_only=True)["model"]
    assert all(torch.equal(saved[name], tensor) for name, tensor in model.state_dict().items())
    assert tokenizer.vocab_size == model.config.vocab_size
    assert load_model(trained_home, source="base", step=2)[2]["step"] == 2


def test_load_model_without_a_checkpoint_says_how_to_make_one(tiny_home):
    with pytest.raises(UserError, match=r"no base checkpoint in .*; create one with `picochat train --stage base`"):
        load_model(tiny_home)
    with pytest.raises(UserError, match="`picochat train --stage sft`"):
        load_model(tiny_home, source="sft")


def test_load_model_refuses_a_tokenizer_of_another_vocab(trained_home, tmp_path, corpus_documents):
    home = shutil.copytree(trained_home, tmp_path / "home")
    Tokenizer.train((d.text for d in corpus_documents), 300).save(home / "tokenizer")
    with pytest.raises(UserError, match="has 300 tokens but .* was trained with 512"):
        load_model(home)


def test_load_model_falls_back_past_a_corrupt_checkpoint(trained_home, tmp_path, capsys):
    home = shutil.copytree(trained_home, tmp_path / "home")
    newest = home / "checkpoints" / "base" / "step_000004.pt"
    newest.write_bytes(newest.read_bytes()[:500])
    assert load_model(home)[2]["step"] == 2
    assert "falling back to the previous checkpoint" in capsys.readouterr().out
