"""The inference engine: a checkpoint becomes a model that answers. The chat CLI, the web server, the
evals and RL all sample through it; nothing else does.

Generation prefills the prompts once (several at a time, left-padded), copies each one's KV cache to its N
sample rows, then feeds one token per row per step.
Each row stops on its own (<|assistant_end|>, <|bos|> or max_tokens). When a row writes
<|python_start|> expression <|python_end|>, the calculator (calculator.py) runs and the engine forces
<|output_start|> result <|output_end|> into that row before it samples again.

    engine = Engine.from_checkpoint(home)      # newest stage, newest good checkpoint
    for delta in engine.stream({"messages": [{"role": "user", "content": "hi"}]}, Sampling(temperature=0)):
        print(delta, end="", flush=True)
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from picochat.calculator import calculate
from picochat.chat import render_for_completion
from picochat.checkpoint import check_vocab, checkpoint_dir, list_checkpoints, load_checkpoint, load_latest
from picochat.common import Runtime, UserError, autodetect_device, picochat_home, print0, setup_runtime
from picochat.config import option
from picochat.model import GPT, GPTConfig, KVCache
from picochat.tokenizer import Tokenizer, load_tokenizer

STAGES_NEWEST_FIRST = ("rl", "sft", "mid", "base")


# ----------------------------------------------------------------------------------------------------------
# Loading

def find_checkpoint(home: Path, source: str = "", step: int = 0) -> tuple[str, Path, dict]:
    """(stage, path, checkpoint) for --source (default: the latest stage that has a checkpoint) and --step
    (default: the newest good one, falling back past corrupt files as training does). The file is memory-
    mapped, so the optimizer state it also holds is never read into memory."""
    stages = [source] if source else [s for s in STAGES_NEWEST_FIRST if list_checkpoints(checkpoint_dir(home, s))]
    if not stages or not list_checkpoints(checkpoint_dir(home, stages[0])):
        stage = source or "base"
        raise UserError(f"no {stage} checkpoint in {checkpoint_dir(home, stage)}; create one with "
                        f"`picochat train --stage {stage}`")
    directory = checkpoint_dir(home, stages[0])
    if step:
        path = directory / f"step_{step:06d}.pt"
        return stages[0], path, load_checkpoint(path, mmap=True)
    path, checkpoint = load_latest(directory, mmap=True)
    return stages[0], path, checkpoint


def load_model(home: str | Path | None, source: str = "", step: int = 0,
               device: torch.device | str = "cpu") -> tuple[GPT, Tokenizer, dict]:
    """A stage's checkpoint as a model in eval mode, its tokenizer, and where it came from."""
    home = picochat_home(home)
    stage, path, checkpoint = find_checkpoint(home, source, step)
    tokenizer = load_tokenizer(home)
    check_vocab(tokenizer, checkpoint, path)
    model = GPT(GPTConfig(**checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    model.to(device).eval()
    info = {"stage": stage, "path": str(path), "step": checkpoint["train_state"]["step"]}
    return model, tokenizer, info


@dataclass
class LoadConfig:
    """Which checkpoint to load and where to run it: the flags of every command that loads a model."""
    source: str = option("auto", "which stage to load (auto: the latest that has a checkpoint)",
                         choices=("auto", "base", "mid", "sft", "rl"))
    step: int = option(0, "checkpoint step to load (0: the newest good one)")
    device: str = option("auto", "device", choices=("auto", "cpu", "cuda", "mps"))
    dtype: str = option("auto", "compute dtype (auto: fp32 on a CPU, where decoding is memory-bound)",
                        choices=("auto", "float32", "bfloat16"))
    home: str = option("", "artifact root (default: $PICOCHAT_HOME or ~/.cache/picochat)")

    @property
    def home_path(self) -> Path:
        return picochat_home(self.home or None)


def inference_runtime(device: str = "auto", dtype: str = "auto") -> Runtime:
    """setup_runtime for generation: "auto" means fp32 on a CPU. Decoding reads every weight once per
    token, and bf16 autocast casts every weight again each step: 426 tok/s against 715 in fp32 here
    (benchmarks/inference.py)."""
    on_cpu = (autodetect_device() if device == "auto" else device) == "cpu"
    return setup_runtime(device, "float32" if dtype == "auto" and on_cpu else dtype)


# ----------------------------------------------------------------------------------------------------------
# Sampling

@dataclass
class Sampling:
    temperature: float = 0.6     # 0: greedy
    top_k: int = 50              # 0: no top-k cut
    top_p: float = 1.0           # 1: no nucleus cut
    max_tokens: int = 256        # new tokens per sample, tool output included
    seed: int | None = None      # the same seed and prompt give the same sample

    def __post_init__(self):
        if not 0 <= self.temperature <= 10:
            raise UserError(f"temperature must be in [0, 10], got {self.temperature}")
        if self.top_k < 0:
            raise UserError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise UserError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.seed is not None and not -2**63 <= self.seed < 2**63:  # what torch.Generator takes, and int64's range
            raise UserError(f"seed must be a 64-bit signed integer, got {self.seed}")


def sample_next(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> torch.Tensor:
    """logits: (N, V) -> (N,) token ids."""
    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    scaled = logits / sampling.temperature
    # A temperature so small that the division overflows (1e-40: a logit of 1 becomes inf) would make
    # softmax compute inf - inf = NaN; so close to 0, sampling is greedy anyway.
    if not torch.isfinite(scaled).all():
        return logits.argmax(dim=-1)
    logits = scaled
    if sampling.top_k:
        kth = torch.topk(logits, min(sampling.top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - sorted_logits.softmax(dim=-1) >= sampling.top_p  # keep the token that crosses p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@dataclass
class Row:
    """The calculator state of one sample being generated."""
    forced: list[int] = field(default_factory=list)   # tool output to feed before sampling again
    expression: list[int] | None = None               # tokens since <|python_start|>, while in a call
    done: bool = False
    last_forced: bool = False                         # the token it took last was tool output, not sampled


# ----------------------------------------------------------------------------------------------------------
# The engine

class Engine:
    def __init__(self, model: GPT, tokenizer: Tokenizer, runtime: Runtime | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.runtime = runtime or Runtime(next(model.parameters()).device, torch.float32)
        self.info: dict = {}  # where the weights came from: stage, path, step
        special = tokenizer.special
        self.stop_ids = {special("<|assistant_end|>"), tokenizer.bos_id}
        self.python_start, self.python_end = special("<|python_start|>"), special("<|python_end|>")
        self.output_start, self.output_end = special("<|output_start|>"), special("<|output_end|>")

    @classmethod
    def load(cls, config: LoadConfig, quiet: bool = False) -> "Engine":
        """The engine for a command's LoadConfig flags."""
        runtime = inference_runtime(config.device, config.dtype)
        source = "" if config.source == "auto" else config.source
        return cls.from_checkpoint(config.home_path, source, config.step, runtime, quiet)

    @classmethod
    def from_checkpoint(cls, home=None, source: str = "", step: int = 0, runtime: Runtime | None = None,
                        quiet: bool = False) -> "Engine":
        device = runtime.device if runtime else "cpu"
        model, tokenizer, info = load_model(home, source, step, device)
        if not quiet:
            print0(f"loaded {info['stage']} step {info['step']} from {info['path']}")
        engine = cls(model, tokenizer, runtime)
        engine.info = info
        return engine

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], sampling: Sampling, num_samples: int = 1,
                 rows: list[Row] | None = None) -> Iterator[list[int | None]]:
        """Yield, per step, one new token per row (None for a row that has finished). There is a row per
        sample of each prompt, prompt-major; a prompt's samples share its prefill, rows stop independently.
        Pass `rows` (a fresh Row per sample) to read their state after each step, as complete() does."""
        rows = rows if rows is not None else [Row() for _ in range(len(prompts) * num_samples)]
        generator = torch.Generator(device=self.runtime.device)
        if sampling.seed is None:
            generator.seed()  # a fresh random seed for this generator only
        else:
            generator.manual_seed(sampling.seed)
        logits, cache = self.prefill(prompts, sampling.max_tokens)
        cache.repeat_rows(num_samples)
        logits = logits.repeat_interleave(num_samples, dim=0)
        for _ in range(sampling.max_tokens):
            sampled = sample_next(logits, sampling, generator).tolist()
            step = [self.advance(row, token) for row, token in zip(rows, sampled)]
            yield step
            if all(row.done for row in rows):
                return
            fed = [token if token is not None else self.tokenizer.bos_id for token in step]  # finished rows idle
            logits = self.forward(torch.tensor(fed, device=self.runtime.device)[:, None], cache)

    @torch.no_grad()
    def prefill(self, prompts: list[list[int]], max_new_tokens: int = 0) -> tuple[torch.Tensor, KVCache]:
        """Next-token logits (N, V) after each prompt, and the cache holding the prompts with room for
        max_new_tokens more. Shorter prompts are left-padded and the padding masked out: rotary attention
        sees only relative positions, so a padded prompt gets the same logits as alone."""
        if not prompts or not all(prompts):
            raise UserError("the prompt is empty")
        width = max(len(prompt) for prompt in prompts)
        max_len = width + max_new_tokens
        if max_len > self.model.cos.size(1):
            raise UserError(f"prompt of {width} tokens + max_tokens {max_new_tokens} exceeds the "
                            f"model's context of {self.model.cos.size(1)} tokens")
        device = self.runtime.device
        cache = KVCache(self.model.config, len(prompts), max_len, device, self.cache_dtype())
        if any(len(prompt) < width for prompt in prompts):
            starts = torch.tensor([width - len(prompt) for prompt in prompts], device=device)
            cache.valid = torch.arange(max_len, device=device)[None, :] >= starts[:, None]
        padded = [[self.tokenizer.bos_id] * (width - len(prompt)) + prompt for prompt in prompts]
        return self.forward(torch.tensor(padded, device=device), cache), cache

    def forward(self, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """(N, T) ids -> (N, V) fp32 logits of the last position, through the cache."""
        with self.runtime.autocast():
            return self.model.next_logits(ids, cache)

    def cache_dtype(self) -> torch.dtype:
        return self.runtime.dtype if self.runtime.device.type == "cuda" else torch.float32

    def advance(self, row: Row, sampled: int) -> int | None:
        """The token this row takes this step: forced tool output first, else the sampled one."""
        if row.done:
            return None
        row.last_forced = bool(row.forced)
        token = row.forced.pop(0) if row.forced else sampled
        if token in self.stop_ids:
            row.done = True
        elif token == self.python_start:
            row.expression = []
        elif token == self.python_end and row.expression is not None:
            result = calculate(self.tokenizer.decode(row.expression))
            row.forced = [self.output_start] + self.tokenizer.encode(result) + [self.output_end]
            row.expression = None
        elif row.expression is not None:
            row.expression.append(token)
        return token

    # ---- conveniences for callers that want text -----------------------------------------------------

    def prompt_ids(self, conversation: dict) -> list[int]:
        return render_for_completion(self.tokenizer, conversation)

    def stream(self, conversation: dict, sampling: Sampling) -> Iterator[str]:
        """Text deltas of one answer, as they are generated; never half of a multi-byte character."""
        text = TextStream(self.tokenizer)
        for step in self.generate([self.prompt_ids(conversation)], sampling):
            if step[0] is not None:
                delta = text.push(step[0])
                if delta:
                    yield delta
        tail = text.flush()
        if tail:
            yield tail

    def complete(self, prompts: list[list[int]], sampling: Sampling, num_samples: int = 1) -> list[dict]:
        """Whole samples, a row per sample of each prompt (prompt-major): {"tokens", "forced", "text",
        "finish_reason"}. "forced" flags each token the engine fed in (the calculator's output) rather than
        sampled; "stop" when the row ended itself, "length" when max_tokens cut it."""
        rows = [Row() for _ in range(len(prompts) * num_samples)]
        tokens: list[list[int]] = [[] for _ in rows]
        forced: list[list[bool]] = [[] for _ in rows]
        for step in self.generate(prompts, sampling, num_samples, rows):
            for index, token in enumerate(step):
                if token is not None:
                    tokens[index].append(token)
                    forced[index].append(rows[index].last_forced)
        return [{"tokens": t, "forced": f, "text": self.visible_text(t),
                 "finish_reason": "stop" if t and t[-1] in self.stop_ids else "length"} for t, f in zip(tokens, forced)]

    def visible_text(self, tokens: list[int]) -> str:
        stream = TextStream(self.tokenizer)
        return "".join(stream.push(token) for token in tokens) + stream.flush()


# How the tool call shows in text: <|python_start|>3*4<|python_end|><|output_start|>12<|output_end|>
# reads "<<3*4=12>>", the calculator notation of GSM8K's solutions. Other special tokens are not shown.
TOOL_TEXT = {"<|python_start|>": "<<", "<|python_end|>": "", "<|output_start|>": "=", "<|output_end|>": ">>"}


class TextStream:
    """Token ids in, text out, holding back the bytes of a character that is not complete yet."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.special_text = {tokenizer.special(name): text for name, text in TOOL_TEXT.items()}
        self.first_special = len(tokenizer.encoding._mergeable_ranks)

    def push(self, token: int) -> str:
        if token >= self.first_special:
            return self.decoder.decode(b"", final=True) + self.special_text.get(token, "")
        return self.decoder.decode(self.tokenizer.encoding.decode_single_token_bytes(token))

    def flush(self) -> str:
        return self.decoder.decode(b"", final=True)
