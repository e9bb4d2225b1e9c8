"""Stages: what base pretraining, mid-training and SFT do differently, as data rather than as code.

A Stage names its batch sources (targets use IGNORE_INDEX where no loss is taken), its LR schedule as a
function of progress 0..1, a fingerprint of its data (for resume), the stage whose checkpoint it starts
from, and flag presets. train.py runs every stage with the same loop. Mid-training and SFT add one small
function each here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Iterator

from picochat.common import UserError
from picochat.data.conversations import ConversationLoader
from picochat.data.loader import TokenLoader
from picochat.data.shards import corpus_dir, corpus_fingerprint, split_shards
from picochat.optim import lr_multiplier
from picochat.rl import RLConfig, RolloutBatches, pass_at_k
from picochat.engine import Engine
from picochat.evals.bpb import evaluate_bpb
from picochat.tasks import Task
from picochat.tasks.arithmetic import ArithmeticFollowUp, ArithmeticWithTool
from picochat.tasks.chatterbot import ChatterBot
from picochat.tasks.chitchat import ChitChat
from picochat.tasks.identity import Identity
from picochat.tasks.mathematics import Mathematics
from picochat.tasks.mc_practice import MultipleChoicePractice
from picochat.tasks.multi_turn import MultiTurn
from picochat.tasks.online import downloaded_tasks
from picochat.tasks.pretraining_text import PretrainingText
from picochat.tasks.spelling_bee import Spelling, SpellingBee


@dataclass
class Stage:
    name: str
    # (tokenizer, config, runtime, loader state or None, model) -> iterator of (inputs, targets) batches, or
    # (inputs, targets, token weights) for RL, which samples from the model; with state_dict()
    train_batches: Callable[..., Iterator]
    # (tokenizer, config, runtime) -> a fresh, finite iterator over validation batches
    val_batches: Callable[..., Iterator]
    # (progress in [0, 1], OptimConfig) -> LR multiplier
    lr_schedule: Callable[[float, object], float]
    # config -> a fingerprint of the training data; a resume refuses data that changed since the checkpoint
    data_fingerprint: Callable[..., str]
    init_from: str | None = None       # stage whose newest checkpoint initialises the model
    preset: dict = field(default_factory=dict)  # flag defaults for this stage, under the user's flags
    # (model, tokenizer, config, runtime) -> more metrics for each evaluation (RL's pass@k), or None
    extra_eval: Callable[..., dict] | None = None
    settings: object | None = None     # the stage's own config dataclass, if it has one (RL's RLConfig)
    check: Callable[..., None] | None = None  # config -> None, or a UserError for settings this stage refuses


def warmup_constant_warmdown(progress: float, optim) -> float:
    return lr_multiplier(progress, optim.warmup_ratio, optim.warmdown_ratio, optim.final_lr_frac)


def base_stage() -> Stage:
    """Pretraining: next-token prediction on the corpus shards, every target counts."""

    def train_batches(tokenizer, config, runtime, state, model):
        train_shards, _ = split_shards(corpus_dir(config.home_path))
        return TokenLoader(tokenizer, train_shards, config.device_batch_size, config.max_seq_len,
                           rank=runtime.rank, world_size=runtime.world_size, device=runtime.device, state=state)

    def val_batches(tokenizer, config, runtime):
        _, val_shards = split_shards(corpus_dir(config.home_path))
        return TokenLoader(tokenizer, val_shards, config.device_batch_size, config.max_seq_len,
                           rank=runtime.rank, world_size=runtime.world_size, device=runtime.device, loop=False)

    # Rows of 256 tokens, 32 to a batch (not 512 x 16): cheaper attention, so more steps in the same minutes,
    # and a better model after them; the stages after base go on at 512 (benchmarks/base_recipe.py).
    preset = {"max_seq_len": 256, "device_batch_size": 32}
    return Stage("base", train_batches, val_batches, warmup_constant_warmdown, data_fingerprint_of_corpus,
                 preset=preset)


def conversation_stage(name: str, init_from: str, mixture: Callable) -> Stage:
    """A stage that trains on conversations (mid-training, SFT): only the assistant's tokens are targets.
    mixture(config, split) -> [(task, weight), ...]; the eval split gives the val batches."""

    def train_batches(tokenizer, config, runtime, state, model):
        return ConversationLoader(tokenizer, mixture(config, "train"), config.device_batch_size, config.max_seq_len,
                                  rank=runtime.rank, world_size=runtime.world_size, device=runtime.device,
                                  seed=config.seed, state=state)

    def val_batches(tokenizer, config, runtime):
        return ConversationLoader(tokenizer, mixture(config, "eval"), config.device_batch_size, config.max_seq_len,
                                  rank=runtime.rank, world_size=runtime.world_size, device=runtime.device,
                                  loop=False)

    def data_fingerprint(config):
        described = [(task.name, task.split, len(task), weight) for task, weight in mixture(config, "train")]
        # SpellingBee draws its words from the corpus, so the corpus is part of this stage's data
        return hashlib.sha256(repr((described, data_fingerprint_of_corpus(config))).encode()).hexdigest()

    return Stage(name, train_batches, val_batches, warmup_constant_warmdown, data_fingerprint, init_from=init_from)


def data_fingerprint_of_corpus(config) -> str:
    return corpus_fingerprint(corpus_dir(config.home_path))


def chat_mixture(config, split: str) -> list[tuple[Task, float]]:
    """Conversations from PyPI packages (ChitChat, ChatterBot, mathematics problems), the tasks picochat
    makes by code (multiple-choice practice; arithmetic, SpellingBee and spelling through the calculator;
    identity; multi-turn conversations of those, and follow-ups on an earlier result), and the online
    datasets where `picochat data download-chat` fetched them. The weights are examples per epoch, per
    example of the task:
    - ChitChat's people talk about their own lives: a little of it teaches conversation, much of it teaches
      the model to invent a life.
    - Arithmetic and SpellingBee twice, multiple-choice practice and the mathematics problems 0.3: on the
      default CPU pipeline (one base, then mid, SFT and RL once with each mixture; 300 held-out problems
      each), arithmetic went from 66% to 70% and SpellingBee from 54% to 58%; a third weight for
      SpellingBee did not help it (53%). Multiple-choice practice is 11% of the tokens, nearly all of them
      untrained prompt, and ARC and MMLU stay at chance anyway. The mathematics problems answer "Is ...?"
      with "True", which the model gave to "Is there a g in believed? How many?".
    - Follow-ups on an earlier result twice: the tied model (the default) copies a number from its own
      earlier turn worse than an untied one; twice per epoch took it from 50% to 61% of follow-ups over
      three seeds, and identity from 48% to 59% (it did nothing for an untied model)."""
    home = config.home_path
    made = [(ArithmeticWithTool(split), 2.0), (SpellingBee.from_corpus(home, split), 2.0),
            (Spelling.from_corpus(home, split), 1.0), (Identity(split), 1.0)]
    tasks = [(ChitChat.from_package(home, split), 0.1), (ChatterBot.from_package(home, split), 1.0),
             (Mathematics.from_package(home, split), 0.3), (MultipleChoicePractice.from_sources(home, split), 0.3)]
    tasks += made + [(MultiTurn(split, [task for task, _ in made]), 1.0), (ArithmeticFollowUp(split), 2.0)]
    return tasks + [(task, 1.0) for task in downloaded_tasks(home, split)]


def mid_mixture(config, split: str) -> list[tuple[Task, float]]:
    """The chat mixture plus pretraining text, so what base learned is rehearsed while the chat is learnt."""
    return chat_mixture(config, split) + [(PretrainingText.from_corpus(config.home_path, split), 1.0)]


def sft_mixture(config, split: str) -> list[tuple[Task, float]]:
    """The chat mixture plus half as much pretraining text as mid. Without any, 2 minutes of SFT took the
    default CPU model's pretraining val bpb from 1.86 to 2.23 (vocab 8,192); with it, from 1.74 to 1.82."""
    return chat_mixture(config, split) + [(PretrainingText.from_corpus(config.home_path, split), 0.5)]


