"""RL on verifiable rewards: group advantages, which tokens are trained (sampled, not prompt or tool
output) and with what weight, the weighted fused loss, reward rising on a learnable task, exact resume of
the real stage, and the stage end to end after SFT.

    python -m pytest tests/test_rl.py
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time

import pytest
import torch

from helpers import TINY, flags_dict, step_records, train_cli
from picochat.checkpoint import checkpoint_dir, load_latest
from picochat.common import IGNORE_INDEX, Runtime
from picochat.data.conversations import ConversationLoader
from picochat.engine import Engine
from picochat.model import GPT, GPTConfig
from picochat.optim import OptimConfig, build_optimizers
from picochat.progress import read_metrics
from picochat.rl import RolloutBatches, group_advantages
from picochat.tasks import Task, final_number
from picochat.train import run, train_step

CPU = Runtime(torch.device("cpu"), torch.float32)


def test_advantages_are_rewards_minus_their_group_mean():
    assert group_advantages([1, 0, 0, 1, 1, 1], 3) == pytest.approx([2 / 3, -1 / 3, -1 / 3, 0, 0, 0])
    assert group_advantages([0, 0], 2) == [0, 0]  # all wrong (or all right): nothing to learn, no NaN


class Digits(Task):
    """"Say a digit." The reference answer is a random digit (for SFT); RL rewards only the digit 7."""
    name = "digits"

    def __init__(self, split: str = "train", size: int = 200):
        super().__init__(split)
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        digit = str(random.Random(index).randint(0, 9))
        return {"messages": [{"role": "user", "content": "Say a digit."},
                             {"role": "assistant", "content": digit}], "answer": "7"}

    def score(self, example, answer):
        return final_number(answer) == "7"


def tiny_engine(tokenizer, seed: int = 0) -> Engine:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(sequence_len=64, vocab_size=tokenizer.vocab_size, n_layer=2, n_embd=64, n_head=1,
                          n_kv_head=1))
    return Engine(model, tokenizer, CPU)


def test_only_sampled_tokens_are_targets_weighted_by_their_advantage(tiny_tokenizer):
    engine = tiny_engine(tiny_tokenizer)
    rollouts = RolloutBatches(engine, [Digits()], problems_per_batch=1, samples=2, max_tokens=4)
    t = tiny_tokenizer
    start, end = t.special("<|output_start|>"), t.special("<|output_end|>")
    call = [t.special("<|python_start|>"), *t.encode("3+4"), t.special("<|python_end|>")]
    tokens = [*t.encode("so"), *call, start, *t.encode("7"), end, *t.encode(" 7"), t.special("<|assistant_end|>")]
    prompt = engine.prompt_ids(Digits().prompt(0))
    inputs, targets, weights = rollouts.batch([(prompt, tokens, 0.5), (prompt, tokens[:2], -0.5)])
    forced = {start, end, *t.encode("7")} - set(t.encode(" 7"))
    row = targets[0].tolist()
    assert all(target == IGNORE_INDEX for target in row[:len(prompt) - 1])  # the prompt is not trained
    trained = [target for target in row if target != IGNORE_INDEX]
    assert trained == [tok for tok, chosen in zip(tokens, rollouts.chosen_by_policy(tokens)) if chosen]
    assert start not in trained and end not in trained and len(trained) == len(tokens) - 3
    assert set(weights[0][targets[0] != IGNORE_INDEX].tolist()) == {0.5}
    assert set(weights[1][targets[1] != IGNORE_INDEX].tolist()) == {-0.5} and (weights[1] != 0).sum() == 2
    assert (weights[targets == IGNORE_INDEX] == 0).all() and forced


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


def test_the_reward_rises_on_a_learnable_task(tiny_tokenizer):
    """SFT teaches the tiny model to say some digit; RL then makes it say 7 (reward 1/10 by chance)."""
    engine = tiny_engine(tiny_tokenizer)
    model = engine.model
    optimizers = build_optimizers(model, OptimConfig(), torch.float32)
    sft = ConversationLoader(tiny_tokenizer, [(Digits(), 1.0)], batch_size=8, seq_len=32, seed=0)
    for _ in range(60):
        train_step(model, model, optimizers, [next(sft)], CPU)
    for optimizer in optimizers:  # RL at a lower learning rate, as the stage's preset does
        for group in optimizer.param_groups:
            group["lr"] *= 0.5
    rollouts = RolloutBatches(engine, [Digits()], problems_per_batch=4, samples=8, max_tokens=3, seed=1)
    rewards = []
    for _ in range(25):
        train_step(model, model, optimizers, [next(rollouts)], CPU)
        rewards.append(rollouts.last_stats["reward"])
    early, late = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert early < 0.5 and late > early + 0.3, rewards


def sft_home(home) -> list[str]:
    """base -> mid -> SFT, a couple of steps each, in home; returns the tiny flags of an RL run there."""
    tiny = [*TINY, "--max-seq-len", "128", "--home", str(home)]
    run(flags_dict(*tiny, "--num-iterations", "2"))
    for stage in ("mid", "sft"):
        run(flags_dict(*tiny, "--stage", stage, "--num-iterations", "2"))
    return ["--max-seq-len", "128", "--stage", "rl", "--device-batch-size", "2", "--rl-samples", "2",
            "--rl-max-tokens", "8", "--rl-eval-problems", "2", "--eval-every", "0"]


@pytest.mark.slow
def test_the_rl_stage_logs_rewards_and_resumes_exactly_after_kill_9(fresh_home, tmp_path):
    rl = [*sft_home(fresh_home), "--num-iterations", "12", "--save-every", "2", "--eval-every", "6"]
    reference = tmp_path / "reference"
    shutil.copytree(fresh_home, reference)
    assert train_cli(reference, *rl).wait(timeout=300) == 0
    records = step_records(reference, "rl")
    assert [r["step"] for r in records] == list(range(1, 13))
    assert all({"reward", "pass_at_k", "completion_tokens", "sample_tok_per_s", "update_tok_per_s"} <= r.keys()
               for r in records)
    evals = read_metrics(checkpoint_dir(reference, "rl") / "metrics.jsonl", "eval")
    assert [e["step"] for e in evals] == [0, 6, 12]  # before, during and after
    assert {"arithmetic_pass1", "arithmetic_pass2", "mathematics_pass1", "mathematics_pass2"} <= evals[-1].keys()

    process = train_cli(fresh_home, *rl)
    out = checkpoint_dir(fresh_home, "rl")
    deadline = time.time() + 120
    while not (out / "step_000004.pt").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.kill()  # SIGKILL: no chance to clean up
    process.wait()
    assert not (out / "done.json").exists(), "the run finished before it could be killed"
    resumed = train_cli(fresh_home, *rl, "--resume")
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    got = {r["step"]: (r["reward"], r["loss"]) for r in step_records(fresh_home, "rl")}
    assert got == {r["step"]: (r["reward"], r["loss"]) for r in records}  # same problems, samples, updates


@pytest.mark.slow
def test_the_rl_stage_under_torchrun_samples_per_rank(fresh_home):
    rl = [*sft_home(fresh_home), "--num-iterations", "3"]
    env = {**os.environ, "PICOCHAT_HOME": str(fresh_home)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "picochat.cli", "train", *TINY, *rl]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    _, checkpoint = load_latest(checkpoint_dir(fresh_home, "rl"))
    assert checkpoint["loaders"] == [{"position": 3}, {"position": 3}]  # each rank its own problems
    assert [r["step"] for r in step_records(fresh_home, "rl")] == [1, 2, 3]
