"""Stages: what base pretraining, mid-training and SFT do differently, as data rather than as code.

A Stage names its batch sources (targets use IGNORE_INDEX where no loss is taken), its LR schedule as a
function of progress 0..1, a fingerprint of its data (for resume), the stage whose checkpoint it starts
from, and flag presets. train.py runs every stage with the same loop. Mid-training and SFT add one small
function each here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

from picochat.data.loader import TokenLoader
from picochat.data.shards import corpus_dir, corpus_fingerprint, split_shards
from picochat.optim import lr_multiplier


@dataclass
class Stage:
    name: str
    # (tokenizer, config, runtime, loader state or None) -> iterator of (inputs, targets) with state_dict()
    train_batches: Callable[..., Iterator]
    # (tokenizer, config, runtime) -> a fresh, finite iterator over validation batches
    val_batches: Callable[..., Iterator]
    # (progress in [0, 1], OptimConfig) -> LR multiplier
    lr_schedule: Callable[[float, object], float]
    # config -> a fingerprint of the training data; a resume refuses data that changed since the checkpoint
    data_fingerprint: Callable[..., str]
    init_from: str | None = None       # stage whose newest checkpoint initialises the model
    preset: dict = field(default_factory=dict)  # flag defaults for this stage, under the user's flags


def warmup_constant_warmdown(progress: float, optim) -> float:
    return lr_multiplier(progress, optim.warmup_ratio, optim.warmdown_ratio, optim.final_lr_frac)


def base_stage() -> Stage:
    """Pretraining: next-token prediction on the corpus shards, every target counts."""

    def train_batches(tokenizer, config, runtime, state):
        train_shards, _ = split_shards(corpus_dir(config.home_path))
        return TokenLoader(tokenizer, train_shards, config.device_batch_size, config.max_seq_len,
                           rank=runtime.rank, world_size=runtime.world_size, device=runtime.device, state=state)

    def val_batches(tokenizer, config, runtime):
        _, val_shards = split_shards(corpus_dir(config.home_path))
        return TokenLoader(tokenizer, val_shards, config.device_batch_size, config.max_seq_len,
                           rank=runtime.rank, world_size=runtime.world_size, device=runtime.device, loop=False)

    def data_fingerprint(config):
        return corpus_fingerprint(corpus_dir(config.home_path))

    return Stage("base", train_batches, val_batches, warmup_constant_warmdown, data_fingerprint)


STAGES: dict[str, Callable[[], Stage]] = {"base": base_stage}
