"""THE training loop. Base pretraining, mid-training and SFT all run here; a Stage (stages.py) says what
differs: batches, loss mask, LR schedule, starting checkpoint. One process, or many under torchrun: each rank
runs the same step on its own batches and the gradients are summed over ranks before the update.

    picochat train --stage base --depth 4 --time-budget 8
    torchrun --standalone --nproc_per_node=8 -m picochat.cli train --stage base --depth 20
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from picochat.checkpoint import (StageLock, check_fingerprints, check_vocab, checkpoint_dir, file_fingerprint,
                                 list_checkpoints, load_latest, load_model_weights, make_payload, plan_stage,
                                 resolve_resume, restore, save_checkpoint, set_aside_newer, set_aside_previous_run)
from picochat.common import (Runtime, UserError, atomic_write_text, launch_rank, picochat_home, print0,
                             setup_runtime, teardown_runtime)
from picochat.config import build, describe, field_names, flag_name, option, require_at_least
from picochat.evals.bpb import evaluate_bpb
from picochat.loss import valid_targets
from picochat.model import GPT, GPTConfig
from picochat.optim import OptimConfig, build_optimizers, set_lr
from picochat.perf import mfu_warning, peak_flops, peak_rss_bytes
from picochat.progress import MetricsLog, Progress, StopSignal
from picochat.stages import STAGES, Stage, base_stage
from picochat.tokenizer import META_FILE, load_tokenizer, tokenizer_dir


@dataclass
class TrainConfig:
    stage: str = option("base", "which stage to run", choices=tuple(STAGES))
    # model shape (base only: later stages take the shape from their starting checkpoint)
    depth: int = option(4, "number of Transformer blocks; width is 64 x depth")
    max_seq_len: int = option(512, "tokens per training sequence")
    head_dim: int = option(0, "target attention head size: width // head_dim heads, at least one (0: 128)")
    kv_head_ratio: int = option(1, "query heads per key/value head (>1: grouped-query attention)")
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
    rl_samples: int = option(4, "RL: answers sampled per problem (the group of GRPO's baseline; also k of pass@k)")
    rl_max_tokens: int = option(128, "RL: longest sampled answer, in tokens")
    rl_eval_problems: int = option(64, "RL: eval problems per task for pass@1 and pass@k at each evaluation")
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
        if self.stage == "rl" and not (self.num_iterations or self.time_budget):  # tokens/param sizes pretraining
            raise UserError("--stage rl needs a length: give --num-iterations N or --time-budget MINUTES")
        if self.stage == "rl" and self.total_batch_size:  # its metrics describe one rollout batch per step
            raise UserError("--stage rl takes one rollout batch per process per step; drop --total-batch-size "
                            "(--device-batch-size sets the problems per batch)")

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
    stage = make_stage(given.get("stage", "base"))
    out_dir = checkpoint_dir(picochat_home(given.get("home") or None), stage.name)
    config, optim_config = resolve_configs(stage, given, None)  # a bad flag fails here, before the disk
    with StageLock(out_dir, enabled=launch_rank() == 0):  # rank 0 owns the directory for the whole job
        if config.if_needed:
            action, why = plan_stage(out_dir, run_inputs(config, optim_config, stage, load_tokenizer(config.home_path)))
            print0(f"{stage.name}: {why}")
            if action == "done":
                return finished_state(out_dir)
            given = {**given, "if_needed": False, "resume": "latest" if action == "resume" else ""}
        resume = resolve_resume(given["resume"], out_dir) if given.get("resume") else None
        config, optim_config = resolve_configs(stage, given, resume[1] if resume else None)
        runtime = setup_runtime(config.device, config.dtype)
        try:
            return train(config, optim_config, stage, runtime, resume)
        finally:
            teardown_runtime(runtime)


def run_inputs(config: TrainConfig, optim_config: OptimConfig, stage: Stage, tokenizer) -> dict:
    """Fingerprints of what a run is made from (checkpoint.INPUT_NAMES): its data, its tokenizer, the record
    of the step before it (the done.json of the stage it starts from; for base, tokenizer.json) and the
    settings a resume keeps. --if-needed compares them."""
    settings = {name: value for name, value in {**asdict(config), **asdict(optim_config)}.items()
                if name in FIXED_ON_RESUME}
    previous = (checkpoint_dir(config.home_path, stage.init_from) / "done.json" if stage.init_from
                else tokenizer_dir(config.home_path) / META_FILE)  # base comes after the tokenizer's training
    return {"corpus": stage.data_fingerprint(config), "tokenizer": tokenizer.fingerprint(),
            "previous": file_fingerprint(previous),
            "settings": hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()}


def finished_state(out_dir: Path) -> TrainState:
    done = json.loads((out_dir / "done.json").read_text())
    return TrainState(**{name: done[name] for name in field_names(TrainState) if name in done})


def make_stage(name: str) -> Stage:
    if name not in STAGES:
        raise UserError(f"--stage must be one of {', '.join(STAGES)}, got {name!r}")
    stage = STAGES[name]()
    unknown = set(stage.preset) - field_names(TrainConfig) - field_names(OptimConfig)
    if unknown:  # a typo in a preset would otherwise be dropped without a word
        raise ValueError(f"stage {name!r} presets unknown setting(s): {', '.join(sorted(unknown))}")
    return stage


# Settings that decide the model, the data order or the LR schedule: a resumed run keeps the checkpoint's.
FIXED_ON_RESUME = ("depth", "max_seq_len", "head_dim", "kv_head_ratio", "device_batch_size", "total_batch_size",
                   "num_iterations", "time_budget", "target_param_data_ratio", "seed", "rl_samples", "rl_max_tokens",
                   *(f.name for f in fields(OptimConfig)))
NOT_RESUMED = ("resume", "if_needed", "home", "stage")  # where the run lives, not how it runs


def resolve_configs(stage: Stage, given: dict, checkpoint: dict | None) -> tuple[TrainConfig, OptimConfig]:
    """defaults <- stage preset <- (on resume) the checkpoint's settings <- flags the user typed."""
    preset = dict(stage.preset)
    if checkpoint is not None:
        saved = {k: v for k, v in {**checkpoint.get("config", {}), **checkpoint.get("optim_config", {})}.items()
                 if k not in NOT_RESUMED}
        check_resume_flags(given, saved)
        preset.update(saved)
    return build(TrainConfig, given, preset), build(OptimConfig, given, preset)


