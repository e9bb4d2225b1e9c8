"""Run by test_train.py under torchrun (2 processes, gloo): train a few steps with DDP on fixed batches,
then rank 0 repeats the same steps in one process with gradient accumulation over both ranks' batches."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from picochat.common import Runtime, setup_runtime
from picochat.data.loader import IGNORE_INDEX
from picochat.model import GPT, GPTConfig
from picochat.optim import OptimConfig, build_optimizers
from picochat.train import forward_backward


def batches_for(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 * step + rank)
    inputs = torch.randint(0, 64, (2, 16), generator=generator)
    targets = torch.randint(0, 64, (2, 16), generator=generator)
    if rank == 1:
        targets[:, : 4 + step] = IGNORE_INDEX  # unequal counts per rank: normalisation must be global
    return inputs, targets


def train(runtime: Runtime, model: torch.nn.Module, plain: GPT, ranks_per_step: list[int]) -> dict:
    optimizers = build_optimizers(plain, OptimConfig(), torch.float32)
    losses = []
    for step in range(4):
        loss = forward_backward(model, [batches_for(r, step) for r in ranks_per_step], runtime)
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        losses.append(loss)
    return {"losses": losses, "param_sum": sum(p.double().sum().item() for p in plain.parameters())}


def fresh_model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(sequence_len=16, vocab_size=64, n_layer=2, n_embd=64, n_head=1, n_kv_head=1))


def main(out: Path) -> None:
    runtime = setup_runtime("cpu", "float32")
    plain = fresh_model()
    ddp = torch.nn.parallel.DistributedDataParallel(plain)
    result = train(runtime, ddp, plain, [runtime.rank])
    (out / f"rank{runtime.rank}.json").write_text(json.dumps(result))
    if runtime.rank == 0:
        single_runtime = Runtime(torch.device("cpu"), torch.float32)
        single = fresh_model()
        (out / "single.json").write_text(json.dumps(train(single_runtime, single, single, [0, 1])))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