def mid_stage() -> Stage:
    """Mid-training: the chat template, conversations, tool use and multiple choice, starting from base."""
    return conversation_stage("mid", "base", mid_mixture)


def sft_stage() -> Stage:
    """Supervised fine-tuning: the same conversations with less plain text, starting from mid."""
    return conversation_stage("sft", "mid", sft_mixture)


def rl_problems(config, split: str) -> list[Task]:
    """Problems with answers a program can check: arithmetic, SpellingBee and spelling and, where downloaded,
    GSM8K-train. Their eval splits give pass@k; GSM8K test stays with `eval chat`. The mathematics dataset's
    problems stay in SFT: the default CPU SFT model solved 9% of them greedily and 16% in 4 samples, so most
    of their rollouts would teach nothing (a group whose samples all fail has zero advantages)."""
    home = config.home_path
    tasks = [ArithmeticWithTool(split), SpellingBee.from_corpus(home, split), Spelling.from_corpus(home, split)]
    return tasks + downloaded_tasks(home, split, names=("gsm8k",))


def rl_stage(settings: RLConfig | None = None) -> Stage:
    """RL on verifiable rewards, starting from SFT (see rl.py). LRs 1/20 of SFT's, decaying to 0."""
    rl = settings or RLConfig()

    def train_batches(tokenizer, config, runtime, state, model):
        return RolloutBatches(Engine(model, tokenizer, runtime), rl_problems(config, "train"), config.device_batch_size,
                              rl.rl_samples, rl.rl_max_tokens, rank=runtime.rank,
                              world_size=runtime.world_size, seed=config.seed, state=state)

    def val_batches(tokenizer, config, runtime):
        return ConversationLoader(tokenizer, [(task, 1.0) for task in rl_problems(config, "eval")],
                                  config.device_batch_size, config.max_seq_len, rank=runtime.rank,
                                  world_size=runtime.world_size, device=runtime.device, loop=False)

    def data_fingerprint(config):
        described = [(task.name, task.split, len(task)) for task in rl_problems(config, "train")]
        return hashlib.sha256(repr((described, data_fingerprint_of_corpus(config))).encode()).hexdigest()

    def extra_eval(model, tokenizer, config, runtime):
        engine = Engine(model, tokenizer, runtime)
        return {key: value for task in rl_problems(config, "eval")
                for key, value in pass_at_k(engine, task, rl.rl_eval_problems, rl.rl_samples,
                                            rl.rl_max_tokens, seed=config.seed).items()}

    def check(config):
        if not (config.num_iterations or config.time_budget):  # tokens per parameter size pretraining, not RL
            raise UserError("--stage rl needs a length: give --num-iterations N or --time-budget MINUTES")
        if config.total_batch_size:  # its metrics describe one rollout batch per step
            raise UserError("--stage rl takes one rollout batch per process per step; drop --total-batch-size "
                            "(--device-batch-size sets the problems per batch)")

    # Eager: every rollout batch has another length, which would make torch.compile compile again and again.
    preset = {"device_batch_size": 8, "matrix_lr": 0.001, "embedding_lr": 0.01, "unembedding_lr": 0.0002,
              "warmdown_ratio": 1.0, "eval_every": 25, "compile": False}
    return Stage("rl", train_batches, val_batches, warmup_constant_warmdown, data_fingerprint, init_from="sft",
                 preset=preset, extra_eval=extra_eval, settings=rl, check=check)


STAGES: dict[str, Callable[[], Stage]] = {"base": base_stage, "mid": mid_stage, "sft": sft_stage, "rl": rl_stage}


def make_stage(name: str, settings=None) -> Stage:
    """The stage called `name`, holding its own settings where it has any (RL's RLConfig)."""
    if name not in STAGES:
        raise UserError(f"--stage must be one of {', '.join(STAGES)}, got {name!r}")
    return STAGES[name]() if settings is None else STAGES[name](settings)


def pretraining_val_bpb(model, tokenizer, config, runtime) -> float:
    """Val bpb on the pretraining corpus's val shard, measured as base measures it: one yardstick for every
    stage. Every rank takes part."""
    batches = base_stage().val_batches(tokenizer, config, runtime)
    return evaluate_bpb(model, batches, tokenizer.token_bytes(), config.eval_tokens, runtime)
