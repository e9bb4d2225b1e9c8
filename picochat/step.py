"""One optimizer step: forward and backward over a rank's micro-batches (gradient accumulation), the
gradients summed over ranks, then the update. The loop in train.py calls train_step once per step.

The loss of a step is the mean over every unmasked target of every micro-batch on every rank, so 8 GPUs
with one micro-batch each and one GPU with 8 micro-batches take the same step.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from picochat.loss import valid_targets
from picochat.runtime import Runtime, ddp_of


def train_step(step_model: torch.nn.Module, model: torch.nn.Module, optimizers: list, batches: list, runtime: Runtime,
               update_if=lambda loss: True) -> float:
    """One optimizer step over `batches` (the micro-batches of this rank); returns the step's mean loss.
    update_if(loss) may veto the update (a non-finite loss); the gradients are cleared either way."""
    loss = forward_backward(step_model, batches, runtime)
    sum_gradients(step_model, model, runtime)
    update = update_if(loss)
    for optimizer in optimizers:
        if update:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss


def forward_backward(step_model: torch.nn.Module, batches: list, runtime: Runtime) -> float:
    """Accumulate gradients of sum(token losses) / (unmasked targets over all micro-batches and ranks); a
    Batch with weights weighs each token's loss (RL's advantages).

    Counting first means an all-masked micro-batch adds exactly 0 to loss and gradients, never NaN.
    Under DDP only the last micro-batch's backward syncs, and since DDP averages over ranks where we want
    the sum, each rank's loss is scaled by world_size. Returns the step's mean loss over all ranks."""
    count = sum(valid_targets(batch.targets).sum() for batch in batches)
    loss_sum = torch.zeros((), device=runtime.device)
    if runtime.distributed:
        dist.all_reduce(count)
    ddp = ddp_of(step_model)
    scale = (runtime.world_size if ddp else 1) / count.clamp(min=1)
    for index, batch in enumerate(batches):
        last = index == len(batches) - 1
        with ddp.no_sync() if ddp and not last else contextlib.nullcontext():
            with runtime.autocast():
                loss = step_model(batch.inputs, batch.targets, token_weights=batch.weights)
            (loss * scale).backward()
        loss_sum += loss.detach()
    if runtime.distributed:
        dist.all_reduce(loss_sum)
    return (loss_sum / count.clamp(min=1)).item()


def sum_gradients(step_model: torch.nn.Module, model: torch.nn.Module, runtime: Runtime) -> None:
    """Sum every gradient over ranks, where DDP did not already do it during backward (--grad-sync after):
    one all-reduce per parameter after the last micro-batch, nothing overlapped. Each rank's part is
    already divided by the global token count."""
    if not runtime.distributed or ddp_of(step_model):
        return
    pending = [dist.all_reduce(p.grad, async_op=True) for p in model.parameters()]
    for work in pending:
        work.wait()
