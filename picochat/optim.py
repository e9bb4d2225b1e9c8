"""Optimisers and the learning-rate schedule.

Muon (momentum + Newton-Schulz orthogonalisation) trains the 2-D weight matrices inside the blocks;
AdamW trains the token embedding and the lm_head (one matrix when they are tied). Under torchrun the
gradients arrive already summed over ranks, so every rank computes the same update. The schedule is a
function of progress (0..1), so the same code serves a fixed number of steps and a time budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from picochat.common import UserError

from picochat.config import option, require_at_least


@dataclass
class OptimConfig:
    matrix_lr: float = option(0.02, "Muon learning rate for the block matrices")
    embedding_lr: float = option(0.2, "AdamW learning rate for the token embedding (scaled by width)")
    unembedding_lr: float = option(0.004, "AdamW learning rate for the lm_head (scaled by width)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    warmup_ratio: float = option(0.0, "fraction of training spent warming the LR up from 0")
    warmdown_ratio: float = option(0.2, "fraction of training at the end spent decaying the LR")
    final_lr_frac: float = option(0.0, "LR at the very end, as a fraction of the peak")

    def __post_init__(self):
        require_at_least(self, 0, ("matrix_lr", "embedding_lr", "unembedding_lr", "weight_decay"))
        if not (0 <= self.warmup_ratio <= 1 and 0 <= self.warmdown_ratio <= 1
                and self.warmup_ratio + self.warmdown_ratio <= 1):
            raise UserError("--warmup-ratio and --warmdown-ratio must be in [0, 1] and sum to at most 1")
        if not 0 <= self.final_lr_frac <= 1:
            raise UserError(f"--final-lr-frac must be in [0, 1], got {self.final_lr_frac}")


def lr_multiplier(progress: float, warmup: float, warmdown: float, final_frac: float) -> float:
    """Warmup (linear from 0) -> constant 1 -> warmdown (linear to final_frac), over progress in [0, 1]."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return progress / warmup
    if warmdown > 0 and progress > 1 - warmdown:
        return final_frac + (1 - final_frac) * (1 - progress) / warmdown
    return 1.0


@torch.no_grad()
def orthogonalize(G: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Approximately U V^T of G = U S V^T via a quintic Newton-Schulz iteration (Keller Jordan's Muon).

    The coefficients push all singular values towards ~1 in a few steps; it runs fine in bf16."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.to(dtype)
    tall = X.size(-2) > X.size(-1)
    if tall:  # iterate on the smaller Gram matrix
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X
    return (X.mT if tall else X).to(G.dtype)


class Muon(torch.optim.Optimizer):
    """SGD-momentum (Nesterov) whose update is orthogonalised; for 2-D weight matrices only."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, ns_steps: int = 5,
                 ns_dtype: torch.dtype = torch.bfloat16):
        super().__init__(params, dict(lr=lr, momentum=momentum, ns_steps=ns_steps))
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buffer = state["momentum_buffer"]
                buffer.lerp_(p.grad, 1 - group["momentum"])
                update = p.grad.lerp(buffer, group["momentum"])  # Nesterov look-ahead
                update = orthogonalize(update, group["ns_steps"], self.ns_dtype)
                # Scale so the update's RMS does not shrink for tall matrices.
                scale = max(1.0, p.size(-2) / p.size(-1)) ** 0.5
                p.add_(update, alpha=-group["lr"] * scale)


def build_optimizers(model, config: OptimConfig, compute_dtype: torch.dtype) -> list[torch.optim.Optimizer]:
    """AdamW for embedding + lm_head, Muon for everything in the blocks (all 2-D, no biases). A tied matrix
    trains at the lm_head's LR, the best of those tried for it (base, depth 3, 308 steps: val bpb 1.703,
    1.680, 1.684 and 1.700 at 0.002, 0.004, 0.008 and 0.02)."""
    width_scale = (model.config.n_embd / 768) ** -0.5  # nanochat tuned the AdamW LRs at width 768
    matrices = list(model.blocks.parameters())
    assert all(p.dim() == 2 for p in matrices), "Muon only handles matrices"
    fused = model.lm_head.weight.device.type == "cuda"
    head = dict(params=[model.lm_head.weight], lr=config.unembedding_lr * width_scale)
    embedding = dict(params=[model.wte.weight], lr=config.embedding_lr * width_scale)
    groups = [head] if model.config.tie_embeddings else [embedding, head]
    adamw = torch.optim.AdamW(groups, betas=(0.8, 0.95), eps=1e-10, weight_decay=config.weight_decay,
                              fused=fused or None)
    ns_dtype = torch.bfloat16 if compute_dtype == torch.bfloat16 else torch.float32
    muon = Muon(matrices, lr=config.matrix_lr, ns_dtype=ns_dtype)
    optimizers = [adamw, muon]
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"]
    return optimizers


def set_lr(optimizers: list[torch.optim.Optimizer], multiplier: float) -> None:
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * multiplier
