"""Reinforcement learning on verifiable rewards: `picochat train --stage rl`, after SFT.

Each step, every rank takes its own device_batch_size problems and samples --rl-samples answers to each
through the engine (temperature 1, top-k 50, KV cache, the calculator). An answer's reward is 1 when the
task scores it right (the final number, see tasks.final_number), else 0. Its advantage is the reward minus
the mean reward of its problem's samples (GRPO's group baseline). We do not divide by the group's standard
deviation: that weighs problems by how unsure the model is of them (a group with one right answer in
sixteen would get its gradient multiplied by ~4) and divides by zero when all agree; Dr. GRPO argues the
same. The loss is sum(advantage x cross-entropy) over the sampled tokens, i.e. -advantage x log p: the
fused lm-head loss with per-token weights, run by the one training loop. The prompt and the calculator's
output (the tokens the engine says it forced: the policy did not choose them) are not targets. A step's
tokens, tok/s and MFU count what it really ran: the tokens sampled and the update's non-padding tokens.

Training problems are the train splits of arithmetic, SpellingBee and spelling (and GSM8K-train where
downloaded; stages.rl_problems); pass@1 (greedy) and pass@k (k samples) are measured on their eval splits
at every evaluation. Resume is exact: a batch's problems and sampling seed follow from
the loader's position. Its length is --num-iterations or --time-budget; tokens per parameter mean
nothing here.

    picochat train --stage rl --num-iterations 30
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from picochat.common import IGNORE_INDEX
from picochat.config import option, require_at_least
from picochat.data.loader import Batch
from picochat.engine import Engine, Sampling
from picochat.tasks import Task

SAMPLING = dict(temperature=1.0, top_k=50)


@dataclass
class RLConfig:
    """RL's own settings: flags of `picochat train`, used by --stage rl only (stages.rl_stage)."""
    rl_samples: int = option(4, "RL: answers sampled per problem (the group of GRPO's baseline; also k of pass@k)")
    rl_max_tokens: int = option(128, "RL: longest sampled answer, in tokens")
    rl_eval_problems: int = option(64, "RL: eval problems per task for pass@1 and pass@k at each evaluation")

    def __post_init__(self):
        require_at_least(self, 1, ("rl_samples", "rl_max_tokens", "rl_eval_problems"))


