"""Run by test_step.py under torchrun (2 processes, gloo): a few training steps on fixed batches with the
gradients summed over ranks as the training loop does, once per --grad-sync mode (overlap: DDP; after:
all-reduces), with one micro-batch per rank and with two (gradient accumulation: DDP's no_sync path); then rank 0 repeats them in one process with
gradient accumulation over both ranks' batches. Rank 1 starts from other weights: prepare_model must
replace them with rank 0's. Each run saves the gradients of its first step (before any update) and its
final model and optimizer state dicts, for the test to compare tensor by tensor.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py OUT_DIR [tied|untied]
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from picochat.common import IGNORE_INDEX
from picochat.runtime import Runtime, end_torchrun_worker, setup_runtime
from picochat.model import GPT, GPTConfig
from picochat.optim import OptimConfig, build_optimizers
from picochat.runtime import prepare_model
from picochat.step import forward_backward, sum_gradients, train_step
from picochat.data.loader import Batch


def batches_for(rank: int, step: int, micro: int = 0) -> Batch:
    generator = torch.Generator().manual_seed(1000 * step + 10 * micro + rank)
    inputs = torch.randint(0, 64, (2, 16), generator=generator)
    targets = torch.randint(0, 64, (2, 16), generator=generator)
    if rank == 1:
        targets[:, : 4 + step] = IGNORE_INDEX  # unequal counts per rank: normalisation must be global
    return Batch(inputs, targets)


def train(runtime: Runtime, model: GPT, ranks_per_step: list[int], grad_sync: str = "overlap",
          micro_batches: int = 1) -> dict:
    step_model = prepare_model(model, runtime, grad_sync)
    optimizers = build_optimizers(model, OptimConfig(), torch.float32)
    batches = lambda step: [batches_for(r, step, m) for r in ranks_per_step for m in range(micro_batches)]
    forward_backward(step_model, batches(0), runtime)  # the first step's gradients, before any update
    sum_gradients(step_model, model, runtime)
    gradients = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    losses = [train_step(step_model, model, optimizers, batches(step), runtime) for step in range(4)]
    return {"losses": losses, "gradients": gradients, "model": model.state_dict(),
            "optimizers": [optimizer.state_dict() for optimizer in optimizers]}


def fresh_model(seed: int = 0, tied: bool = False) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(sequence_len=16, vocab_size=64, n_layer=2, n_embd=64, n_head=1, n_kv_head=1,
                         tie_embeddings=tied))


def main(out: Path, tied: bool) -> None:
    runtime = setup_runtime("cpu", "float32")
    for grad_sync in ("overlap", "after"):
        for micro_batches in (1, 2):
            torch.save(train(runtime, fresh_model(runtime.rank, tied), [runtime.rank], grad_sync, micro_batches),
                       out / f"{grad_sync}-{micro_batches}-rank{runtime.rank}.pt")
    if runtime.rank == 0:
        single_runtime = Runtime(torch.device("cpu"), torch.float32)
        torch.save(train(single_runtime, fresh_model(0, tied), [0, 1]), out / "single.pt")
    dist.barrier()
    dist.destroy_process_group()
    end_torchrun_worker(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:] == ["tied"])
