"""One optimizer step (step.py): the loss is the mean over every unmasked target of every micro-batch on
every rank, an all-masked micro-batch adds exactly zero, a vetoed update leaves every weight and buffer as
it was, and 2 processes on gloo take the step 1 process takes with both ranks' batches.

    python -m pytest tests/test_step.py            # add -m "not slow" to skip the two-process one
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from picochat import step as step_module
from picochat import train as train_module
from picochat.common import IGNORE_INDEX
from picochat.data.loader import Batch
from picochat.model import GPT, GPTConfig
from picochat.optim import OptimConfig, build_optimizers
from picochat.runtime import Runtime
from picochat.step import forward_backward, train_step


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
    loss_alone, grads_alone = grads_after(model, [Batch(x, y)])
    loss_with, grads_with = grads_after(model, [Batch(x, masked), Batch(x, y), Batch(x, masked)])
    assert loss_with == pytest.approx(loss_alone, rel=1e-6)
    for a, b in zip(grads_alone, grads_with):
        assert torch.allclose(a, b, atol=1e-7)


def test_fully_masked_step_gives_zero_loss_and_no_nan():
    model = tiny_model()
    x = torch.randint(0, 64, (2, 16))
    loss, grads = grads_after(model, [Batch(x, torch.full_like(x, IGNORE_INDEX))] * 2)
    assert loss == 0.0
    assert all(torch.isfinite(g).all() and torch.count_nonzero(g) == 0 for g in grads)


def test_loss_is_mean_over_unmasked_tokens_across_micro_batches():
    model = tiny_model()
    x = torch.randint(0, 64, (2, 16))
    y1, y2 = torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16))
    y2[:, :10] = IGNORE_INDEX
    loss, _ = grads_after(model, [Batch(x, y1), Batch(x, y2)])
    with torch.no_grad():
        total = model(x, y1) + model(x, y2)
    assert loss == pytest.approx(total.item() / (32 + 12), rel=1e-5)


# ---- a vetoed update ------------------------------------------------------------------------------------


def snapshot(model: GPT, optimizers: list) -> list[torch.Tensor]:
    """Every weight and every optimizer buffer (momentum, Adam moments, step counts), cloned."""
    tensors = [p.detach().clone() for p in model.parameters()]
    for optimizer in optimizers:
        for state in optimizer.state.values():
            tensors += [v.clone() for v in state.values() if torch.is_tensor(v)]
    return tensors


def test_skipped_step_leaves_weights_and_optimizer_state_unchanged(monkeypatch):
    """The skipped step has real, finite gradients (only the reported loss is NaN), so an update would
    change every weight and buffer: all of them must still match the snapshot bit for bit."""
    model, runtime = tiny_model(), Runtime(torch.device("cpu"), torch.float32)
    optimizers = build_optimizers(model, OptimConfig(), torch.float32)
    batch = [Batch(torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16)))]
    train_step(model, model, optimizers, batch, runtime)  # from here on the optimizers have state
    train_step(model, model, optimizers, batch, runtime)  # and the residual projections are non-zero
    before = snapshot(model, optimizers)
    state, config = train_module.TrainState(), train_module.TrainConfig(on_nonfinite="skip")
    real = step_module.forward_backward
    monkeypatch.setattr(step_module, "forward_backward", lambda *args: real(*args) * float("nan"))
    train_step(model, model, optimizers, batch, runtime,
               update_if=lambda loss: train_module.check_loss(loss, state, config))
    assert state.skipped_steps == 1
    assert all(p.grad is None for p in model.parameters())  # cleared for the next step
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot(model, optimizers)))
    monkeypatch.setattr(step_module, "forward_backward", real)
    train_step(model, model, optimizers, batch, runtime)  # the same step, not skipped, changes them all
    assert not any(torch.equal(a, b) for a, b in zip(before, snapshot(model, optimizers)))


# ---- data parallel on CPU: 2 processes, gloo -------------------------------------------------------------


def tensors(tree) -> list[tuple[str, torch.Tensor]]:
    """(path, tensor) for every tensor in nested dicts and lists: a state dict, an optimizer's, ..."""
    if torch.is_tensor(tree):
        return [("", tree)]
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else []
    return [(f"{key}/{path}", tensor) for key, value in items for path, tensor in tensors(value)]


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["untied", "tied"])  # tied: one parameter that two modules use
def test_two_process_gloo_matches_one_process(tmp_path, shape):
    """2 gloo processes equal 1 process accumulating both ranks' batches: the first step's gradients,
    every loss, and every parameter and optimizer buffer after 4 steps, whether DDP syncs the gradients
    during backward (overlap) or all-reduces follow it (after). Averaging the gradients over ranks instead
    of summing them halves the first gradients and fails here (checked by breaking sum_gradients once, and
    DDP's loss scale once). With gradient accumulation the two modes agree to the bit. ddp_worker.py feeds
    all runs identical batches."""
    worker = Path(__file__).parent / "ddp_worker.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(worker), str(tmp_path), shape]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    load = lambda name: torch.load(tmp_path / f"{name}.pt", weights_only=True)
    single = load("single")
    for grad_sync in ("overlap", "after"):
        rank0, rank1 = load(f"{grad_sync}-1-rank0"), load(f"{grad_sync}-1-rank1")
        assert rank0["losses"] == pytest.approx(single["losses"], rel=1e-5)
        for key in ("gradients", "model", "optimizers"):
            ours, theirs, other_rank = tensors(rank0[key]), tensors(single[key]), tensors(rank1[key])
            assert [path for path, _ in ours] == [path for path, _ in theirs] and len(ours) > 10
            for (path, a), (_, b), (_, c) in zip(ours, theirs, other_rank):
                assert torch.equal(a, c), f"{grad_sync}: ranks differ at {key}/{path}"
                assert torch.allclose(a.double(), b.double(), rtol=1e-5, atol=1e-7), f"{grad_sync}: {key}/{path}"
    overlap, after = load("overlap-2-rank0"), load("after-2-rank0")
    assert overlap["losses"] == after["losses"]
    for key in ("gradients", "model", "optimizers"):
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(tensors(overlap[key]), tensors(after[key]))), key