def check_resume_flags(given: dict, saved: dict) -> None:
    for name, value in given.items():
        if name not in saved or value == saved[name]:
            continue
        if name in FIXED_ON_RESUME:
            raise UserError(f"{flag_name(name)} {value} differs from the run being resumed ({saved[name]}); "
                            "a resumed run keeps its data order and schedule: drop the flag, or start a new run "
                            "without --resume")
        print0(f"resume: {flag_name(name)} is now {value} (was {saved[name]})")


def train(config: TrainConfig, optim_config: OptimConfig, stage: Stage, runtime: Runtime,
          resume: tuple[Path, dict] | None = None) -> TrainState:
    out_dir = checkpoint_dir(config.home_path, stage.name)
    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer(config.home_path)
    fingerprints = run_inputs(config, optim_config, stage, tokenizer)
    if resume is not None:
        check_fingerprints(resume[1], {name: fingerprints[name] for name in ("corpus", "tokenizer")})
    check_val_split(stage, tokenizer, config, runtime)
    init = None if resume else load_init(config, stage)
    model_config = model_shape(config, tokenizer, resume or init)
    grad_accum = gradient_accumulation_steps(config, runtime.world_size)
    model = GPT(model_config).to(runtime.device)
    optimizers = build_optimizers(model, optim_config, runtime.dtype)
    state, loader_state = start_state(stage, model, optimizers, runtime, out_dir, resume, init)
    train_loader = stage.train_batches(tokenizer, config, runtime, loader_state, model)
    tokens_per_step = config.device_batch_size * config.max_seq_len * runtime.world_size * grad_accum
    print_setup(config, optim_config, stage, runtime, model, grad_accum, tokens_per_step)
    step_model = prepare_model(model, config, runtime)
    peak = peak_flops(runtime.device, runtime.dtype)
    print0(f"peak {runtime.dtype} matmul: {peak[0] / 1e9:,.0f} GFLOP/s ({peak[1]})")
    context = LoopContext(config, optim_config, stage, runtime, model, step_model, optimizers, train_loader,
                          tokenizer, out_dir, grad_accum, tokens_per_step,
                          plan_iterations(config, model, tokens_per_step), peak[0], fingerprints)
    return training_loop(context, state)


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
    wandb_config = {"run_name": f"{ctx.stage.name}-d{config.depth}", **asdict(config), **asdict(ctx.optim_config)}
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
            tokens, flops = step_work(ctx)
            state.step += 1
            state.tokens += tokens
            state.train_seconds += seconds
            metrics.log({**step_metrics(ctx, state, loss, lr, seconds, tokens, flops),
                         **loader_stats(ctx.train_loader, seconds)})
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
    end_peak, _ = peak_flops(ctx.runtime.device, ctx.runtime.dtype)
    print0(f"peak {ctx.runtime.dtype} matmul: {ctx.peak_flops / 1e9:,.0f} GFLOP/s at start-up, "
           f"{end_peak / 1e9:,.0f} at the end")
    warning = mfu_warning(metrics.max_mfu, ctx.runtime.device.type)
    if warning:
        print0(f"warning: {warning}")


