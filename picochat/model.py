"""The GPT: a depth-parameterised Transformer, in the modern nanochat style.

- rotary position embeddings, no learned positions; QK-norm; RMSNorm without learnable parameters
- relu^2 MLP, no biases anywhere, tanh soft-cap on the logits; the token embedding and lm_head are one
  matrix with tie_embeddings (`picochat train`'s default), else two
- grouped-query attention (n_kv_head < n_head); generation passes the engine's KV cache through
- with targets, forward() returns the loss from loss.py's fused lm_head + cross-entropy, so the full
  (tokens x vocab) logits never exist at once.

    model = GPT(GPTConfig.from_depth(4, vocab_size=8192, sequence_len=512))
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from picochat.common import UserError
from picochat.loss import linear_cross_entropy


@dataclass
class GPTConfig:
    sequence_len: int = 512
    vocab_size: int = 8192
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 4
    n_kv_head: int = 4          # < n_head: grouped-query attention
    softcap: float = 15.0       # logits = softcap * tanh(logits / softcap)
    tie_embeddings: bool = False  # one matrix reads tokens in and writes them out (transformers' tie_word_embeddings)

    def __post_init__(self):
        # The fused loss exponentiates capped logits without subtracting the max; exp(80) is still finite.
        if not 0 < self.softcap <= 80:
            raise ValueError(f"softcap must be in (0, 80], got {self.softcap}")

    @classmethod
    def from_depth(cls, depth: int, vocab_size: int, sequence_len: int, head_dim: int = 0,
                   kv_head_ratio: int = 1, tie_embeddings: bool = False) -> "GPTConfig":
        """Everything follows from depth: width = 64 * depth (nanochat's aspect ratio)."""
        n_embd = depth * 64
        n_head = heads_for(n_embd, head_dim)
        if n_embd % n_head:
            raise UserError(f"depth {depth} gives width {n_embd}, which {n_head} heads of --head-dim "
                            f"{head_dim or DEFAULT_HEAD_DIM} do not divide; choose another --depth or --head-dim")
        if n_head % kv_head_ratio:
            raise UserError(f"--kv-head-ratio {kv_head_ratio} does not divide the {n_head} head(s) of depth "
                            f"{depth}; choose another ratio, --depth or --head-dim")
        return cls(sequence_len=sequence_len, vocab_size=vocab_size, n_layer=depth, n_embd=n_embd,
                   n_head=n_head, n_kv_head=n_head // kv_head_ratio, tie_embeddings=tie_embeddings)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def shape_settings(self) -> dict:
        """The values of `picochat train`'s shape flags (TrainConfig) that describe this model."""
        return {"depth": self.n_layer, "head_dim": self.head_dim, "kv_head_ratio": self.n_head // self.n_kv_head,
                "tie_embeddings": self.tie_embeddings}


DEFAULT_HEAD_DIM = 128  # wide heads: attention kernels run faster at 128 than at 64 on CPU too


def heads_for(width: int, head_dim: int) -> int:
    """Attention heads for a width and a --head-dim target (0: DEFAULT_HEAD_DIM): at least one."""
    return max(1, width // (head_dim or DEFAULT_HEAD_DIM))


def norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))  # no learnable scale: one less thing to tune


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, T, H, D); cos/sin: (1 or B, T, 1, D/2). Rotates pairs (first half, second half) of each head."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.layer, self.n_head, self.n_kv_head, self.head_dim = layer, config.n_head, config.n_kv_head, config.head_dim
        self.c_q = nn.Linear(config.n_embd, config.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(config.n_embd, config.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(config.n_embd, config.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor, cos_sin: tuple, kv_cache=None) -> torch.Tensor:
        """x: (B, T, C). kv_cache: the engine's KVCache while generating, else None."""
        B, T, C = x.size()
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)     # (B, T, H, D)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)  # (B, T, Hkv, D): GQA shares each kv head
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)  # (B, T, Hkv, D)
        q, k = norm(apply_rotary(q, *cos_sin)), norm(apply_rotary(k, *cos_sin))  # rotate, then QK-norm
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)        # (B, H or Hkv, T, D)
        mask = None
        if kv_cache is not None:
            k, v = kv_cache.insert(self.layer, k, v)  # (B, Hkv, Tk, D): each row's cached past, then these T
            # Rows of different lengths (requests that started at different times) each see their own past and
            # their new tokens causally: is_causal would align the triangle top-left, so the cache builds it.
            mask = kv_cache.attention_mask(q.size(2), k.size(2))  # (B, 1, Tq, Tk); None on a first prefill
        causal = mask is None and q.size(2) > 1  # training and a first prefill: plain causal, no mask tensor
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           enable_gqa=self.n_head != self.n_kv_head)  # (B, H, T, D)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))                      # heads side by side: (B, T, C)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.relu(self.c_fc(x)).square())  # relu^2: cheap and a little better than GELU


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer)
        self.mlp = MLP(config)

    def forward(self, x, cos_sin, kv_cache):
        x = x + self.attn(norm(x), cos_sin, kv_cache)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config, layer) for layer in range(config.n_layer))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        # Rotary tables cover 10x the training length so generation can run past it.
        cos, sin = rotary_tables(config.sequence_len * 10, config.head_dim)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):  # fan-in scaled, shrunk for wide-output layers
                fan_out, fan_in = module.weight.shape
                nn.init.normal_(module.weight, std=1.0 / math.sqrt(fan_in) * min(1.0, math.sqrt(fan_out / fan_in)))
        nn.init.normal_(self.wte.weight, std=1.0)
        # Start from near-uniform predictions. A tied matrix keeps this small init too: the embedding is
        # RMS-normed before the first block, so its scale does not matter there.
        nn.init.normal_(self.lm_head.weight, std=0.001)
        for block in self.blocks:  # residual branches start as identity
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)

    def trunk(self, idx: torch.Tensor, kv_cache=None) -> torch.Tensor:
        """(B, T) token ids -> (B, T, C) final hidden states. With the engine's KV cache, each row goes on
        from its own length, and the cache grows by T."""
        T = idx.size(1)
        end = T + (kv_cache.longest if kv_cache is not None else 0)
        if end > self.cos.size(1):
            raise UserError(f"sequence of {end} tokens exceeds the rotary table ({self.cos.size(1)})")
        if kv_cache is None:
            cos_sin = self.cos[:, :T], self.sin[:, :T]                   # (1, T, 1, D/2)
        else:
            positions = kv_cache.positions(T)                            # (B, T): each row's own
            cos_sin = self.cos[0, positions], self.sin[0, positions]    # (B, T, 1, D/2)
        x = norm(self.wte(idx))
        for block in self.blocks:
            x = block(x, cos_sin, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(T)
        return norm(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, kv_cache=None,
                reduction: str = "sum", token_weights: torch.Tensor | None = None) -> torch.Tensor:
        """With targets: the loss (sum over unmasked tokens, each times its token_weights if given, or per
        token with reduction='none').
        Without: soft-capped fp32 logits (B, T, vocab)."""
        x = self.trunk(idx, kv_cache)
        if targets is None:
            return self.capped_logits(x)
        return linear_cross_entropy(x, self.lm_head.weight, targets, self.config.softcap, reduction,
                                    token_weights=token_weights)

    def next_logits(self, idx: torch.Tensor, kv_cache=None, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids -> (B, vocab) logits of each row's last token only (position lengths - 1 of a right-
        padded batch, else T - 1): all that generation needs, and the vocab-sized matmul of a prompt's other
        positions is most of a small model's prefill."""
        hidden = self.trunk(idx, kv_cache)
        if lengths is None:
            return self.capped_logits(hidden[:, -1])
        return self.capped_logits(hidden[torch.arange(hidden.size(0), device=hidden.device), lengths - 1])

    def capped_logits(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(x).float()
        return self.config.softcap * torch.tanh(logits / self.config.softcap)

    # ---- accounting ------------------------------------------------------------------------------------

    def num_params(self) -> dict[str, int]:
        embedding = self.wte.weight.numel()
        head = 0 if self.config.tie_embeddings else self.lm_head.weight.numel()
        total = sum(p.numel() for p in self.parameters())  # parameters() gives a tied matrix once
        return {"total": total, "embedding": embedding, "lm_head": head, "blocks": total - embedding - head}

    def flops_per_token(self, sequence_len: int = 0) -> float:
        """Training FLOPs per token as nanochat counts them: 6 x the matmuls' params (blocks and lm_head, tied
        or not; the embedding is a lookup) + attention over rows of sequence_len tokens (default: the model's
        context)."""
        c = self.config
        attention = 12 * c.n_layer * c.n_embd * (sequence_len or c.sequence_len)
        return 6 * (self.num_params()["blocks"] + self.lm_head.weight.numel()) + attention

    def describe(self) -> dict:
        return {**asdict(self.config), "params": self.num_params(), "flops_per_token": self.flops_per_token()}


def rotary_tables(length: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, length, 1, head_dim/2) cos and sin tables."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    return angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]
