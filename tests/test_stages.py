"""What each stage trains on and refuses (stages.py): mid and SFT rehearse pretraining text on top of the
chat mixture, and RL refuses settings that do not fit it. The loop that runs every stage is tested in
tests/test_train.py.

    python -m pytest tests/test_stages.py
"""

from __future__ import annotations

import pytest

from helpers import error_line
from picochat import cli
from picochat.stages import chat_mixture, mid_mixture, sft_mixture
from picochat.train import TrainConfig, resolve_configs


def test_mid_and_sft_rehearse_pretraining_text_sft_less(tiny_home):
    config = TrainConfig(home=str(tiny_home))
    for split in ("train", "eval"):
        chat = [(task.name, weight) for task, weight in chat_mixture(config, split)]
        mid = [(task.name, weight) for task, weight in mid_mixture(config, split)]
        sft = [(task.name, weight) for task, weight in sft_mixture(config, split)]
        assert mid == chat + [("pretraining_text", 1.0)] and sft == chat + [("pretraining_text", 0.5)]
        assert {"chitchat", "chatterbot", "mathematics", "mc_practice", "arithmetic", "spelling_bee", "spelling",
                "identity", "multi_turn", "arithmetic_follow_up"} <= {name for name, _ in chat}


def test_base_trains_on_shorter_rows_and_the_chat_stages_on_whole_ones():
    """Base's preset: rows of 256 tokens, 32 to a batch (benchmarks/base_recipe.py measured it); what the
    user types wins; mid and SFT keep TrainConfig's 512 x 16, so conversations are not cut at 256."""
    base, _, _ = resolve_configs("base", {}, None)
    assert (base.max_seq_len, base.device_batch_size) == (256, 32)
    typed, _, _ = resolve_configs("base", {"max_seq_len": 512}, None)
    assert (typed.max_seq_len, typed.device_batch_size) == (512, 32)
    for stage in ("mid", "sft"):
        config, _, _ = resolve_configs(stage, {}, None)
        assert (config.max_seq_len, config.device_batch_size) == (TrainConfig.max_seq_len, 16) == (512, 16)


@pytest.mark.parametrize("flags, names", [([], ("--num-iterations", "--time-budget")),
                                          (["--target-param-data-ratio", "20"], ("--num-iterations", "--time-budget")),
                                          (["--num-iterations", "3", "--total-batch-size", "4096"],
                                           ("--total-batch-size",))])
def test_the_rl_stage_needs_a_length_and_no_token_batch(flags, names, tmp_path, capsys):
    """RL is never sized by tokens per parameter; it fails at once, before it touches the home."""
    with pytest.raises(SystemExit):
        cli.main(["train", "--stage", "rl", "--home", str(tmp_path), *flags])
    line = error_line(capsys)
    assert all(name in line for name in names) and not any(tmp_path.iterdir())
