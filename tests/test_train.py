"""The one training loop: learning, resume (exact after kill -9, the run's own settings, time budgets),
signals, non-finite losses, bf16, torch.compile, 2 processes on gloo, later stages and --if-needed. The step
it runs (loss normalisation, gradients summed over ranks) is tested in tests/test_step.py.

    python -m pytest tests/test_train.py            # add -m "not slow" to skip the minute-long ones
"""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from helpers import TINY, TINY_RUN, flags_dict, losses, lrs, step_records, train_cli, val_bpbs
from picochat import step as step_module
from picochat import train as train_module
from picochat.checkpoint import list_checkpoints, load_latest, load_model
from picochat.common import UserError
from picochat.runtime import Runtime
from picochat.data.shards import corpus_dir, write_corpus
from picochat.evals.bpb import evaluate_bpb
from picochat.model import GPT, GPTConfig
from picochat.progress import read_metrics
from picochat.stages import base_stage
from picochat.tokenizer import Tokenizer, load_tokenizer, tokenizer_dir
from picochat.train import run

@pytest.fixture
def home(fresh_home) -> Path:
    """A private PICOCHAT_HOME with the shared tiny corpus and tokenizer (conftest.py)."""
    return fresh_home


# ---- end to end, in process ------------------------------------------------------------------------------

def test_training_lowers_val_bpb_and_writes_artifacts(home):
    state = run(flags_dict(*TINY, "--num-iterations", "60", "--eval-every", "20", "--home", str(home)))
    assert state.step == 60 and state.tokens == 60 * 2 * 32
    bpbs = val_bpbs(home)
    assert len(bpbs) == 4  # steps 0, 20, 40 and the end
    assert bpbs[-1] < 0.8 * bpbs[0]
    out = home / "checkpoints" / "base"
    done = json.loads((out / "done.json").read_text())
    assert done["step"] == 60 and done["val_bpb"] == pytest.approx(bpbs[-1])
    _, checkpoint = load_latest(out)
    assert checkpoint["train_state"]["step"] == 60 and len(checkpoint["loaders"]) == 1
    step_record = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in l][-1]
    assert {"loss", "lr", "tok_per_s", "mfu", "eta_s", "tokens"} <= set(step_record)


def test_fresh_run_sets_the_previous_run_aside(home):
    run(flags_dict(*TINY, "--num-iterations", "2", "--home", str(home)))
    run(flags_dict(*TINY, "--num-iterations", "1", "--home", str(home)))
    out = home / "checkpoints" / "base"
    assert [p.name for p in list_checkpoints(out)] == ["step_000001.pt"]
    archived = list(out.glob("previous-*/step_000002.pt"))
    assert len(archived) == 1


def nan_on_step_two(monkeypatch):
    """A transient bad step: the real forward/backward runs, but step 2 reports a NaN loss."""
    real, calls = step_module.forward_backward, []

    def flaky(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return float("nan") if len(calls) == 2 else loss
    monkeypatch.setattr(step_module, "forward_backward", flaky)


def test_nonfinite_loss_stops_naming_the_step_without_a_checkpoint(home, monkeypatch):
    nan_on_step_two(monkeypatch)
    with pytest.raises(UserError, match="loss is nan at step 2; stopped without writing a checkpoint"):
        run(flags_dict(*TINY, "--num-iterations", "4", "--save-every", "1", "--home", str(home)))
    out = home / "checkpoints" / "base"
    assert [p.name for p in list_checkpoints(out)] == ["step_000001.pt"]  # the good one stays


def test_nonfinite_loss_can_be_skipped(home, monkeypatch):
    nan_on_step_two(monkeypatch)
    state = run(flags_dict(*TINY, "--num-iterations", "4", "--on-nonfinite", "skip", "--home", str(home)))
    assert state.step == 4 and state.skipped_steps == 1
    _, checkpoint = load_latest(home / "checkpoints" / "base")
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values())


@pytest.mark.slow
def test_real_torch_compile_trains_like_eager(home, tmp_path, capsys):
    eager_home = tmp_path / "eager"
    shutil.copytree(home, eager_home)
    run(flags_dict(*TINY, "--num-iterations", "3", "--home", str(eager_home)))
    torch._dynamo.reset()
    counters.clear()
    run(flags_dict(*TINY, "--compile", "true", "--num-iterations", "3", "--home", str(home)))
    assert "training eager" not in capsys.readouterr().out  # the compiled path really ran
    assert counters["stats"]["unique_graphs"] == 1  # the warm-up's graph served every step: no recompile
    eager, compiled = losses(eager_home), losses(home)
    for step in eager:
        assert compiled[step] == pytest.approx(eager[step], abs=1e-3)