def train_step(step_model: torch.nn.Module, model: GPT, optimizers: list, batches: list, runtime: Runtime,
               update_if=lambda loss: True) -> float:
    """One optimizer step over `batches` (the micro-batches of this rank); returns the step's mean loss.
    update_if(loss) may veto the update (a non-finite loss); the gradients are cleared either way."""
    loss = forward_backward(step_model, batches, runtime)
    sum_gradients(step_model, model, runtime)
    update = update_if(loss)
    for optimizer in optimizers:
        if update:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss


def forward_backward(step_model: torch.nn.Module, batches: list, runtime: Runtime) -> float:
    """Accumulate gradients of sum(token losses) / (unmasked targets over all micro-batches and ranks); a
    batch of (inputs, targets, token_weights) weighs each token's loss (RL's advantages).

    Counting first means an all-masked micro-batch adds exactly 0 to loss and gradients, never NaN.
    Under DDP only the last micro-batch's backward syncs, and since DDP averages over ranks where we want
    the sum, each rank's loss is scaled by world_size. Returns the step's mean loss over all ranks."""
    count = sum(valid_targets(batch[1]).sum() for batch in batches)
    loss_sum = torch.zeros((), device=runtime.device)
    if runtime.distributed:
        dist.all_reduce(count)
    ddp = ddp_of(step_model)
    scale = (runtime.world_size if ddp else 1) / count.clamp(min=1)
    for index, (inputs, targets, *token_weights) in enumerate(batches):  # RL batches carry token weights
        last = index == len(batches) - 1
        with ddp.no_sync() if ddp and not last else contextlib.nullcontext():
            with runtime.autocast():
                loss = step_model(inputs, targets, token_weights=token_weights[0] if token_weights else None)
            (loss * scale).backward()
        loss_sum += loss.detach()
    if runtime.distributed:
        dist.all_reduce(loss_sum)
    return (loss_sum / count.clamp(min=1)).item()


def sum_gradients(step_model: torch.nn.Module, model: GPT, runtime: Runtime) -> None:
    """Sum every gradient over ranks, where DDP did not already do it during backward (--grad-sync after):
    one all-reduce per parameter after the last micro-batch, nothing overlapped. Each rank's part is
    already divided by the global token count."""
    if not runtime.distributed or ddp_of(step_model):
        return
    pending = [dist.all_reduce(p.grad, async_op=True) for p in model.parameters()]
    for work in pending:
        work.wait()


