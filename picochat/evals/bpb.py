"""Validation bits per byte (bpb): the loss in bits, divided by the UTF-8 bytes the targets stand for.

Unlike the loss per token, bpb does not change when the vocabulary does, so runs with different
tokenizers compare. Special tokens (0 bytes) and masked targets are left out of both sums.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.distributed as dist

from picochat.common import UserError
from picochat.loss import valid_targets


@torch.no_grad()
def evaluate_bpb(model, batches: Iterable, token_bytes: torch.Tensor, max_tokens: int, runtime) -> float:
    """Mean bits per byte over about max_tokens target tokens (split across ranks)."""
    token_bytes = token_bytes.to(runtime.device)
    nats = torch.zeros((), dtype=torch.float64, device=runtime.device)
    n_bytes = torch.zeros((), dtype=torch.float64, device=runtime.device)
    seen, budget = 0, max(1, max_tokens // runtime.world_size)
    was_training = model.training
    model.eval()
    for batch in batches:
        targets = batch.targets
        with runtime.autocast():
            losses = model(batch.inputs, targets, reduction="none")  # (B, T) nats per token
        bytes_per_target = token_bytes[targets.clamp(min=0)] * valid_targets(targets)
        nats += (losses.double() * (bytes_per_target > 0)).sum()
        n_bytes += bytes_per_target.sum()
        seen += targets.numel()
        if seen >= budget:
            break
    model.train(was_training)
    if runtime.distributed:
        dist.all_reduce(nats)
        dist.all_reduce(n_bytes)
    if n_bytes.item() == 0:
        raise UserError("no validation bytes to score: the val split is shorter than one batch "
                        "(lower --device-batch-size or --max-seq-len)")
    return (nats / (math.log(2) * n_bytes)).item()


def check_val_batches(batches: Iterable, runtime, batch_shape: tuple[int, int]) -> None:
    """Fail before training rather than after it when not one rank gets a single val batch."""
    has_batch = next(iter(batches), None) is not None
    ranks_with_a_batch = torch.tensor(float(has_batch), device=runtime.device)
    if runtime.distributed:  # a rank may get none when the val shard has fewer row groups than ranks
        dist.all_reduce(ranks_with_a_batch)
    if ranks_with_a_batch.item() == 0:
        raise UserError(f"the val split is shorter than one batch of {batch_shape[0]} x {batch_shape[1]} tokens; "
                        "lower --device-batch-size or --max-seq-len")
