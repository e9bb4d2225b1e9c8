"""The GPT: shapes, per-token losses, KV cache vs full forward, GQA, accounting.

    python -m pytest tests/test_model.py
"""

import pytest
import torch

from picochat.engine import KVCache
from picochat.model import GPT, GPTConfig


def tiny_config(**overrides) -> GPTConfig:
    values = dict(sequence_len=32, vocab_size=256, n_layer=2, n_embd=64, n_head=2, n_kv_head=2)
    return GPTConfig(**{**values, **overrides})


def randomized(model: GPT) -> GPT:
    # init zeroes the residual projections; random weights make the comparisons below meaningful
    torch.manual_seed(1)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return model


def test_per_token_losses_sum_to_the_fused_loss():
    model = randomized(GPT(tiny_config()))
    idx = torch.randint(0, 256, (2, 16))
    targets = torch.randint(0, 256, (2, 16))
    per_token = model(idx, targets, reduction="none")
    assert per_token.shape == (2, 16)
    assert torch.allclose(per_token.sum(), model(idx, targets), rtol=1e-5)


@pytest.mark.parametrize("n_kv_head", [2, 1])  # 1 = grouped-query attention
def test_kv_cache_generation_matches_full_forward(n_kv_head):
    config = tiny_config(n_kv_head=n_kv_head)
    model = randomized(GPT(config)).eval()
    idx = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        full = model(idx)
        cache = KVCache(config, batch_size=2, max_len=24, device="cpu")
        pieces = [model(idx[:, :12], kv_cache=cache), model(idx[:, 12:15], kv_cache=cache)]
        pieces += [model(idx[:, t:t + 1], kv_cache=cache) for t in range(15, 20)]
    assert cache.pos.tolist() == [20, 20]
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5)


def test_kv_cache_overflow_is_a_clear_error():
    config = tiny_config()
    model = GPT(config)
    cache = KVCache(config, batch_size=1, max_len=4, device="cpu")
    with pytest.raises(ValueError, match="KV cache is full"):
        model(torch.zeros(1, 5, dtype=torch.long), kv_cache=cache)


def test_logits_are_soft_capped_and_causal():
    config = tiny_config(softcap=2.0)
    model = randomized(GPT(config))
    idx = torch.randint(0, 256, (1, 10))
    logits = model(idx)
    assert logits.shape == (1, 10, 256) and logits.dtype == torch.float32
    assert logits.abs().max() <= 2.0
    changed = idx.clone()
    changed[0, 7] = (changed[0, 7] + 1) % 256
    assert torch.allclose(model(changed)[0, :7], logits[0, :7], atol=1e-6)  # the past ignores the future
    assert not torch.allclose(model(changed)[0, 7:], logits[0, 7:])


def test_from_depth_and_accounting():
    config = GPTConfig.from_depth(4, vocab_size=8192, sequence_len=512)
    assert (config.n_embd, config.n_head, config.head_dim) == (256, 2, 128)
    assert GPTConfig.from_depth(20, 65536, 2048).head_dim == 128
    model = GPT(config)
    params = model.num_params()
    assert params["embedding"] == params["lm_head"] == 8192 * 256
    assert params["blocks"] == 4 * 12 * 256 * 256  # q,k,v,proj (4 d^2) + MLP (8 d^2) per block
    expected_flops = 6 * (params["total"] - params["embedding"]) + 12 * 4 * 256 * 512
    assert model.flops_per_token() == expected_flops
    with pytest.raises(ValueError, match="--kv-head-ratio 3 does not divide the 4 head"):
        GPTConfig.from_depth(4, 8192, 512, head_dim=64, kv_head_ratio=3)
    with pytest.raises(ValueError, match="width 448, which 3 heads of --head-dim 128 do not divide"):
        GPTConfig.from_depth(7, 8192, 512)


def test_tied_embeddings_are_one_matrix_counted_once():
    untied, tied = GPT(tiny_config()), GPT(tiny_config(tie_embeddings=True))
    assert tied.lm_head.weight is tied.wte.weight
    assert tied.num_params()["total"] == untied.num_params()["total"] - 256 * 64
    assert tied.num_params()["lm_head"] == 0 and tied.num_params()["blocks"] == untied.num_params()["blocks"]
    assert tied.flops_per_token() == untied.flops_per_token()  # the lm_head matmul runs either way
    assert tied.wte.weight.std().item() == pytest.approx(0.001, rel=0.1)  # the head's small init
    # A checkpoint holds the matrix under both names; loading one keeps the model tied.
    source = randomized(GPT(tiny_config(tie_embeddings=True)))
    tied.load_state_dict(source.state_dict())
    assert tied.lm_head.weight is tied.wte.weight and torch.equal(tied.wte.weight, source.wte.weight)
    idx = torch.randint(0, 256, (1, 8))
    assert torch.allclose(tied(idx), source(idx))


def test_fresh_model_predicts_near_uniform():
    model = GPT(tiny_config())
    idx = torch.randint(0, 256, (2, 16))
    mean_loss = model(idx, idx).item() / idx.numel()
    assert abs(mean_loss - torch.log(torch.tensor(256.0)).item()) < 0.1


def test_bf16_autocast_loss_close_to_fp32():
    model = randomized(GPT(tiny_config()))
    idx, targets = torch.randint(0, 256, (2, 16)), torch.randint(0, 256, (2, 16))
    fp32 = model(idx, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model(idx, targets)
    assert torch.isfinite(bf16) and abs(bf16.item() - fp32.item()) / fp32.item() < 0.05