def ddp_of(step_model: torch.nn.Module) -> DistributedDataParallel | None:
    """The DDP wrapper under step_model (compiled or not), if gradients sync during backward."""
    module = getattr(step_model, "_orig_mod", step_model)
    return module if isinstance(module, DistributedDataParallel) else None


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


def agree(seconds: float, stop_requested: bool, runtime: Runtime) -> tuple[float, bool]:
    """Every rank must take the same decisions: use the slowest rank's time and anyone's stop request."""
    if not runtime.distributed:
        return seconds, stop_requested
    values = torch.tensor([seconds, float(stop_requested)], dtype=torch.float64, device=runtime.device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values[0].item(), bool(values[1].item())



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


def check_val_split(stage: Stage, tokenizer, config: TrainConfig, runtime: Runtime) -> None:
    """Fail before training rather than after it when not one rank gets a single val batch."""
    has_batch = next(iter(stage.val_batches(tokenizer, config, runtime)), None) is not None
    ranks_with_a_batch = torch.tensor(float(has_batch), device=runtime.device)
    if runtime.distributed:  # a rank may get none when the val shard has fewer row groups than ranks
        dist.all_reduce(ranks_with_a_batch)
    if ranks_with_a_batch.item() == 0:
        raise UserError(f"the val split is shorter than one batch of {config.device_batch_size} x "
                        f"{config.max_seq_len} tokens; lower --device-batch-size or --max-seq-len")


def plan_iterations(config: TrainConfig, model: GPT, tokens_per_step: int) -> int:
    """Steps to run; 0 means a time budget decides."""
    if config.num_iterations:
        return config.num_iterations
    if config.time_budget:
        return 0
    tokens = config.target_param_data_ratio * model.num_params()["total"]
    return max(1, round(tokens / tokens_per_step))



def load_init(config: TrainConfig, stage: Stage) -> tuple[Path, dict] | None:
    """The newest good checkpoint of the stage this one starts from (mid from base, SFT from mid)."""
    if not stage.init_from:
        return None
    directory = checkpoint_dir(config.home_path, stage.init_from)
    if not list_checkpoints(directory):
        raise UserError(f"--stage {stage.name} starts from the newest {stage.init_from} checkpoint, and there is "
                        f"none in {directory}; run `picochat train --stage {stage.init_from}` first")
    return load_latest(directory, mmap=True)


def model_shape(config: TrainConfig, tokenizer, start: tuple[Path, dict] | None) -> GPTConfig:
    """Base: from the flags. A later stage or a resume: from the checkpoint it starts from. Its sequence
    length, the context the engine and server allow, is the longest the model has trained at: a stage with
    longer rows raises it (the rotary table is computed, not learnt), one with shorter rows (RL's prompts
    and answers) keeps it."""
    if start is None:
        return GPTConfig.from_depth(config.depth, tokenizer.vocab_size, config.max_seq_len, config.head_dim,
                                    config.kv_head_ratio)
    path, checkpoint = start
    check_vocab(tokenizer, checkpoint, path)
    longest = max(config.max_seq_len, checkpoint["model_config"]["sequence_len"])
    return GPTConfig(**{**checkpoint["model_config"], "sequence_len": longest})


def start_state(stage: Stage, model: GPT, optimizers: list, runtime: Runtime, out_dir: Path,
                resume: tuple[Path, dict] | None, init: tuple[Path, dict] | None) -> tuple[TrainState, dict | None]:
    """Resume (everything), a later stage's start from an earlier stage (weights only), or a fresh start.
    Every rank has read its checkpoint before setup_runtime's rendezvous, so rank 0 may now move files."""
    if resume is not None:
        path, checkpoint = resume
        print0(f"resuming from {path}")
        if runtime.is_main:
            set_aside_newer(out_dir, path)
        state, loader_state = restore(checkpoint, model, optimizers, runtime)
        return TrainState(**state), loader_state
    if runtime.is_main:
        set_aside_previous_run(out_dir)
    if init is not None:
        print0(f"starting from {stage.init_from} checkpoint {init[0]}")
        load_model_weights(model, init[1])
    return TrainState(), None


def print_setup(config: TrainConfig, optim_config: OptimConfig, stage: Stage, runtime: Runtime, model: GPT,
                grad_accum: int, tokens_per_step: int) -> None:
    c = model.config
    print0(f"stage {stage.name} on {runtime.device} ({runtime.dtype}), {runtime.world_size} process(es)\n"
           f"{describe(config)}\n{describe(optim_config)}")
    print0(f"model: {c.n_layer} layers x {c.n_embd} wide, {c.n_head} heads of {c.head_dim} ({c.n_kv_head} kv); "
           f"{model.num_params()['total']:,} params, {model.flops_per_token(config.max_seq_len):.3g} FLOPs/token")
    if stage.name == "rl":  # its rows are as long as each prompt and answer: tokens are counted as they run
        print0(f"batch: {config.device_batch_size} problems x {config.rl_samples} samples per process and step, "
               f"x {runtime.world_size} process(es)")
    else:
        print0(f"batch: {tokens_per_step:,} tokens/step = {grad_accum} micro-batch(es) of {config.device_batch_size} x "
               f"{config.max_seq_len} x {runtime.world_size} process(es)")


def prepare_model(model: GPT, config: TrainConfig, runtime: Runtime) -> torch.nn.Module:
    """Start every rank from rank 0's weights, wrap the model in DDP for --grad-sync overlap (its reducer
    all-reduces ~25 MB buckets of gradients as backward produces them; compiled, dynamo splits the graph at
    the buckets so the overlap survives), then compile where it works (checked with a warm-up step)."""
    step_model: torch.nn.Module = model
    if runtime.distributed and config.grad_sync == "overlap":
        step_model = DistributedDataParallel(model, broadcast_buffers=False, gradient_as_bucket_view=True)
    elif runtime.distributed:
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)
    return try_compile(step_model, config, runtime) if config.compile else step_model


