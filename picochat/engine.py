"""The inference engine: a checkpoint becomes a model that answers. The chat CLI, the web server, the
evals and RL all sample through it; nothing else does.

Generation prefills the prompts once (several at a time, right-padded), copies each one's KV cache to its N
sample rows, then feeds one token per row per step. Rows of several requests decode side by side (Decoder):
each row has its own length, so a request can join between tokens and leave when it ends, as the server's do.
Each row stops on its own (<|assistant_end|>, <|bos|> or max_tokens). When a row writes
<|python_start|> expression <|python_end|>, the calculator (calculator.py) runs and the engine forces
<|output_start|> result <|output_end|> into that row before it samples again.

    engine = load_engine(home)      # checkpoint.py: the newest stage's newest good checkpoint
    for delta in engine.stream({"messages": [{"role": "user", "content": "hi"}]}, Sampling(temperature=0)):
        print(delta, end="", flush=True)
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F

from picochat.calculator import calculate
from picochat.chat import render_for_completion
from picochat.common import IGNORE_INDEX, UserError
from picochat.runtime import Runtime
from picochat.model import GPT, GPTConfig
from picochat.tokenizer import Tokenizer

# ----------------------------------------------------------------------------------------------------------
# The KV cache

class KVCache:
    """Keys and values of past positions for every layer and row, so generation feeds one new token at a time.
    Each row has its own length (pos): the rows of requests that started at different times decode together."""

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int, device, dtype=torch.float32):
        shape = (config.n_layer, batch_size, config.n_kv_head, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = torch.zeros(batch_size, dtype=torch.long, device=device)  # tokens cached, per row
        self.longest = 0  # max(pos), kept in Python: attention reads keys up to it without waiting for the device

    def positions(self, T: int) -> torch.Tensor:
        """(B, T): where each row's next T tokens go."""
        return self.pos[:, None] + torch.arange(T, device=self.pos.device)

    def insert(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v: (B, Hkv, T, D), stored at each row's next T positions. Returns every row's keys and values up
        to the longest row's end, (B, Hkv, Tk, D): attention_mask hides what lies past a row's own."""
        B, H, T, D = k.shape
        end = self.longest + T
        if end > self.k.size(3):
            raise UserError(f"KV cache is full ({self.k.size(3)} tokens); start a new conversation")
        where = self.positions(T)[:, None, :, None].expand(B, H, T, D)
        self.k[layer].scatter_(2, where, k.to(self.k.dtype))
        self.v[layer].scatter_(2, where, v.to(self.v.dtype))
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, T: int) -> None:
        """After every layer has inserted its T new tokens (GPT.trunk calls it)."""
        self.pos += T
        self.longest += T

    def set_lengths(self, lengths: list[int]) -> None:
        """After a right-padded prefill: each row ends at its own prompt, and its padding is written over."""
        self.pos = torch.tensor(lengths, dtype=torch.long, device=self.pos.device)
        self.longest = max(lengths)

    def attention_mask(self, Tq: int, Tk: int) -> torch.Tensor | None:
        """(B, 1, Tq, Tk): a row's i-th new token sees the row's keys up to its own position (pos + i), never
        the padding or the stale slots past its length. None for a first prefill, where every row starts at 0
        and plain causal attention is right (SDPA's is_causal, no mask tensor)."""
        if self.longest == 0:
            return None
        return (torch.arange(Tk, device=self.pos.device) <= self.positions(Tq)[:, :, None])[:, None]

    def repeat_rows(self, n: int) -> None:
        """Each row (a prefilled prompt) becomes n identical rows in a row, so n samples share one prefill."""
        self.k, self.v = self.k.repeat_interleave(n, dim=1), self.v.repeat_interleave(n, dim=1)
        self.pos = self.pos.repeat_interleave(n)

    def select(self, rows: list[int]) -> None:
        """Keep only these rows, in this order: the rows of requests that left are dropped."""
        index = torch.tensor(rows, dtype=torch.long, device=self.pos.device)
        self.k, self.v, self.pos = self.k[:, index], self.v[:, index], self.pos[index]
        self.longest = int(self.pos.max()) if rows else 0

    def extend(self, other: KVCache) -> None:
        """Append other's rows (a request that joins); the shorter of the two gets room to match the longer."""
        length = max(self.k.size(3), other.k.size(3))

        def room(t: torch.Tensor) -> torch.Tensor:  # (L, B, H, T, D) -> (L, B, H, length, D)
            return F.pad(t, (0, 0, 0, length - t.size(3)))

        self.k = torch.cat([room(self.k), room(other.k)], dim=1)
        self.v = torch.cat([room(self.v), room(other.v)], dim=1)
        self.pos, self.longest = torch.cat([self.pos, other.pos]), max(self.longest, other.longest)


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


def random_generator(seed: int | None, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()  # a fresh random seed for this generator only
    else:
        generator.manual_seed(seed)
    return generator


@dataclass(eq=False)
class Request:
    """One generation's rows inside a Decoder: a row per sample of each prompt (prompt-major), sampled with the
    request's own settings and random generator, so that it samples the same tokens alone or beside others."""
    rows: list[Row]
    sampling: Sampling
    generator: torch.Generator
    logits: torch.Tensor                                 # (rows, V): what each row samples its next token from
    steps: int = 0
    step: list[int | None] = field(default_factory=list)  # the token each row took in the last step

    @property
    def finished(self) -> bool:
        return self.steps == self.sampling.max_tokens or all(row.done for row in self.rows)


class Decoder:
    """The rows of any number of requests, decoded together. Each step, every request samples one token per row
    from its own logits, the finished requests leave, and one forward through the shared KV cache feeds the
    rest one token each. A request joins between steps: its prompts are prefilled on their own, and its cache
    rows appended. Engine.generate runs one request through a Decoder of its own; the server shares one."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.requests: list[Request] = []
        self.cache: KVCache | None = None

    @property
    def rows(self) -> int:
        return sum(len(request.rows) for request in self.requests)

    @property
    def length(self) -> int:
        """Positions the cache has room for (the longest request's prompt + max_tokens); 0 when empty."""
        return self.cache.k.size(3) if self.cache is not None else 0

    @torch.no_grad()
    def join(self, prompts: list[list[int]], sampling: Sampling, num_samples: int = 1,
             rows: list[Row] | None = None) -> Request:
        logits, cache = self.engine.prefill(prompts, sampling.max_tokens)
        cache.repeat_rows(num_samples)
        rows = rows if rows is not None else [Row() for _ in range(len(prompts) * num_samples)]
        request = Request(rows, sampling, random_generator(sampling.seed, self.engine.runtime.device),
                          logits.repeat_interleave(num_samples, dim=0))
        if self.cache is None:
            self.cache = cache
        else:
            self.cache.extend(cache)
        self.requests.append(request)
        return request

    @torch.no_grad()
    def step(self) -> None:
        """Every request takes a token per row (request.step; None for a row that is done); then the
        finished ones leave and the others get their next logits. Done rows of a running request idle on
        <|bos|>."""
        for request in self.requests:
            sampled = sample_next(request.logits, request.sampling, request.generator).tolist()
            request.step = [self.engine.advance(row, token) for row, token in zip(request.rows, sampled)]
            request.steps += 1
        self.keep([request for request in self.requests if not request.finished])
        if not self.requests:
            return
        bos = self.engine.tokenizer.bos_id
        fed = [bos if token is None else token for request in self.requests for token in request.step]
        logits = self.engine.forward(torch.tensor(fed, device=self.engine.runtime.device)[:, None], self.cache)
        for request, part in zip(self.requests, logits.split([len(request.rows) for request in self.requests])):
            request.logits = part

    def leave(self, request: Request) -> None:
        """A request stops before its end (its client went away, or a stop string ended it)."""
        self.keep([other for other in self.requests if other is not request])

    def keep(self, requests: list[Request]) -> None:
        if len(requests) == len(self.requests):
            return
        kept, start = [], 0
        for request in self.requests:
            if any(request is other for other in requests):
                kept.extend(range(start, start + len(request.rows)))
            start += len(request.rows)
        self.requests = requests
        if requests:
            self.cache.select(kept)
        else:
            self.cache = None


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

    def generate(self, prompts: list[list[int]], sampling: Sampling, num_samples: int = 1,
                 rows: list[Row] | None = None) -> Iterator[list[int | None]]:
        """Yield, per step, one new token per row (None for a row that has finished). There is a row per
        sample of each prompt, prompt-major; a prompt's samples share its prefill, rows stop independently.
        Pass `rows` (a fresh Row per sample) to read their state after each step, as complete() does."""
        decoder = Decoder(self)
        request = decoder.join(prompts, sampling, num_samples, rows)
        while decoder.requests:
            decoder.step()
            yield request.step

    @torch.no_grad()
    def prefill(self, prompts: list[list[int]], max_new_tokens: int = 0) -> tuple[torch.Tensor, KVCache]:
        """Next-token logits (N, V) after each prompt, and the cache holding the prompts with room for
        max_new_tokens more. Shorter prompts are right-padded: causal attention keeps the padding out of the
        real tokens, and each row's length in the cache keeps it out of what follows."""
        if not prompts or not all(prompts):
            raise UserError("the prompt is empty")
        lengths = [len(prompt) for prompt in prompts]
        width = max(lengths)
        max_len = width + max_new_tokens
        if max_len > self.model.cos.size(1):
            raise UserError(f"prompt of {width} tokens + max_tokens {max_new_tokens} exceeds the "
                            f"model's context of {self.model.cos.size(1)} tokens")
        device = self.runtime.device
        cache = KVCache(self.model.config, len(prompts), max_len, device, self.cache_dtype())
        padded = torch.tensor([prompt + [self.tokenizer.bos_id] * (width - len(prompt)) for prompt in prompts],
                              device=device)
        logits = self.forward(padded, cache, torch.tensor(lengths, device=device))
        cache.set_lengths(lengths)
        return logits, cache

    def forward(self, ids: torch.Tensor, cache: KVCache, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(N, T) ids -> (N, V) fp32 logits of each row's last token (position lengths - 1, else T - 1),
        through the cache."""
        with self.runtime.autocast():
            return self.model.next_logits(ids, cache, lengths)

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

    @torch.no_grad()
    def score(self, sequences: list[tuple[list[int], int]], top: int = 1) -> list[list[tuple[float, list]]]:
        """Teacher-forced scoring: for each (ids, start), every token from position start on as (its log-
        probability given the tokens before it, the `top` likeliest tokens there as [(id, logprob)]). The
        CORE eval and the server's completion logprobs both read it. Sequences are right-padded into one
        batch (causal attention: padding after a sequence changes nothing in it), and the vocab-sized head
        runs on the scored positions only."""
        width = max(len(ids) for ids, _ in sequences) - 1
        inputs = torch.zeros(len(sequences), width, dtype=torch.long)
        targets = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
        for row, (ids, start) in enumerate(sequences):
            inputs[row, :len(ids) - 1] = torch.tensor(ids[:-1])
            targets[row, start - 1:len(ids) - 1] = torch.tensor(ids[start:])
        rows, cols = (targets != IGNORE_INDEX).nonzero(as_tuple=True)  # row-major: each row's tokens in order
        device = self.runtime.device
        with self.runtime.autocast():
            hidden = self.model.trunk(inputs.to(device))
            logits = self.model.capped_logits(hidden[rows.to(device), cols.to(device)])  # (scored tokens, V)
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        chosen = logprobs.gather(1, targets[rows, cols].to(device)[:, None])[:, 0]
        best, best_ids = logprobs.topk(top, dim=-1)
        scored: list[list[tuple[float, list]]] = [[] for _ in sequences]
        for row, logprob, ids, values in zip(rows.tolist(), chosen.tolist(), best_ids.tolist(), best.tolist()):
            scored[row].append((logprob, list(zip(ids, values))))
        return scored

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
