"""THE training loop: its config, then the loop. Every stage (base, mid, SFT, RL) runs here; a Stage (stages.py)
says what differs: batches, loss mask, LR schedule, starting checkpoint. One process, or many under torchrun:
each rank runs the same step (step.py) on its own batches, the gradients summed over ranks before the update.

    picochat train --stage base --depth 3 --time-budget 8
    torchrun --standalone --nproc_per_node=8 -m picochat.cli train --stage base --depth 20
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from picochat.checkpoint import (StageLock, check_fingerprints, checkpoint_dir, continued_model_config,
                                 continued_shape, load_init, plan_stage, resolve_resume, resumed_settings, run_inputs,
                                 save_run, start_from)
from picochat.common import UserError, atomic_write_text, picochat_home
from picochat.config import build, field_names, option, require_at_least
from picochat.evals.bpb import check_val_batches, evaluate_bpb
from picochat.model import GPT, GPTConfig
from picochat.optim import OptimConfig, build_optimizers, set_lr
from picochat.perf import peak_flops, recheck_peak, step_work
from picochat.progress import MetricsLog, Progress, StopSignal, print_setup, step_record
from picochat.rl import RLConfig  # noqa: F401 (RL's flags are `picochat train` flags: cli.COMMANDS)
from picochat.runtime import Runtime, agree, launch_rank, prepare_model, print0, setup_runtime, teardown_runtime
from picochat.stages import STAGES, Stage, make_stage, pretraining_val_bpb
from picochat.step import train_step
from picochat.tokenizer import load_tokenizer

FLAG_PRESETS = {name: make().preset for name, make in STAGES.items()}  # shown in --help: cli.command_parser


@dataclass
class TrainConfig:
    stage: str = option("base", "which stage to run", choices=tuple(STAGES))
    # model shape (base only: later stages take the shape from their starting checkpoint)
    # depth 3 (2.9 M params) beat depth 4 (5.2 M) by 0.032 val bpb after 8 CPU minutes: 57% more tokens per
    # second, and at these few tokens a smaller model learns more from each (benchmarks/base_recipe.py)
    depth: int = option(3, "number of Transformer blocks; width is 64 x depth")
    max_seq_len: int = option(512, "tokens per training sequence")
    head_dim: int = option(0, "target attention head size: width // head_dim heads, at least one (0: 128)")
    kv_head_ratio: int = option(1, "query heads per key/value head (>1: grouped-query attention)")
    # Tied: one matrix reads a token in and writes it out, so copying a word from the question into the
    # calculator call comes easier. Over three seeds on a Zen 3 (with follow-ups twice in the chat mixture):
    # spelling 30% against 16%, SpellingBee 56% against 48%, for base val bpb 1.680 against 1.659
    # (docs/EVALS_AND_DATA.md). A checkpoint from before this flag reads as untied.
    tie_embeddings: bool = option(True, "one matrix for the token embedding and the lm_head, trained at "
                                        "--unembedding-lr (false: two, the embedding at --embedding-lr)")
    # batch
    device_batch_size: int = option(16, "sequences per micro-batch on each process")
    total_batch_size: int = option(0, "tokens per optimizer step over all processes; gradient "
                                      "accumulation makes up the rest (0: one micro-batch per process)")
    # how long: the first one set wins
    num_iterations: int = option(0, "optimizer steps to take")
    time_budget: float = option(0.0, "minutes of training; the LR schedule follows elapsed time")
    target_param_data_ratio: float = option(20.0, "tokens per parameter, when neither of the above is set")
    # evaluation and checkpoints
    eval_every: int = option(100, "steps between val bpb evaluations (0: only at the end)")
    eval_tokens: int = option(65536, "target tokens per val bpb evaluation")
    save_every: int = option(0, "also checkpoint every N steps (0: only at the end or on a signal)")
    keep_last: int = option(2, "checkpoints of this stage to keep")
    resume: str = option("", "continue the interrupted run from its newest good checkpoint (or PATH), "
                                 "with that run's settings", const="latest")
    if_needed: bool = option(False, "skip the stage if it finished from the same corpus, tokenizer, previous "
                                    "stage's run and settings; resume it if it was interrupted; else start it")
    # where and how it runs
    device: str = option("auto", "device", choices=("auto", "cpu", "cuda", "mps"))
    dtype: str = option("auto", "compute dtype (auto: bf16 where the hardware has it)",
                        choices=("auto", "float32", "bfloat16"))
    compile: bool = option(True, "torch.compile the model (falls back to eager where it fails)")
    grad_sync: str = option("overlap", "how gradients are summed over processes: overlap (DDP's bucketed "
                            "all-reduces during the last backward) or after (one all-reduce per parameter "
                            "after it)", choices=("overlap", "after"))
    seed: int = option(42, "random seed for the weight init")
    on_nonfinite: str = option("stop", "on a NaN/inf loss: stop, or skip that step", choices=("stop", "skip"))
    wandb: bool = option(False, "also log to Weights & Biases (when installed)")
    home: str = option("", "artifact root (default: $PICOCHAT_HOME or ~/.cache/picochat)")

    def __post_init__(self):
        require_at_least(self, 1, ("depth", "max_seq_len", "device_batch_size", "keep_last", "eval_tokens",
                                   "kv_head_ratio"))
        require_at_least(self, 0, ("total_batch_size", "num_iterations", "time_budget", "target_param_data_ratio",
                                   "eval_every", "save_every", "head_dim"))
        if self.num_iterations == 0 and self.time_budget == 0 and self.target_param_data_ratio == 0:
            raise UserError("set one of --num-iterations, --time-budget or --target-param-data-ratio")
        if self.num_iterations and self.time_budget:
            raise UserError("give --num-iterations or --time-budget, not both")
        if self.resume and self.if_needed:
            raise UserError("give --resume or --if-needed, not both (--if-needed resumes where it can)")

    @property
    def home_path(self) -> Path:
        return picochat_home(self.home or None)


@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0
    train_seconds: float = 0.0   # time in optimizer steps only (no evals, no checkpoint writes)
    skipped_steps: int = 0
    val_bpb: float = float("nan")
    pretrain_val_bpb: float = float("nan")  # on the corpus's val shard, at the end only


class NonFiniteLoss(UserError):
    pass


# ----------------------------------------------------------------------------------------------------------
# Entry point: settings, then the run

def run(args) -> TrainState:
    """`picochat train`: resolve the settings (a resumed run keeps its own), own the stage directory, train."""
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args)  # only flags the user typed
    stage_name = given.get("stage", "base")
    config, optim_config, stage = resolve_configs(stage_name, given, None)  # a bad flag fails here, before the disk
    out_dir = checkpoint_dir(config.home_path, stage.name)
    with StageLock(out_dir, enabled=launch_rank() == 0):  # rank 0 owns the directory for the whole job
        # where a later stage starts from (None for base); a resumed run reads only its own checkpoint
        init = None if given.get("resume") else load_init(config.home_path, stage)
        if config.if_needed:
            config, optim_config, stage = resolve_configs(stage_name, given, None, init)
            settings = settings_of(config, optim_config, stage)
            action, why = plan_stage(out_dir, run_inputs(stage, config, load_tokenizer(config.home_path), settings))
            print0(f"{stage.name}: {why}")
            if action == "done":
                done = json.loads((out_dir / "done.json").read_text())
                return TrainState(**{name: done[name] for name in field_names(TrainState) if name in done})
            given = {**given, "if_needed": False, "resume": "latest" if action == "resume" else ""}
        resume = resolve_resume(given["resume"], out_dir) if given.get("resume") else None
        config, optim_config, stage = resolve_configs(stage_name, given, resume[1] if resume else None,
                                                      resume or init)
        runtime = setup_runtime(config.device, config.dtype)
        try:
            return train(config, optim_config, stage, runtime, resume, None if resume else init)
        finally:
            teardown_runtime(runtime)


def resolve_configs(stage_name: str, given: dict, checkpoint: dict | None,
                    start: tuple[Path, dict] | None = None) -> tuple[TrainConfig, OptimConfig, Stage]:
    """defaults <- stage preset <- (on resume) the checkpoint's settings <- flags the user typed, except that a
    later stage's shape settings are those of the model it goes on from (start: its checkpoint). The stage
    comes back holding its own settings, where it has any (RL's RLConfig)."""
    stage = make_stage(stage_name)
    own_class = type(stage.settings) if stage.settings is not None else None
    unknown = set(stage.preset) - field_names(TrainConfig) - field_names(OptimConfig) - field_names(own_class)
    if unknown:  # a typo in a preset would otherwise be dropped without a word
        raise ValueError(f"stage {stage_name!r} presets unknown setting(s): {', '.join(sorted(unknown))}")
    shape = continued_shape(given, start) if stage.init_from and start is not None else {}  # checks typed flags
    given = {name: value for name, value in given.items() if name not in shape}
    preset = {**stage.preset, **(resumed_settings(given, checkpoint) if checkpoint is not None else {}), **shape}
    config, own = build(TrainConfig, given, preset), build(own_class, given, preset) if own_class else None
    if stage.check:
        stage.check(config)
    return config, build(OptimConfig, given, preset), make_stage(stage_name, own)


def settings_of(config: TrainConfig, optim_config: OptimConfig, stage: Stage) -> dict:
    """Every setting of the run by name: what checkpoints, done.json's fingerprint and W&B record."""
    return {**asdict(config), **asdict(optim_config), **(asdict(stage.settings) if stage.settings else {})}


def train(config: TrainConfig, optim_config: OptimConfig, stage: Stage, runtime: Runtime,
          resume: tuple[Path, dict] | None = None, init: tuple[Path, dict] | None = None) -> TrainState:
    """Train from a resumed checkpoint (everything), init (weights: a later stage's start) or scratch."""
    out_dir = checkpoint_dir(config.home_path, stage.name)
    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer(config.home_path)
    fingerprints = run_inputs(stage, config, tokenizer, settings_of(config, optim_config, stage))
    if resume is not None:
        check_fingerprints(resume[1], {name: fingerprints[name] for name in ("corpus", "tokenizer")})
    batch_shape = (config.device_batch_size, config.max_seq_len)
    check_val_batches(stage.val_batches(tokenizer, config, runtime), runtime, batch_shape)
    model_config = (continued_model_config(resume or init, tokenizer, config.max_seq_len) if resume or init else
                    GPTConfig.from_depth(config.depth, tokenizer.vocab_size, config.max_seq_len, config.head_dim,
                                         config.kv_head_ratio, config.tie_embeddings))
    grad_accum = gradient_accumulation_steps(config, runtime.world_size)
    model = GPT(model_config).to(runtime.device)
    optimizers = build_optimizers(model, optim_config, runtime.dtype)
    state, loader_state = start_from(stage, model, optimizers, runtime, out_dir, resume, init)
    train_loader = stage.train_batches(tokenizer, config, runtime, loader_state, model)
    tokens_per_step = config.device_batch_size * config.max_seq_len * runtime.world_size * grad_accum
    print_setup(config, optim_config, stage, runtime, model, grad_accum, tokens_per_step)
    step_model = prepare_model(model, runtime, config.grad_sync, batch_shape if config.compile else None)
    peak = peak_flops(runtime.device, runtime.dtype)
    print0(f"peak {runtime.dtype} matmul: {peak[0] / 1e9:,.0f} GFLOP/s ({peak[1]})")
    context = LoopContext(config, optim_config, stage, runtime, model, step_model, optimizers, train_loader,
                          tokenizer, out_dir, grad_accum, tokens_per_step,
                          plan_iterations(config, model, tokens_per_step), peak[0], fingerprints)
    return training_loop(context, TrainState(**state))


@dataclass
class LoopContext:
    """Everything the loop needs, built once by train()."""
    config: TrainConfig
    optim_config: OptimConfig
    stage: Stage
    runtime: Runtime
    model: GPT                     # the plain module: checkpoints and evals use it
    step_model: torch.nn.Module    # what the step calls: maybe compiled
    optimizers: list
    train_loader: object
    tokenizer: object
    out_dir: Path
    grad_accum: int
    tokens_per_step: int
    num_iterations: int            # 0 when a time budget decides
    peak_flops: float
    fingerprints: dict             # of the run's inputs (run_inputs), in every checkpoint and done.json


# ----------------------------------------------------------------------------------------------------------
# The loop: next batch, forward/backward, step, log, maybe eval, maybe save

def training_loop(ctx: LoopContext, state: TrainState) -> TrainState:
    config, runtime = ctx.config, ctx.runtime
    wandb_config = {"run_name": f"{ctx.stage.name}-d{config.depth}", **settings_of(config, ctx.optim_config, ctx.stage)}
    metrics = MetricsLog(ctx.out_dir / "metrics.jsonl", runtime, state.step, wandb_config if config.wandb else None)
    stop = StopSignal()
    bar = Progress(ctx.num_iterations or None, state.step, enabled=runtime.is_main)
    if state.step == 0 and config.eval_every:
        evaluate(ctx, state, metrics)  # the untrained baseline
    try:
        while progress(ctx, state) < 1:
            lr = ctx.stage.lr_schedule(progress(ctx, state), ctx.optim_config)
            set_lr(ctx.optimizers, lr)
            start = time.perf_counter()
            batches = [next(ctx.train_loader) for _ in range(ctx.grad_accum)]
            loss = train_step(ctx.step_model, ctx.model, ctx.optimizers, batches, runtime,
                              update_if=lambda loss: check_loss(loss, state, config))
            seconds, stop_requested = agree(time.perf_counter() - start, stop.requested, runtime)
            stats = ctx.train_loader.stats(seconds)
            flops_per_token = ctx.model.flops_per_token(config.max_seq_len)
            tokens, flops = step_work(stats, ctx.tokens_per_step, flops_per_token, runtime)
            state.step += 1
            state.tokens += tokens
            state.train_seconds += seconds
            record = step_record(state, loss, lr, seconds, tokens, flops, ctx.peak_flops, runtime, progress(ctx, state))
            metrics.log({**record, **stats})
            bar.update(state.step, metrics.summary())
            if stop_requested:
                save(ctx, state)
                print0(f"\nstopped by signal at step {state.step}; checkpoint written. Resume with --resume")
                return state
            if config.eval_every and state.step % config.eval_every == 0 and progress(ctx, state) < 1:
                evaluate(ctx, state, metrics)
            if config.save_every and state.step % config.save_every == 0:
                save(ctx, state)
        evaluate(ctx, state, metrics, final=True)
        save(ctx, state)
    finally:
        bar.close()
        stop.restore()
        metrics.close()
    finish(ctx, state, metrics)
    return state


def finish(ctx: LoopContext, state: TrainState, metrics: MetricsLog) -> None:
    """Mark the stage done (for the pipeline script and the report) and check the MFU's yardstick again."""
    if ctx.runtime.is_main:
        done = {**asdict(state), **metrics.last, "inputs": ctx.fingerprints}
        atomic_write_text(ctx.out_dir / "done.json", json.dumps(done, indent=2))
    print0(f"done: {state.step} steps, {state.tokens:,} tokens in {state.train_seconds / 60:.1f} min, "
           f"val bpb {state.val_bpb:.4f}, pretraining val bpb {state.pretrain_val_bpb:.4f}; "
           f"checkpoint in {ctx.out_dir}")
    recheck_peak(ctx.peak_flops, metrics.max_mfu, ctx.runtime)


def check_loss(loss: float, state: TrainState, config: TrainConfig) -> bool:
    """False when this step's update must be skipped; raises when the run must stop."""
    if math.isfinite(loss):
        return True
    if config.on_nonfinite == "stop":
        raise NonFiniteLoss(f"loss is {loss} at step {state.step + 1}; stopped without writing a checkpoint "
                            "(the last good one is kept). Lower the LR, or pass --on-nonfinite skip")
    state.skipped_steps += 1
    print0(f"\nwarning: loss is {loss} at step {state.step + 1}; skipped this update")
    return False


def progress(ctx: LoopContext, state: TrainState) -> float:
    if ctx.num_iterations:
        return state.step / ctx.num_iterations
    return state.train_seconds / (ctx.config.time_budget * 60)


# ----------------------------------------------------------------------------------------------------------
# Set-up helpers

def gradient_accumulation_steps(config: TrainConfig, world_size: int) -> int:
    per_micro_step = config.device_batch_size * config.max_seq_len * world_size
    if config.total_batch_size == 0:
        return 1
    if config.total_batch_size % per_micro_step:
        raise UserError(f"--total-batch-size {config.total_batch_size} must be a multiple of "
                        f"--device-batch-size x --max-seq-len x processes = {per_micro_step}")
    return config.total_batch_size // per_micro_step


def plan_iterations(config: TrainConfig, model: GPT, tokens_per_step: int) -> int:
    """Steps to run; 0 means a time budget decides."""
    if config.num_iterations:
        return config.num_iterations
    if config.time_budget:
        return 0
    tokens = config.target_param_data_ratio * model.num_params()["total"]
    return max(1, round(tokens / tokens_per_step))


# ----------------------------------------------------------------------------------------------------------
# Evaluation and checkpoints

def evaluate(ctx: LoopContext, state: TrainState, metrics: MetricsLog, final: bool = False) -> None:
    start = time.perf_counter()
    batches = ctx.stage.val_batches(ctx.tokenizer, ctx.config, ctx.runtime)
    state.val_bpb = evaluate_bpb(ctx.model, batches, ctx.tokenizer.token_bytes(), ctx.config.eval_tokens,
                                 ctx.runtime)
    extra = ctx.stage.extra_eval(ctx.model, ctx.tokenizer, ctx.config, ctx.runtime) if ctx.stage.extra_eval else {}
    record = {"step": state.step, "val_bpb": state.val_bpb, **extra}
    if final:  # every stage on base's yardstick too: a rise after mid or SFT means base skill was lost
        state.pretrain_val_bpb = record["pretrain_val_bpb"] = state.val_bpb if ctx.stage.name == "base" else \
            pretraining_val_bpb(ctx.model, ctx.tokenizer, ctx.config, ctx.runtime)
    seconds = time.perf_counter() - start
    metrics.log({**record, "eval_seconds": round(seconds, 3), "tokens": state.tokens})
    more = "".join(f", {key} {value}" for key, value in extra.items())
    print0(f"\nstep {state.step}: val bpb {state.val_bpb:.4f}{more} ({seconds:.1f}s)")


def save(ctx: LoopContext, state: TrainState) -> None:
    configs = {"config": ctx.config, "optim_config": ctx.optim_config, "stage_config": ctx.stage.settings}
    save_run(ctx.out_dir, state.step, ctx.model, ctx.optimizers, ctx.train_loader, state, configs, ctx.fingerprints,
             ctx.stage.name, ctx.config.keep_last, ctx.runtime)