def try_compile(model: torch.nn.Module, config: TrainConfig, runtime: Runtime) -> torch.nn.Module:
    """torch.compile needs a C++ compiler (CPU) or Triton (GPU); without them, train eager, never crash."""
    compiled = torch.compile(model)
    # Two distinct tensors, as in training: passing one for both makes dynamo guard on `idx is targets`
    # and compile all over again at the first real step.
    inputs = torch.zeros(config.device_batch_size, config.max_seq_len, dtype=torch.long, device=runtime.device)
    targets = torch.zeros_like(inputs)
    error = None
    try:
        with runtime.autocast():
            loss = compiled(inputs, targets)
        loss.backward()
    except Exception as e:  # dynamo/inductor raise many types; every one of them means "use eager"
        error = e
    model.zero_grad(set_to_none=True)
    ok = torch.tensor(0.0 if error else 1.0, device=runtime.device)
    if runtime.distributed:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)  # all ranks must take the same path
    if ok.item() == 1.0:
        return compiled
    reason = str(error).strip().splitlines()[0][:200] if error else "failed on another rank"
    print0(f"torch.compile is not available here ({type(error).__name__}: {reason}); training eager")
    return model



# ----------------------------------------------------------------------------------------------------------
# Evaluation and checkpoints

def evaluate(ctx: LoopContext, state: TrainState, metrics: MetricsLog, final: bool = False) -> None:
    start = time.perf_counter()
    batches = ctx.stage.val_batches(ctx.tokenizer, ctx.config, ctx.runtime)
    state.val_bpb = evaluate_bpb(ctx.model, batches, ctx.tokenizer.token_bytes(), ctx.config.eval_tokens,
                                 ctx.runtime)
    extra = ctx.stage.extra_eval(ctx.model, ctx.tokenizer, ctx.config, ctx.runtime) if ctx.stage.extra_eval else {}
    record = {"step": state.step, "val_bpb": state.val_bpb, **extra}
    if final:
        state.pretrain_val_bpb = record["pretrain_val_bpb"] = pretrain_val_bpb(ctx, state)
    seconds = time.perf_counter() - start
    metrics.log({**record, "eval_seconds": round(seconds, 3), "tokens": state.tokens})
    more = "".join(f", {key} {value}" for key, value in extra.items())
    print0(f"\nstep {state.step}: val bpb {state.val_bpb:.4f}{more} ({seconds:.1f}s)")


