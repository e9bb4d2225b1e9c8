"""RL on verifiable rewards: group advantages, which tokens are trained (sampled, not prompt or tool
output) and with what weight, the token counts behind tok/s and MFU, reward rising on a learnable task,
exact resume of the real stage, and the stage end to end after SFT, also under torchrun (this file is then
its worker too). The weighted loss is tested in tests/test_loss.py, the settings RL refuses in
tests/test_stages.py.

    python -m pytest tests/test_rl.py
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import TINY, ScriptedModel, flags_dict, step_records, train_cli
from picochat import cli
from picochat.chat import render_for_completion
from picochat.checkpoint import checkpoint_dir, load_latest
from picochat.common import IGNORE_INDEX
from picochat.runtime import Runtime, end_torchrun_worker
from picochat.data.conversations import ConversationLoader
from picochat.engine import Engine
from picochat.model import GPT, GPTConfig
from picochat.optim import OptimConfig, build_optimizers
from picochat.progress import read_metrics
from picochat.rl import RolloutBatches, group_advantages
from picochat.tasks import Task, final_number
from picochat.perf import step_work
from picochat.step import train_step
from picochat.train import run

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
    call = [t.special("<|python_start|>"), *t.encode("3+4"), t.special("<|python_end|>")]
    output = [t.special("<|output_start|>"), *t.encode("7"), t.special("<|output_end|>")]
    parts = [(t.encode("so") + call, False), (output, True), (t.encode(" 7") + [t.special("<|assistant_end|>")], False)]
    tokens = [token for part, _ in parts for token in part]
    forced = [was_forced for part, was_forced in parts for _ in part]
    prompt = engine.prompt_ids(Digits().prompt(0))
    inputs, targets, weights = rollouts.batch([(prompt, tokens, forced, 0.5), (prompt, tokens[:2], forced[:2], -0.5)])
    row = targets[0].tolist()
    assert inputs[0].tolist() == (prompt + tokens)[:-1]
    assert row == [IGNORE_INDEX] * (len(prompt) - 1) + [IGNORE_INDEX if f else tok for tok, f in zip(tokens, forced)]
    assert set(weights[0][targets[0] != IGNORE_INDEX].tolist()) == {0.5}
    assert set(weights[1][targets[1] != IGNORE_INDEX].tolist()) == {-0.5} and (weights[1] != 0).sum() == 2
    assert (weights[targets == IGNORE_INDEX] == 0).all()


def test_a_rollout_trains_what_the_policy_wrote_and_counts_the_tokens_it_ran(tiny_tokenizer):
    """The engine says which tokens it forced. Row 0's policy writes <|output_start|> ... <|output_end|>
    itself (trained: its own choice), then calls the calculator, whose output the engine forces (not
    trained); row 1 answers in a few tokens. The counts behind tok/s and MFU are the tokens sampled and the
    update's non-padding tokens, not the batch's padded shape."""
    t = tiny_tokenizer
    special = t.special
    own = [special("<|output_start|>"), *t.encode(" 9"), special("<|output_end|>")]
    call = [special("<|python_start|>"), *t.encode("3+4"), special("<|python_end|>")]
    output = [special("<|output_start|>"), *t.encode("7"), special("<|output_end|>")]
    tail = [*t.encode(" 7"), special("<|assistant_end|>")]
    short = [own[0], *t.encode(" 8"), special("<|assistant_end|>")]  # a prompt's samples share the first token
    filler = [t.encode(" x")[0]] * len(output)  # what the script "samples" while the engine feeds the output
    prompt = render_for_completion(t, Digits().prompt(0))
    engine = Engine(ScriptedModel(t.vocab_size, [own + call + filler + tail, short], len(prompt)), t, CPU)
    rollouts = RolloutBatches(engine, [Digits()], problems_per_batch=1, samples=2, max_tokens=40)
    inputs, targets, weights = next(rollouts)
    answer = own + call + output + tail
    assert targets[0, len(prompt) - 1:].tolist() == own + call + [IGNORE_INDEX] * len(output) + tail
    assert targets[1, len(prompt) - 1:].tolist() == short + [IGNORE_INDEX] * (len(answer) - len(short))
    assert weights[0, len(prompt) - 1].item() == 0.5  # right answer (7), the group's mean reward is 0.5
    stats = rollouts.last_stats
    assert stats["rollout_tokens"] == len(answer) + len(short)
    assert stats["update_tokens"] == (len(prompt) + len(answer) - 1) + (len(prompt) + len(short) - 1) < inputs.numel()
    step_stats = rollouts.stats(stats["sample_seconds"] + 1.0)  # a step of sampling, then 1 s of update
    assert step_stats["update_seconds"] == pytest.approx(1.0, abs=1e-3)
    tokens, flops = step_work(step_stats, tokens_per_step=10**6, flops_per_token=300.0, runtime=CPU)
    assert tokens == stats["rollout_tokens"] + stats["update_tokens"]
    assert flops == pytest.approx(300.0 * (stats["rollout_tokens"] / 3 + stats["update_tokens"]))


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
    ran = [r["rollout_tokens"] + r["update_tokens"] for r in records]  # tok/s and MFU count these
    assert [r["tokens"] for r in records] == [sum(ran[:step]) for step in range(1, 13)]
    evals = read_metrics(checkpoint_dir(reference, "rl") / "metrics.jsonl", "eval")
    assert [e["step"] for e in evals] == [0, 6, 12]  # before, during and after
    assert {"arithmetic_pass1", "arithmetic_pass2", "spelling_bee_pass1", "spelling_pass2"} <= evals[-1].keys()

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
def test_the_rl_stage_under_torchrun_samples_per_rank(fresh_home, tmp_path):
    """Two gloo processes run the real stage (this file is their worker): each rank samples problems of its
    own, and the checkpoint holds each rank's position."""
    rl = [*sft_home(fresh_home), "--num-iterations", "3"]
    env = {**os.environ, "PICOCHAT_HOME": str(fresh_home)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               __file__, str(tmp_path), *TINY, *rl]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    _, checkpoint = load_latest(checkpoint_dir(fresh_home, "rl"))
    assert checkpoint["loaders"] == [{"position": 3}, {"position": 3}]
    assert [r["step"] for r in step_records(fresh_home, "rl")] == [1, 2, 3]
    drawn = [json.loads((tmp_path / f"problems-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert len(drawn[0]) == len(drawn[1]) == 3 * 2  # 3 steps of --device-batch-size 2 problems
    assert not {json.dumps(p) for p in drawn[0]} & {json.dumps(p) for p in drawn[1]}


def train_recording_problems(out: Path, flags: list[str]) -> None:
    """The torchrun worker: `picochat train FLAGS`, writing the problems this rank drew to out."""
    drawn, problems = [], RolloutBatches.problems

    def recording(self, position):
        chosen = problems(self, position)
        drawn.extend(prompt for _, _, prompt in chosen)
        return chosen

    RolloutBatches.problems = recording
    cli.run_command(["train", *flags])
    rank = int(os.environ["RANK"])
    (out / f"problems-rank{rank}.json").write_text(json.dumps(drawn))
    end_torchrun_worker(0)


if __name__ == "__main__":
    train_recording_problems(Path(sys.argv[1]), sys.argv[2:])
