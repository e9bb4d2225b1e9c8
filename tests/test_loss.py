"""The fused lm_head + soft-cap + cross-entropy: value and gradients against plain PyTorch, masking, and
per-token weights (RL's advantages).

    python -m pytest tests/test_loss.py
"""

import pytest
import torch
import torch.nn.functional as F

from picochat.common import IGNORE_INDEX
from picochat.loss import linear_cross_entropy
from picochat.model import GPT, GPTConfig


def reference_loss(x, weight, targets, softcap):
    logits = softcap * torch.tanh((x @ weight.t()) / softcap)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")


@pytest.mark.parametrize("chunk_rows", [7, 1024])
def test_fused_loss_matches_reference_in_value_and_gradients(chunk_rows):
    torch.manual_seed(0)
    x = torch.randn(2, 40, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (2, 40))
    targets[0, :7] = IGNORE_INDEX
    loss = linear_cross_entropy(x, w, targets, 15.0, chunk_rows=chunk_rows)
    (2.5 * loss).backward()
    grad_x, grad_w = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    expected = reference_loss(x, w, targets, 15.0)
    (2.5 * expected).backward()
    assert torch.allclose(loss, expected, rtol=1e-5)
    assert torch.allclose(grad_x, x.grad, atol=1e-5)
    assert torch.allclose(grad_w, w.grad, atol=1e-5)


def test_all_masked_targets_give_zero_loss_and_zero_gradients():
    x = torch.randn(1, 8, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    loss = linear_cross_entropy(x, w, torch.full((1, 8), IGNORE_INDEX), 15.0)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(x.grad) == 0 and torch.count_nonzero(w.grad) == 0


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_any_negative_target_is_ignored(reduction):
    """PyTorch's convention is -100, ours -1: both must add nothing (-100 once counted as token 0)."""
    torch.manual_seed(0)
    x = torch.randn(1, 12, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (1, 12))
    kept = targets.clone()
    kept[0, :4] = IGNORE_INDEX
    other = targets.clone()
    other[0, :4] = torch.tensor([-100, -2, -100, -7])
    with_ignore = linear_cross_entropy(x, w, kept, 15.0, reduction=reduction)
    with_other = linear_cross_entropy(x, w, other, 15.0, reduction=reduction)
    assert torch.equal(with_ignore, with_other)
    reference = reference_loss(x, w, kept, 15.0)
    assert with_other.sum().item() == pytest.approx(reference.item(), rel=1e-5)
    if reduction == "none":
        assert torch.count_nonzero(with_other[0, :4]) == 0
    else:
        with_other.backward()
        grad_x = x.grad.clone()
        x.grad = None
        reference.backward()
        assert torch.allclose(grad_x, x.grad, atol=1e-5)


def test_compiled_model_gets_the_gradients_of_the_eager_one():
    """Under torch.compile the loss's gradients, computed inside its forward, must still arrive. On CUDA
    (torch 2.11) in-place writes into them were dropped and every gradient was zero; this checks the CPU."""
    from picochat.model import GPT, GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=32, vocab_size=64, n_layer=2, n_embd=32, n_head=2, n_kv_head=2))
    tokens = torch.randint(0, 64, (2, 33))
    grads = []
    for step_model in (model, torch.compile(model)):
        step_model(tokens[:, :-1], tokens[:, 1:]).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        model.zero_grad(set_to_none=True)
    eager, compiled = grads
    assert eager.norm() > 0
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


def test_the_weighted_loss_is_the_sum_of_weighted_token_losses():
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=16, vocab_size=64, n_layer=1, n_embd=32, n_head=1, n_kv_head=1))
    inputs, targets = torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16))
    weights = torch.randn(2, 16)
    per_token = model(inputs, targets, reduction="none")
    weighted = model(inputs, targets, token_weights=weights)
    assert weighted.item() == pytest.approx((per_token * weights).sum().item(), rel=1e-5)
    weighted.backward()
    fused = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logits = model(inputs)
    reference = (torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
                 * weights.flatten()).sum()
    reference.backward()
    for a, p in zip(fused, model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)
