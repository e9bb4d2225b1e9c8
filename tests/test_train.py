"""The one training loop: loss normalisation, learning, exact resume after kill -9, signals, corrupt
checkpoints, non-finite losses, torch.compile fallback, and 2 processes on gloo."""

import argparse
import json
import os
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

from picochat.checkpoint import list_checkpoints, load_latest
from picochat.common import Runtime, UserError
from picochat.common import IGNORE_INDEX
from picochat.model import GPT, GPTConfig
from picochat import config as cfg
from picochat.optim import OptimConfig
from picochat.train import TrainConfig, forward_backward, run

TINY = ["--depth", "1", "--max-seq-len", "32", "--device-batch-size", "2", "--dtype", "float32",
        "--compile", "false", "--eval-tokens", "256", "--device", "cpu"]


@pytest.fixture
def home(fresh_home) -> Path:
    """A private PICOCHAT_HOME with the shared tiny corpus and tokenizer (conftest.py)."""
    return fresh_home


def cli(home: Path, *flags: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "PICOCHAT_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-m", "picochat.cli", "train", *TINY, *flags], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def losses(home: Path) -> dict[int, float]:
    lines = (home / "checkpoints" / "base" / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def val_bpbs(home: Path) -> list[float]:
    lines = (home / "checkpoints" / "base" / "metrics.jsonl").read_text().splitlines()
    return [r["val_bpb"] for r in map(json.loads, lines) if "val_bpb" in r]


# ---- loss normalisation ----------------------------------------------------------------------------------

def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(sequence_len=16, vocab_size=64, n_layer=1, n_embd=64, n_head=1, n_kv_head=1))


def grads_after(model: GPT, batches) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = forward_backward(model, batches, Runtime(torch.device("cpu"), torch.float32))
    return loss, [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def test_all_masked_micro_batch_adds_exactly_zero():
    model = tiny_model()
    x, y = torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16))
    masked = torch.full_like(y, IGNORE_INDEX)
    loss_alone, grads_alone = grads_after(model, [(x, y)])
    loss_with, grads_with = grads_after(model, [(x, masked), (x, y), (x, masked)])
    assert loss_with == pytest.approx(loss_alone, rel=1e-6)
    for a, b in zip(grads_alone, grads_with):
        assert torch.allclose(a, b, atol=1e-7)


def test_fully_masked_step_gives_zero_loss_and_no_nan():
    model = tiny_model()
    x = torch.randint(0, 64, (2, 16))
    loss, grads = grads_after(model, [(x, torch.full_like(x, IGNORE_INDEX))] * 2)
    assert loss == 0.0
    assert all(torch.isfinite(g).all() and torch.count_nonzero(g) == 0 for g in grads)


def test_loss_is_mean_over_unmasked_tokens_across_micro_batches():
    model = tiny_model()
    x = torch.randint(0, 64, (2, 16))
    y1, y2 = torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16))
    y2[:, :10] = IGNORE_INDEX
    loss, _ = grads_after(model, [(x, y1), (x, y2)])
    with torch.no_grad():
        total = model(x, y1) + model(x, y2)
    assert loss == pytest.approx(total.item() / (32 + 12), rel=1e-5)


# ---- end to end, in process ------------------------------------------------------------------------------

def flags_dict(*flags: str) -> dict:
    """Parse flags exactly as `picochat train` does, for in-process runs."""
    parser = argparse.ArgumentParser()
    for config_class in (TrainConfig, OptimConfig):
        cfg.add_arguments(parser, config_class)
    return vars(parser.parse_args(list(flags)))


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
    import picochat.train as train_module
    real, calls = train_module.forward_backward, []

    def flaky(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return float("nan") if len(calls) == 2 else loss
    monkeypatch.setattr(train_module, "forward_backward", flaky)


def test_nonfinite_loss_stops_naming_the_step_without_a_checkpoint(home, monkeypatch):
    nan_on_step_two(monkeypatch)
    with pytest.raises(ValueError, match="loss is nan at step 2; stopped without writing a checkpoint"):
        run(flags_dict(*TINY, "--num-iterations", "4", "--save-every", "1", "--home", str(home)))
    out = home / "checkpoints" / "base"
    assert [p.name for p in list_checkpoints(out)] == ["step_000001.pt"]  # the good one stays


def test_nonfinite_loss_can_be_skipped(home, monkeypatch):
    nan_on_step_two(monkeypatch)
    state = run(flags_dict(*TINY, "--num-iterations", "4", "--on-nonfinite", "skip", "--home", str(home)))
    assert state.step == 4 and state.skipped_steps == 1
    _, checkpoint = load_latest(home / "checkpoints" / "base")
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values())