class RolloutBatches:
    """Iterator of Batches (with token weights) sampled from the model; state_dict() resumes."""

    def __init__(self, engine: Engine, tasks: list[Task], problems_per_batch: int, samples: int, max_tokens: int,
                 *, rank: int = 0, world_size: int = 1, seed: int = 0, state: dict | None = None):
        self.engine, self.tasks = engine, tasks
        self.problems_per_batch, self.samples, self.max_tokens = problems_per_batch, samples, max_tokens
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.position = state["position"] if state else 0
        self.last_stats: dict = {}

    def state_dict(self) -> dict:
        return {"position": self.position}

    def __iter__(self) -> "RolloutBatches":
        return self

    def problems(self, position: int) -> list[tuple[Task, dict, dict]]:
        """(task, example, prompt) for this rank's problems of one batch: tasks taken in turn."""
        first = (position * self.world_size + self.rank) * self.problems_per_batch
        chosen = []
        for number in range(first, first + self.problems_per_batch):
            task = self.tasks[number % len(self.tasks)]
            index = (number // len(self.tasks)) % len(task)
            chosen.append((task, task[index], task.prompt(index)))
        return chosen

    def __next__(self) -> Batch:
        problems = self.problems(self.position)
        prompts = [self.engine.prompt_ids(prompt) for _, _, prompt in problems]
        seed = (self.seed * 1_000_003 + self.position) * 1_009 + self.rank  # the same batch on a resumed run
        start = time.perf_counter()
        answers = self.engine.complete(prompts, Sampling(**SAMPLING, max_tokens=self.max_tokens, seed=seed),
                                       num_samples=self.samples)
        sample_seconds = time.perf_counter() - start
        rewards = [float(task.score(example, answers[p * self.samples + s]["text"]))
                   for p, (task, example, _) in enumerate(problems) for s in range(self.samples)]
        advantages = group_advantages(rewards, self.samples)
        rows = [(prompts[r // self.samples], answer["tokens"], answer["forced"], advantage)
                for r, (answer, advantage) in enumerate(zip(answers, advantages))]
        self.position += 1
        self.last_stats = self.rollout_stats(rewards, answers, sample_seconds)
        # What the update's forward and backward really run over: each row without its right padding.
        self.last_stats["update_tokens"] = sum(len(prompt) + len(tokens) - 1 for prompt, tokens, _, _ in rows)
        return self.batch(rows)

    def stats(self, step_seconds: float) -> dict:
        """What the step's metrics record shows of this rank's last rollout, and the update's share of the step
        (the rest of step_seconds)."""
        update_seconds = step_seconds - self.last_stats["sample_seconds"]
        return {**self.last_stats, "update_seconds": round(update_seconds, 3),
                "update_tok_per_s": round(self.last_stats["update_tokens"] / max(update_seconds, 1e-6))}

    def rollout_stats(self, rewards: list[float], answers: list[dict], sample_seconds: float) -> dict:
        """The rollout half of stats(): rewards, pass@k, lengths and sampling speed."""
        sampled = sum(len(answer["tokens"]) for answer in answers)  # tool output too: each ran a decode step
        groups = [rewards[start:start + self.samples] for start in range(0, len(rewards), self.samples)]
        return {"reward": round(sum(rewards) / len(rewards), 4),
                "pass_at_k": round(sum(max(group) for group in groups) / len(groups), 4),
                "completion_tokens": round(sampled / len(answers), 1), "rollout_tokens": sampled,
                "sample_tok_per_s": round(sampled / sample_seconds), "sample_seconds": round(sample_seconds, 3)}

    def batch(self, rows: list[tuple[list[int], list[int], list[bool], float]]) -> Batch:
        """A right-padded Batch (inputs, targets, weights), each (rows, width), of rows (prompt, tokens, forced,
        advantage): targets are the tokens the policy sampled, weighted by advantage. The tokens the engine
        forced (the calculator's output) are not; an <|output_start|> the policy sampled itself is."""
        sequences = [prompt + tokens for prompt, tokens, _, _ in rows]
        width = max(len(sequence) for sequence in sequences) - 1
        inputs = torch.full((len(rows), width), self.engine.tokenizer.bos_id, dtype=torch.long)
        targets = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        weights = torch.zeros(len(rows), width)
        for row, ((prompt, tokens, forced, advantage), sequence) in enumerate(zip(rows, sequences)):
            inputs[row, :len(sequence) - 1] = torch.tensor(sequence[:-1])
            for offset, (token, was_forced) in enumerate(zip(tokens, forced)):
                if not was_forced:
                    targets[row, len(prompt) - 1 + offset] = token
                    weights[row, len(prompt) - 1 + offset] = advantage
        device = self.engine.runtime.device
        return Batch(inputs.to(device), targets.to(device), weights.to(device))


def group_advantages(rewards: list[float], group: int) -> list[float]:
    """Each reward minus the mean of its group of `group` samples of one problem."""
    means = [sum(rewards[i:i + group]) / group for i in range(0, len(rewards), group)]
    return [reward - means[i // group] for i, reward in enumerate(rewards)]


@torch.no_grad()
def pass_at_k(engine: Engine, task: Task, problems: int, k: int, max_tokens: int, seed: int = 0) -> dict:
    """pass@1 (greedy) and pass@k (k samples at temperature 1: any right) on the first problems of task."""
    count = min(problems, len(task))
    prompts = [engine.prompt_ids(task.prompt(i)) for i in range(count)]
    greedy = engine.complete(prompts, Sampling(temperature=0, max_tokens=max_tokens))
    sampled = engine.complete(prompts, Sampling(**SAMPLING, max_tokens=max_tokens, seed=seed), num_samples=k)
    pass1 = sum(task.score(task[i], greedy[i]["text"]) for i in range(count)) / count
    passk = sum(any(task.score(task[i], sampled[i * k + s]["text"]) for s in range(k)) for i in range(count)) / count
    return {f"{task.name}_pass1": round(pass1, 4), f"{task.name}_pass{k}": round(passk, 4)}