def pretrain_val_bpb(ctx: LoopContext, state: TrainState) -> float:
    """Val bpb on the pretraining corpus's val shard, measured as base measures it: one yardstick for every
    stage, so a rise after mid-training or SFT means base skill was lost. Every rank takes part."""
    if ctx.stage.name == "base":
        return state.val_bpb
    batches = base_stage().val_batches(ctx.tokenizer, ctx.config, ctx.runtime)
    return evaluate_bpb(ctx.model, batches, ctx.tokenizer.token_bytes(), ctx.config.eval_tokens, ctx.runtime)


def step_work(ctx: LoopContext) -> tuple[int, float]:
    """(tokens, FLOPs) of the step just taken, over all ranks: the batch shape's, or for a sampling loader
    (RL: rollout_tokens in its last_stats) what it really ran. A sampled token is one forward pass, a third
    of a trained token's FLOPs; an update runs its non-padding tokens."""
    stats, per_token = getattr(ctx.train_loader, "last_stats", {}), ctx.model.flops_per_token(ctx.config.max_seq_len)
    if "rollout_tokens" not in stats:
        return ctx.tokens_per_step, per_token * ctx.tokens_per_step
    counts = torch.tensor([stats["rollout_tokens"], stats["update_tokens"]], dtype=torch.float64,
                          device=ctx.runtime.device)
    if ctx.runtime.distributed:
        dist.all_reduce(counts)  # each rank sampled answers of its own lengths
    sampled, updated = counts.tolist()
    return round(sampled + updated), per_token * (sampled / 3 + updated)


def step_metrics(ctx: LoopContext, state: TrainState, loss: float, lr: float, seconds: float, tokens: int,
                 flops: float) -> dict:
    """The step's record; tokens and FLOPs are the step's over all ranks (step_work)."""
    mfu = flops / seconds / ctx.runtime.world_size / ctx.peak_flops
    done = progress(ctx, state)
    eta = max(0.0, state.train_seconds * (1 - done) / done) if done > 0 else float("nan")
    return {"step": state.step, "loss": round(loss, 5), "lr": round(lr, 5), "tok_per_s": round(tokens / seconds),
            "mfu": round(mfu, 4), "eta_s": round(eta, 1), "tokens": state.tokens,
            "train_seconds": round(state.train_seconds, 2), "peak_rss_mb": peak_rss_bytes() // 2**20}


def loader_stats(loader, step_seconds: float) -> dict:
    """What a sampling loader (RL) reports of its last batch, and the update's share of the step time."""
    stats = dict(getattr(loader, "last_stats", {}))
    if "sample_seconds" in stats:
        stats["update_seconds"] = round(step_seconds - stats["sample_seconds"], 3)
        stats["update_tok_per_s"] = round(stats["update_tokens"] / max(stats["update_seconds"], 1e-6))
    return stats


def save(ctx: LoopContext, state: TrainState) -> None:
    runtime = ctx.runtime
    loader_states = [None] * runtime.world_size
    if runtime.distributed:
        dist.all_gather_object(loader_states, ctx.train_loader.state_dict())
    else:
        loader_states = [ctx.train_loader.state_dict()]
    # Every rank checks (the weights are identical), so all raise together instead of hanging in barrier().
    if not all(torch.isfinite(p).all() for p in ctx.model.parameters()):
        raise NonFiniteLoss(f"weights are not finite at step {state.step}; not writing a checkpoint")
    if runtime.is_main:
        configs = {"config": ctx.config, "optim_config": ctx.optim_config}
        payload = make_payload(ctx.model, ctx.optimizers, loader_states, state, configs, ctx.fingerprints,
                               ctx.stage.name, runtime)
        save_checkpoint(ctx.out_dir, state.step, payload, ctx.config.keep_last)
    if runtime.distributed:
        dist.barrier()