def test_compile_failure_falls_back_to_eager(home, monkeypatch, capsys):
    def broken_compile(model, *args, **kwargs):
        def fail(*a, **k):
            raise RuntimeError("no C++ compiler found\nmore detail")
        return fail
    monkeypatch.setattr(torch, "compile", broken_compile)
    state = run(flags_dict(*TINY, "--compile", "true", "--num-iterations", "2", "--home", str(home)))
    assert state.step == 2
    assert "torch.compile is not available here (RuntimeError: no C++ compiler found); training eager" \
        in capsys.readouterr().out


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
    with pytest.raises(ValueError, match="--num-iterations or --time-budget, not both"):
        run(flags_dict(*TINY, "--num-iterations", "1", "--time-budget", "1", "--home", str(home)))
    with pytest.raises(ValueError, match="--total-batch-size"):
        run(flags_dict(*TINY, "--total-batch-size", "100", "--num-iterations", "1", "--home", str(home)))
    with pytest.raises(UserError, match="no checkpoint to resume from"):
        run(flags_dict(*TINY, "--resume", "--num-iterations", "1", "--home", str(home)))
    with pytest.raises(ValueError, match="val split is shorter than one batch of 2 x 100000 tokens"):
        run(flags_dict(*TINY, "--max-seq-len", "100000", "--num-iterations", "1", "--home", str(home)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail, as where it is not installed
        with pytest.raises(ValueError, match="--wandb needs the wandb package"):
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
    assert cli(reference, *flags).wait(timeout=300) == 0
    process = cli(home, *flags)
    out = home / "checkpoints" / "base"
    wait_for(lambda: (out / "step_000030.pt").exists(), process)
    process.kill()  # SIGKILL: no chance to clean up
    process.wait()
    killed_at = load_latest(out)[1]["train_state"]["step"]
    assert killed_at < 300, "the run finished before it could be killed"
    resumed = cli(home, *flags, "--resume")
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    expected, got = losses(reference), losses(home)
    assert sorted(got) == list(range(1, 301))  # no gaps, no duplicates
    for step in range(1, 301):
        assert got[step] == pytest.approx(expected[step], abs=1e-5), step
    assert val_bpbs(home)[-1] == pytest.approx(val_bpbs(reference)[-1], abs=1e-5)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_signal_checkpoints_and_exits_zero(home, signum):
    process = cli(home, "--num-iterations", "100000", "--eval-every", "0")
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
    result = cli(home, "--num-iterations", "6", "--resume").communicate(timeout=120)[0]
    assert f"checkpoint {latest} is corrupt or truncated" in result
    assert "falling back to the previous checkpoint" in result
    assert f"resuming from {out / 'step_000002.pt'}" in result
    _, checkpoint = load_latest(out)
    assert checkpoint["train_state"]["step"] == 6
    with pytest.raises(ValueError, match="is corrupt or truncated"):
        run(flags_dict(*TINY, "--num-iterations", "8", "--resume", str(latest), "--home", str(home)))


@pytest.mark.parametrize("content", [b"not a checkpoint\n", b""])
def test_resume_from_a_file_that_is_not_a_checkpoint_is_one_line(home, tmp_path, content):
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(content)
    result = subprocess.run([sys.executable, "-m", "picochat.cli", "train", *TINY, "--resume", str(bogus)],
                            env={**os.environ, "PICOCHAT_HOME": str(home)}, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith(f"picochat: error: checkpoint {bogus} is corrupt or truncated (")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_torch_file_that_is_not_a_picochat_checkpoint_is_skipped(home):
    run(flags_dict(*TINY, "--num-iterations", "2", "--save-every", "1", "--home", str(home)))
    out = home / "checkpoints" / "base"
    torch.save({"weights": torch.zeros(2)}, out / "step_000009.pt")
    with pytest.raises(ValueError, match="is not a picochat checkpoint"):
        run(flags_dict(*TINY, "--num-iterations", "3", "--resume", str(out / "step_000009.pt"),
                       "--home", str(home)))
    state = run(flags_dict(*TINY, "--num-iterations", "3", "--resume", "--home", str(home)))
    assert state.step == 3  # --resume latest skipped the stranger and went on from step 2


# ---- data parallel on CPU: 2 processes, gloo -------------------------------------------------------------

@pytest.mark.slow
def test_two_process_gloo_matches_one_process(home, tmp_path):
    """2 gloo processes equal 1 process accumulating both ranks' batches: same losses, same weights.
    ddp_worker.py feeds both runs identical batches (the real loader gives ranks different data)."""
    worker = Path(__file__).parent / "ddp_worker.py"
    results = tmp_path / "results"
    results.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(worker), str(results)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    ranks = [json.loads((results / f"rank{r}.json").read_text()) for r in range(2)]
    single = json.loads((results / "single.json").read_text())
    assert ranks[0]["param_sum"] == ranks[1]["param_sum"]  # identical weights on both ranks
    for a, b in zip(ranks[0]["losses"], single["losses"]):
        assert a == pytest.approx(b, rel=1e-5)
    assert ranks[0]["param_sum"] == pytest.approx(single["param_sum"], rel=1e-5)


@pytest.mark.slow
def test_torchrun_cli_trains_and_resumes_with_two_processes(home):
    env = {**os.environ, "PICOCHAT_HOME": str(home)}
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "picochat.cli", "train", *TINY, "--eval-every", "2"]
    first = subprocess.run(base + ["--num-iterations", "3"], env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    _, checkpoint = load_latest(home / "checkpoints" / "base")
    assert len(checkpoint["loaders"]) == 2 and checkpoint["loaders"][0] != checkpoint["loaders"][1]
    second = subprocess.run(base + ["--num-iterations", "5", "--resume"], env=env, capture_output=True,
                            text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert sorted(losses(home)) == [1, 2, 3, 4, 5]