def test_bad_flags_are_one_line_errors(home):
    with pytest.raises(UserError, match="--num-iterations or --time-budget, not both"):
        run(flags_dict(*TINY, "--num-iterations", "1", "--time-budget", "1", "--home", str(home)))
    with pytest.raises(UserError, match="--total-batch-size"):
        run(flags_dict(*TINY, "--total-batch-size", "100", "--num-iterations", "1", "--home", str(home)))
    with pytest.raises(UserError, match="no checkpoint to resume from"):
        run(flags_dict(*TINY, "--resume", "--num-iterations", "1", "--home", str(home)))
    with pytest.raises(UserError, match="val split is shorter than one batch of 2 x 100000 tokens"):
        run(flags_dict(*TINY, "--max-seq-len", "100000", "--num-iterations", "1", "--home", str(home)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail, as where it is not installed
        with pytest.raises(UserError, match="--wandb needs the wandb package"):
            run(flags_dict(*TINY, "--wandb", "--num-iterations", "1", "--home", str(home)))
    result = subprocess.run([sys.executable, "-m", "picochat.cli", "train", "--depth", "0"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == "picochat: error: --depth must be >= 1, got 0"


def test_wandb_gets_every_record_and_is_finished(home):
    """A torchrun worker skips atexit hooks, so the loop itself must finish the wandb run."""
    calls = []

    class FakeRun:
        def log(self, record, step):
            calls.append(("log", step, dict(record)))

        def finish(self):
            calls.append(("finish",))

    fake = types.SimpleNamespace(init=lambda **kwargs: calls.append(("init", kwargs["project"])) or FakeRun())
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "wandb", fake)
        run(flags_dict(*TINY, "--wandb", "--num-iterations", "2", "--eval-every", "0", "--home", str(home)))
    assert calls[0] == ("init", "picochat") and calls[-1] == ("finish",)
    logged = [call[2] for call in calls if call[0] == "log"]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2]
    assert logged[-1]["val_bpb"] == json.loads((home / "checkpoints" / "base" / "done.json").read_text())["val_bpb"]


def test_gradient_accumulation_matches_one_big_batch(home, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(home, other)
    run(flags_dict(*TINY, "--device-batch-size", "4", "--num-iterations", "4", "--home", str(home)))
    run(flags_dict(*TINY, "--device-batch-size", "1", "--total-batch-size", "128", "--num-iterations", "4",
                   "--home", str(other)))
    a, b = losses(home), losses(other)
    assert a.keys() == b.keys()
    for step in a:
        assert a[step] == pytest.approx(b[step], abs=2e-4)


# ---- interruption: kill -9, SIGTERM, corrupt checkpoints ---------------------------------------------------

def wait_for(predicate, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert process.poll() is None, f"training exited early:\n{process.stdout.read()}"
        assert time.time() < deadline, "timed out waiting for training"
        time.sleep(0.02)


@pytest.mark.slow
def test_kill9_then_resume_reproduces_the_uninterrupted_losses(home, tmp_path):
    reference = tmp_path / "reference"
    shutil.copytree(home, reference)
    flags = ("--num-iterations", "300", "--save-every", "10", "--eval-every", "100")
    assert train_cli(reference, *flags).wait(timeout=300) == 0
    process = train_cli(home, *flags)
    out = home / "checkpoints" / "base"
    wait_for(lambda: (out / "step_000030.pt").exists(), process)
    process.kill()  # SIGKILL: no chance to clean up
    process.wait()
    killed_at = load_latest(out)[1]["train_state"]["step"]
    assert killed_at < 300, "the run finished before it could be killed"
    resumed = train_cli(home, *flags, "--resume")
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    expected, got = losses(reference), losses(home)
    assert sorted(got) == list(range(1, 301))  # no gaps, no duplicates
    for step in range(1, 301):
        assert got[step] == pytest.approx(expected[step], abs=1e-5), step
    assert val_bpbs(home)[-1] == pytest.approx(val_bpbs(reference)[-1], abs=1e-5)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_signal_checkpoints_and_exits_zero(home, signum):
    process = train_cli(home, "--num-iterations", "100000", "--eval-every", "0")
    metrics = home / "checkpoints" / "base" / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and metrics.read_text().count('"loss"') >= 3, process)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    assert "stopped by signal" in output
    path, checkpoint = load_latest(home / "checkpoints" / "base")
    assert checkpoint["train_state"]["step"] >= 3
    assert max(losses(home)) == checkpoint["train_state"]["step"]


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(home):
    run(flags_dict(*TINY, "--num-iterations", "4", "--save-every", "2", "--keep-last", "3",
                   "--home", str(home)))
    out = home / "checkpoints" / "base"
    latest = out / "step_000004.pt"
    latest.write_bytes(latest.read_bytes()[:1000])  # truncated, as after a crash mid-copy
    result = train_cli(home, "--resume").communicate(timeout=120)[0]
    assert f"checkpoint {latest} is corrupt or truncated" in result
    assert "falling back to the previous checkpoint" in result
    assert f"resuming from {out / 'step_000002.pt'}" in result
    assert "moved 1 newer checkpoint(s) to" in result
    abandoned = list(out.glob("abandoned-*/step_000004.pt"))
    assert len(abandoned) == 1  # set aside, not deleted, and out of --resume's way
    _, checkpoint = load_latest(out)
    assert checkpoint["train_state"]["step"] == 4
    with pytest.raises(UserError, match="is corrupt or truncated"):
        run(flags_dict(*TINY, "--resume", str(abandoned[0]), "--home", str(home)))


@pytest.mark.parametrize("content", [b"not a checkpoint\n", b""])
def test_resume_from_a_file_that_is_not_a_checkpoint_is_one_line(home, tmp_path, content):
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(content)
    result = train_cli(home, "--resume", str(bogus), stderr=subprocess.PIPE)
    _, err = result.communicate(timeout=120)
    assert result.returncode == 2
    assert err.startswith(f"picochat: error: checkpoint {bogus} is corrupt or truncated (")
    assert len(err.strip().splitlines()) == 1


def test_a_torch_file_that_is_not_a_picochat_checkpoint_is_skipped(home):
    run(flags_dict(*TINY, "--num-iterations", "3", "--save-every", "2", "--home", str(home)))
    out = home / "checkpoints" / "base"
    (out / "step_000003.pt").unlink()  # as if the run had stopped after step 2
    torch.save({"weights": torch.zeros(2)}, out / "step_000009.pt")
    with pytest.raises(UserError, match="is not a picochat checkpoint"):
        run(flags_dict(*TINY, "--resume", str(out / "step_000009.pt"), "--home", str(home)))
    state = run(flags_dict(*TINY, "--resume", "--home", str(home)))
    assert state.step == 3  # --resume latest skipped the stranger and went on from step 2


# ---- resume continues the same run -----------------------------------------------------------------------

def stop_after(monkeypatch, steps: int) -> None:
    """Ask the loop to stop, as SIGTERM would, at the end of its `steps`-th step."""
    class StopAfter:
        def __init__(self):
            self.checks = 0

        @property
        def requested(self) -> bool:  # the loop reads this once per step
            self.checks += 1
            return self.checks >= steps

        def restore(self) -> None:
            pass
    monkeypatch.setattr(train_module, "StopSignal", StopAfter)


def run_interrupted(home: Path, reference: Path, monkeypatch, flags: tuple, stop_at: int, *resume_flags: str):
    """The run of `flags` uninterrupted in a copy of home at `reference`, and in home stopped after stop_at
    steps, then resumed with `--resume` and resume_flags only. Returns the resumed run's final state."""
    shutil.copytree(home, reference)
    run(flags_dict(*flags, "--home", str(reference)))
    with monkeypatch.context() as patch:
        stop_after(patch, stop_at)
        assert run(flags_dict(*flags, "--home", str(home))).step == stop_at
    return run(flags_dict(*resume_flags, "--resume", "--home", str(home)))


def test_resume_continues_the_same_run_with_its_own_settings(home, tmp_path, monkeypatch):
    """`picochat train --resume` and nothing else, as the README shows it: same LR curve, same losses."""
    flags = (*TINY, "--num-iterations", "12", "--warmdown-ratio", "0.5", "--eval-every", "4", "--save-every", "5")
    reference = tmp_path / "reference"
    state = run_interrupted(home, reference, monkeypatch, flags, 5)
    assert state.step == 12
    assert lrs(home) == lrs(reference) and min(lrs(home).values()) < 0.5  # the warmdown really ran
    assert losses(home) == losses(reference)
    assert val_bpbs(home) == val_bpbs(reference)


@pytest.mark.parametrize("flag, value", [("--time-budget", "1"), ("--num-iterations", "20"),
                                         ("--device-batch-size", "4"), ("--max-seq-len", "16"),
                                         ("--total-batch-size", "128"), ("--matrix-lr", "0.01"),
                                         ("--warmdown-ratio", "0.5"), ("--seed", "7"), ("--tie-embeddings", "false")])
def test_resume_refuses_a_flag_that_changes_the_run(home, flag, value):
    run(flags_dict(*TINY, "--num-iterations", "2", "--home", str(home)))
    with pytest.raises(UserError, match=rf"^{flag} \S+ differs from the run being resumed \(\S+\); "):
        run(flags_dict("--resume", flag, value, "--home", str(home)))


def test_resume_refusal_is_one_line_and_the_same_value_is_fine(home):
    run(flags_dict(*TINY, "--num-iterations", "2", "--home", str(home)))
    refused = train_cli(home, "--resume", "--num-iterations", "5", stderr=subprocess.PIPE)
    _, err = refused.communicate(timeout=120)
    assert refused.returncode == 2
    assert err.strip() == ("picochat: error: --num-iterations 5 differs from the run being resumed (2); a resumed "
                           "run keeps its data order and schedule: drop the flag, or start a new run without --resume")
    assert run(flags_dict(*TINY, "--num-iterations", "2", "--resume", "--home", str(home))).step == 2


def test_resume_allows_harmless_flags_and_says_so(home, capsys):
    run(flags_dict(*TINY, "--num-iterations", "3", "--save-every", "2", "--home", str(home)))
    capsys.readouterr()
    run(flags_dict("--resume", str(home / "checkpoints" / "base" / "step_000002.pt"), "--eval-every", "1",
                   "--keep-last", "5", "--home", str(home)))
    out = capsys.readouterr().out
    assert "resume: --eval-every is now 1 (was 100)" in out
    assert "resume: --keep-last is now 5 (was 2)" in out


def test_time_budget_resume_keeps_the_remaining_budget(home, monkeypatch):
    """Time-budget runs follow the clock, so their losses are not bit-exact; what must hold is that the
    resumed run trains for what was left of the budget, on the LR curve where it stopped."""
    # 3 s, so the signal after 30 steps (~0.3 s here) comes well inside it even on a slow or busy machine
    budget = 0.05 * 60
    flags = (*TINY, "--time-budget", "0.05", "--warmdown-ratio", "1", "--eval-every", "0", "--home", str(home))
    with monkeypatch.context() as patch:
        stop_after(patch, 30)
        run(flags_dict(*flags))
    _, checkpoint = load_latest(home / "checkpoints" / "base")
    spent = checkpoint["train_state"]["train_seconds"]
    assert 0 < spent < budget
    state = run(flags_dict("--resume", "--home", str(home)))  # the budget comes from the checkpoint
    first_resumed = step_records(home)[30]
    assert first_resumed["step"] == 31
    assert first_resumed["lr"] == pytest.approx(1 - spent / budget, abs=1e-4)  # warmdown over the whole run
    assert budget <= state.train_seconds < budget + 0.5 * spent  # not a whole new budget on top


def test_resume_from_an_older_checkpoint_sets_the_newer_ones_aside(home, capsys):
    out = home / "checkpoints" / "base"
    run(flags_dict(*TINY, "--num-iterations", "6", "--save-every", "2", "--keep-last", "3", "--home", str(home)))
    first_run = torch.load(out / "step_000006.pt", weights_only=True)["model"]
    capsys.readouterr()
    run(flags_dict("--resume", str(out / "step_000002.pt"), "--home", str(home)))
    assert "resuming from an older checkpoint: moved 2 newer checkpoint(s) to" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("abandoned-*/*")) == ["done.json", "step_000004.pt", "step_000006.pt"]
    assert [p.name for p in list_checkpoints(out)] == ["step_000002.pt", "step_000004.pt", "step_000006.pt"]
    second_run = load_latest(out)[1]["model"]  # the resumed run's own step 6: eager runs repeat exactly
    assert all(torch.equal(first_run[name], second_run[name]) for name in first_run)


def test_resume_refuses_a_changed_corpus_or_tokenizer(home, corpus_documents):
    run(flags_dict(*TINY, "--num-iterations", "2", "--home", str(home)))
    tokenizer_files = {p: p.read_bytes() for p in tokenizer_dir(home).iterdir()}
    Tokenizer.train((d.text for d in corpus_documents), 400).save(tokenizer_dir(home))
    with pytest.raises(UserError, match="^the tokenizer changed since this checkpoint was written"):
        run(flags_dict("--resume", "--home", str(home)))
    for path, content in tokenizer_files.items():
        path.write_bytes(content)
    write_corpus(corpus_documents[:250], corpus_dir(home), shard_bytes=40_000, description={"source": "offline"})
    with pytest.raises(UserError, match="^the corpus changed since this checkpoint was written"):
        run(flags_dict("--resume", "--home", str(home)))


@pytest.mark.slow
def test_compiled_runs_are_reproducible_and_resume_exactly(home, tmp_path, monkeypatch):
    """The shape at which two compiled CPU runs used to differ by ~1e-3 in loss (inductor summed the
    embedding gradient with atomic adds from several threads): now two runs, and a run stopped half-way
    and resumed, agree to the bit."""
    flags = ("--depth", "2", "--max-seq-len", "128", "--device-batch-size", "4", "--dtype", "bfloat16",
             "--compile", "true", "--num-iterations", "30", "--eval-every", "0", "--eval-tokens", "512",
             "--device", "cpu")
    homes = [Path(shutil.copytree(home, tmp_path / name)) for name in ("first", "second")]
    for other in homes:
        run(flags_dict(*flags, "--home", str(other)))
    with monkeypatch.context() as patch:
        stop_after(patch, 15)
        run(flags_dict(*flags, "--home", str(home)))
    run(flags_dict("--resume", "--home", str(home)))
    assert losses(homes[0]) == losses(homes[1]) == losses(home)


@pytest.mark.parametrize("compile", ["false", pytest.param("true", marks=pytest.mark.slow)])
def test_bf16_trains_and_its_first_steps_match_fp32(home, tmp_path, compile):
    """bf16 autocast runs on every CPU (emulated where there is no avx512_bf16). The first steps start
    from the same weights as fp32, so their losses agree to bf16's precision: within 1%."""
    flags = (*TINY, "--num-iterations", "30", "--eval-every", "0", "--compile", compile)
    fp32_home = Path(shutil.copytree(home, tmp_path / "fp32"))
    run(flags_dict(*flags, "--home", str(fp32_home)))
    run(flags_dict(*flags, "--dtype", "bfloat16", "--home", str(home)))
    fp32, bf16 = losses(fp32_home), losses(home)
    for step in (1, 2, 3):
        assert bf16[step] == pytest.approx(fp32[step], rel=0.01)
    assert any(bf16[step] != fp32[step] for step in (2, 3))  # bf16 really ran (step 1's logits are ~0 in both)
    late_bf16, late_fp32 = (sum(run_losses[s] for s in range(26, 31)) / 5 for run_losses in (bf16, fp32))
    assert late_bf16 < 0.9 * bf16[1] and late_bf16 == pytest.approx(late_fp32, rel=0.03)  # learns as fp32 does


# ---- data parallel on CPU: the CLI under torchrun, 2 processes, gloo ------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("tied", [True, False])  # DDP with one matrix under two names, and with two
def test_torchrun_cli_trains_and_resumes_with_two_processes(home, tied):
    """The real CLI under torchrun: each rank has its own loader position, and resuming from an earlier
    checkpoint repeats the run's own losses exactly."""
    env = {**os.environ, "PICOCHAT_HOME": str(home)}
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "picochat.cli", "train"]
    flags = [*TINY, "--tie-embeddings", str(tied), "--eval-every", "2", "--num-iterations", "6", "--save-every", "3"]
    first = subprocess.run(base + flags, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    out = home / "checkpoints" / "base"
    _, checkpoint = load_latest(out)
    assert len(checkpoint["loaders"]) == 2 and checkpoint["loaders"][0] != checkpoint["loaders"][1]
    assert checkpoint["model_config"]["tie_embeddings"] == tied
    uninterrupted = losses(home)
    second = subprocess.run(base + ["--resume", str(out / "step_000003.pt")], env=env, capture_output=True,
                            text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert losses(home) == uninterrupted and sorted(uninterrupted) == [1, 2, 3, 4, 5, 6]


def test_a_stage_preset_with_an_unknown_setting_is_an_error(monkeypatch):
    """A typo in a stage's preset must not be dropped silently (it is a bug, so not a UserError)."""
    base_stage = train_module.STAGES["base"]

    def typo_stage():
        stage = base_stage()
        stage.preset = {"max_seq_len": 64, "warmup_ratoi": 0.1}
        return stage
    monkeypatch.setitem(train_module.STAGES, "base", typo_stage)
    with pytest.raises(ValueError, match="stage 'base' presets unknown setting\\(s\\): warmup_ratoi") as info:
        run(flags_dict("--num-iterations", "1"))
    assert not isinstance(info.value, UserError)


# ---- later stages: mid and SFT on conversations ----------------------------------------------------------

@pytest.fixture
def chat_home(home) -> Path:
    """The tiny home with a base and a mid checkpoint."""
    run(flags_dict(*TINY, "--num-iterations", "4", "--home", str(home)))
    run(flags_dict(*TINY, "--stage", "mid", "--num-iterations", "4", "--home", str(home)))
    return home


def test_later_stages_start_from_the_previous_one_with_its_shape(home, capsys):
    run(flags_dict(*TINY, "--tie-embeddings", "false", "--num-iterations", "4", "--home", str(home)))
    run(flags_dict(*TINY, "--stage", "mid", "--num-iterations", "4", "--home", str(home)))
    out = capsys.readouterr().out
    assert f"starting from base checkpoint {home / 'checkpoints' / 'base' / 'step_000004.pt'}" in out
    sft = [*TINY_RUN, "--stage", "sft", "--max-seq-len", "64", "--num-iterations", "3", "--home", str(home)]
    state = run(flags_dict(*sft))  # no shape flags: TrainConfig's defaults (depth 3, tied) are not the model's
    assert state.step == 3
    _, checkpoint = load_latest(home / "checkpoints" / "sft")
    # the shape came from mid's checkpoint (base's: depth 1, untied); the sequence length from the flag
    assert checkpoint["model_config"]["n_layer"] == 1 and checkpoint["model_config"]["sequence_len"] == 64
    # what the log, the checkpoint's settings and the fingerprint say is the model's shape
    shape = {"depth": 1, "head_dim": 64, "kv_head_ratio": 1, "tie_embeddings": False}
    assert {name: checkpoint["config"][name] for name in shape} == shape
    out = capsys.readouterr().out
    assert "starting from mid checkpoint" in out
    assert re.search(r" depth += 1\n", out) and re.search(r" tie_embeddings += False\n", out)
    # a typed shape flag that describes the model is accepted; --head-dim is a target: 0 and 50 give one head
    assert run(flags_dict(*sft, "--depth", "1", "--head-dim", "50")).step == 3
    with pytest.raises(UserError, match=r"--depth 3, --tie-embeddings True: the model in .*mid.* has --depth 1, "
                                        r"--tie-embeddings False.*drop the flag"):
        run(flags_dict(*sft, "--depth", "3", "--tie-embeddings", "true"))


@pytest.mark.parametrize("tied", [True, False])
def test_tied_or_untied_embeddings_resume_exactly_and_carry_to_later_stages(home, tmp_path, monkeypatch, tied):
    flags = (*TINY, "--tie-embeddings", str(tied), "--num-iterations", "8", "--eval-every", "4", "--save-every", "3")
    reference = tmp_path / "reference"
    assert run_interrupted(home, reference, monkeypatch, flags, 3).step == 8
    assert losses(home) == losses(reference)
    run(flags_dict(*TINY, "--stage", "mid", "--num-iterations", "2", "--home", str(home)))
    _, checkpoint = load_latest(home / "checkpoints" / "mid")
    assert checkpoint["model_config"]["tie_embeddings"] is tied  # from base's checkpoint, not a flag
    assert checkpoint["config"]["tie_embeddings"] is tied        # and its settings say so
    model, _, _ = load_model(home, "mid")
    assert (model.lm_head.weight is model.wte.weight) == tied
    assert model.num_params()["lm_head"] == (0 if tied else model.wte.weight.numel())


def test_a_later_stage_resumes_from_its_own_checkpoint_alone(home, monkeypatch):
    run(flags_dict(*TINY, "--tie-embeddings", "false", "--num-iterations", "2", "--home", str(home)))
    mid = (*TINY, "--stage", "mid", "--num-iterations", "4", "--save-every", "1", "--home", str(home))
    with monkeypatch.context() as patch:
        stop_after(patch, 2)
        assert run(flags_dict(*mid)).step == 2
    shutil.rmtree(home / "checkpoints" / "base")
    assert run(flags_dict("--stage", "mid", "--resume", "--home", str(home))).step == 4
    _, checkpoint = load_latest(home / "checkpoints" / "mid")
    assert checkpoint["config"]["depth"] == 1 and checkpoint["config"]["tie_embeddings"] is False


def test_a_checkpoint_from_before_tie_embeddings_existed_still_loads_and_resumes(home):
    run(flags_dict(*TINY, "--tie-embeddings", "false", "--num-iterations", "2", "--save-every", "1",
                   "--home", str(home)))
    path, checkpoint = load_latest(home / "checkpoints" / "base")
    del checkpoint["model_config"]["tie_embeddings"], checkpoint["config"]["tie_embeddings"]
    torch.save(checkpoint, path)
    model, _, _ = load_model(home, "base")
    assert model.lm_head.weight is not model.wte.weight  # a missing key reads as untied, as such runs were
    assert run(flags_dict("--resume", "--home", str(home))).step == 2


def test_a_stage_with_shorter_rows_keeps_the_longest_context_the_model_trained_at(home):
    run(flags_dict(*TINY, "--num-iterations", "2", "--home", str(home)))  # rows of 32
    run(flags_dict(*TINY, "--stage", "mid", "--max-seq-len", "16", "--num-iterations", "2", "--home", str(home)))
    _, checkpoint = load_latest(home / "checkpoints" / "mid")
    assert checkpoint["model_config"]["sequence_len"] == 32  # the engine and server may use 32
    assert checkpoint["config"]["max_seq_len"] == 16         # what mid's rows were


def test_every_stage_ends_with_val_bpb_on_the_pretraining_val_shard(home, capsys):
    """mid's own val bpb is on its conversations' assistant tokens; pretrain_val_bpb is base's yardstick, the
    corpus's val shard, measured once at the end: equal to base's val bpb, and for mid what evaluate_bpb gives
    on base's val batches for mid's final checkpoint."""
    run(flags_dict(*TINY, "--num-iterations", "4", "--home", str(home)))
    run(flags_dict(*TINY, "--stage", "mid", "--num-iterations", "4", "--eval-every", "2", "--home", str(home)))
    base_done = json.loads((home / "checkpoints" / "base" / "done.json").read_text())
    assert base_done["pretrain_val_bpb"] == base_done["val_bpb"]
    mid_done = json.loads((home / "checkpoints" / "mid" / "done.json").read_text())
    _, checkpoint = load_latest(home / "checkpoints" / "mid")
    model = GPT(GPTConfig(**checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    config = train_module.TrainConfig(home=str(home), device_batch_size=2, max_seq_len=32)
    tokenizer = load_tokenizer(home)
    runtime = Runtime(torch.device("cpu"), torch.float32)
    expected = evaluate_bpb(model, base_stage().val_batches(tokenizer, config, runtime), tokenizer.token_bytes(),
                            256, runtime)
    assert math.isfinite(mid_done["pretrain_val_bpb"]) and mid_done["pretrain_val_bpb"] == pytest.approx(expected)
    assert mid_done["pretrain_val_bpb"] != pytest.approx(mid_done["val_bpb"])
    evals = read_metrics(home / "checkpoints" / "mid" / "metrics.jsonl", "eval")
    assert [("pretrain_val_bpb" in r) for r in evals] == [False, False, True]  # steps 0 and 2, then the end
    assert f"pretraining val bpb {mid_done['pretrain_val_bpb']:.4f}" in capsys.readouterr().out


def test_a_missing_previous_stage_names_the_command(home):
    with pytest.raises(UserError, match=r"--stage sft starts from the newest mid checkpoint, and there is none in .*"
                                        r"run `picochat train --stage mid` first"):
        run(flags_dict(*TINY, "--stage", "sft", "--num-iterations", "1", "--home", str(home)))


def test_all_masked_micro_batches_through_the_sft_stage_add_zero(chat_home):
    """Rows of 8 tokens: some fall wholly inside a user's turn, so every target is masked. Such a step's
    loss is exactly 0 and never NaN (a mean over zero tokens would be), and the run goes on."""
    from picochat.data.conversations import ConversationLoader
    from picochat.stages import sft_mixture
    from picochat.tokenizer import load_tokenizer
    config = train_module.TrainConfig(home=str(chat_home), seed=42)
    loader = ConversationLoader(load_tokenizer(chat_home), sft_mixture(config, "train"), 1, 8, seed=42)
    masked_steps = [step for step in range(1, 41) if (next(loader)[1] < 0).all()]
    assert masked_steps, "no all-masked micro-batch in 40 steps: make the rows shorter"
    run(flags_dict(*TINY, "--stage", "sft", "--device-batch-size", "1", "--max-seq-len", "8", "--num-iterations", "40",
                   "--eval-every", "0", "--home", str(chat_home)))
    got = losses(chat_home, "sft")
    assert sorted(got) == list(range(1, 41))
    assert all(got[step] == 0.0 for step in masked_steps)
    assert all(got[step] > 0 for step in got if step not in masked_steps)


def test_sft_resumes_exactly_after_an_interruption(chat_home, tmp_path, monkeypatch):
    flags = (*TINY, "--stage", "sft", "--num-iterations", "10", "--save-every", "5", "--eval-every", "5")
    reference = tmp_path / "reference"
    run_interrupted(chat_home, reference, monkeypatch, flags, 4, "--stage", "sft")
    assert losses(chat_home, "sft") == losses(reference, "sft") and len(losses(reference, "sft")) == 10


# ---- --if-needed: done, interrupted or stale -------------------------------------------------------------

def test_if_needed_skips_a_finished_stage_and_names_what_made_one_stale(home, corpus_documents, capsys):
    def base(steps: int = 2) -> dict:
        return flags_dict(*TINY, "--num-iterations", str(steps), "--if-needed", "--home", str(home))
    mid = flags_dict(*TINY, "--stage", "mid", "--num-iterations", "2", "--if-needed", "--home", str(home))
    run(base())
    run(mid)
    done = home / "checkpoints" / "mid" / "done.json"
    before = done.read_bytes()
    capsys.readouterr()
    assert run(base()).step == 2 and run(mid).step == 2
    out = capsys.readouterr().out
    assert f"base: already trained ({home / 'checkpoints' / 'base' / 'done.json'})" in out
    assert "mid: already trained" in out and done.read_bytes() == before  # nothing ran

    def stale(flags: dict) -> str:
        run(flags)
        return [line for line in capsys.readouterr().out.splitlines() if "stale" in line][0]

    assert stale(base(3)) == "base: stale: the settings changed since it was trained; training again"
    assert stale(mid) == "mid: stale: the output of the step before it changed since it was trained; training again"
    load_tokenizer(home).save(tokenizer_dir(home), trained_at="again")  # the same merges, trained again
    assert stale(base(3)).startswith("base: stale: the output of the step before it changed")
    Tokenizer.train((d.text for d in corpus_documents), 400).save(tokenizer_dir(home))
    assert stale(base(3)).startswith("base: stale: the tokenizer changed")
    assert stale(mid).startswith("mid: stale: the tokenizer changed")
    assert list((home / "checkpoints" / "mid").glob("previous-*/done.json"))  # stale runs are set aside
    done.write_text('{"step": 2')  # cut short by hand
    assert run(mid).step == 2
    assert f"mid: {done} does not record what the stage was made from; training again" in capsys.readouterr().out
    write_corpus(corpus_documents[:250], corpus_dir(home), shard_bytes=40_000, description={"source": "offline"})
    assert stale(base(3)).startswith("base: stale: the corpus changed")


def test_if_needed_resumes_an_interrupted_run_and_restarts_a_changed_one(home, tiny_home, tmp_path, monkeypatch,
                                                                         capsys):
    def flags(where: Path, steps: int = 6) -> dict:
        return flags_dict(*TINY, "--num-iterations", str(steps), "--save-every", "1", "--if-needed",
                          "--home", str(where))

    def stopped_at_step_3() -> None:
        with monkeypatch.context() as patch:
            stop_after(patch, 3)
            assert run(flags(home)).step == 3
        capsys.readouterr()

    stopped_at_step_3()
    assert run(flags(home, 7)).step == 7
    assert ("base: the settings changed since the interrupted run started; starting again"
            in capsys.readouterr().out)
    stopped_at_step_3()  # stale (6 steps now), started again and stopped
    assert run(flags(home)).step == 6
    out = home / "checkpoints" / "base"
    assert f"base: resuming the interrupted run from {out / 'step_000003.pt'}" in capsys.readouterr().out
    reference = Path(shutil.copytree(tiny_home, tmp_path / "reference"))
    run(flags(reference))
    assert losses(home) == losses(reference)  # the same run as an uninterrupted one


def test_if_needed_and_resume_together_are_one_line_error(home):
    with pytest.raises(UserError, match=r"^give --resume or --if-needed, not both"):
        run(flags_dict(*TINY, "--num-iterations", "2", "--resume", "--if-needed", "--home", str(home)))
