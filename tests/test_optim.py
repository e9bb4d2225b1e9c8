"""Muon, the optimizer split and the LR schedule.

    python -m pytest tests/test_optim.py
"""

import pytest
import torch

from picochat.model import GPT, GPTConfig
from picochat.optim import Muon, OptimConfig, build_optimizers, lr_multiplier, orthogonalize, set_lr


def test_orthogonalize_pushes_singular_values_towards_one():
    torch.manual_seed(0)
    for shape in [(64, 32), (32, 64)]:  # tall and wide
        G = torch.randn(*shape) * 3
        before = torch.linalg.svdvals(G)
        after = torch.linalg.svdvals(orthogonalize(G, dtype=torch.float32))
        assert before.max() / before.min() > 4  # a spread-out spectrum ...
        assert after.max() < 1.3 and after.min() > 0.6, after  # ... squeezed around 1


def test_lr_schedule_shapes():
    assert lr_multiplier(0.0, 0.1, 0.2, 0.0) == 0.0
    assert lr_multiplier(0.05, 0.1, 0.2, 0.0) == pytest.approx(0.5)
    assert lr_multiplier(0.5, 0.1, 0.2, 0.0) == 1.0
    assert lr_multiplier(0.9, 0.1, 0.2, 0.1) == pytest.approx(0.55)
    assert lr_multiplier(1.0, 0.0, 0.2, 0.1) == pytest.approx(0.1)
    assert lr_multiplier(0.5, 0.0, 0.0, 0.0) == 1.0


def test_optim_config_rejects_bad_values_naming_the_flag():
    with pytest.raises(ValueError, match="--matrix-lr"):
        OptimConfig(matrix_lr=-1)
    with pytest.raises(ValueError, match="--warmup-ratio"):
        OptimConfig(warmup_ratio=0.7, warmdown_ratio=0.5)


@pytest.mark.parametrize("tied", [False, True])
def test_build_optimizers_covers_every_parameter_once_and_set_lr_scales(tied):
    model = GPT(GPTConfig(sequence_len=16, vocab_size=128, n_layer=2, n_embd=64, n_head=1, n_kv_head=1,
                          tie_embeddings=tied))
    adamw, muon = build_optimizers(model, OptimConfig(), torch.float32)
    seen = [id(p) for opt in (adamw, muon) for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())
    head_lr = OptimConfig().unembedding_lr * (64 / 768) ** -0.5
    assert adamw.param_groups[-1]["lr"] == pytest.approx(head_lr)  # a tied matrix too trains at the head's LR
    assert all(p.dim() == 2 for g in muon.param_groups for p in g["params"])
    set_lr([adamw, muon], 0.5)
    assert muon.param_groups[0]["lr"] == pytest.approx(0.5 * OptimConfig().matrix_lr)


def test_muon_reduces_a_matrix_regression_loss():
    torch.manual_seed(0)
    target = torch.randn(32, 16)
    weight = torch.nn.Parameter(torch.zeros(32, 16))
    optimizer = Muon([weight], lr=0.05, ns_dtype=torch.float32)
    losses = []
    for _ in range(60):
        loss = (weight - target).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
