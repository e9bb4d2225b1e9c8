"""`picochat serve`: the web chat page and an OpenAI-compatible API over one engine, on 127.0.0.1.

    picochat serve --port 8000        # then open http://127.0.0.1:8000, or point an OpenAI client at /v1

Routes: GET / (the chat page, ui/index.html: no build step, no CDN), POST /v1/chat/completions and
POST /v1/completions (OpenAI's shapes, streamed as server-sent events or whole; text completions take text or
token ids and give `echo` and `logprobs`, what lm-evaluation-harness scores with), POST /tokenize,
POST /detokenize and GET /tokenizer_info (vLLM's shapes), GET /v1/models, GET /health.

Requests are answered together (continuous batching): one thread runs the model, and each forward gives every
request being answered its next token. A request joins between two tokens once there is room (--max-batch
requests, --kv-cache-mb of KV cache) and leaves as soon as it ends, so a short answer never waits for a long
one. Up to --max-queue requests are admitted (answered or waiting their turn); more are turned away at once
with 429. A client that goes away, streaming or not, leaves within one token and frees its place.

Every limit holds before the work it bounds: the body's size before it is parsed, the number of characters
before anything is tokenized, the queue before tokenizing, and the model's context (the sequence length it
was trained on) and the KV-cache budget (--kv-cache-mb) before any token is generated.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from picochat.common import UserError
from picochat.config import build, option
from picochat.checkpoint import LoadConfig, open_engine
from picochat.engine import Decoder, Engine, Request, Sampling, TextStream

UI_PAGE = Path(__file__).parent / "ui" / "index.html"
MAX_MESSAGES = 64
MAX_MESSAGE_CHARS = 20_000   # one message: its string, or all its text parts together
MAX_TOTAL_CHARS = 100_000    # all messages together: bounds what the tokenizer does for one request
MAX_BODY_BYTES = 2_000_000   # MAX_TOTAL_CHARS of JSON even at 12 bytes a character (an escaped emoji)
MAX_SAMPLES = 8
MAX_STOPS = 4
MAX_PROMPTS = 16             # text completions: prompts in one request
MAX_LOGPROBS = 5             # as OpenAI: the likeliest tokens reported at each position


@dataclass
class ServeConfig:
    host: str = option("127.0.0.1", "address to listen on (0.0.0.0 exposes the server to your network)")
    port: int = option(8000, "port to listen on")
    max_tokens: int = option(512, "the longest answer a request may ask for")
    max_queue: int = option(32, "requests admitted at once (answered or waiting their turn); more get 429")
    max_batch: int = option(16, "requests answered together, each token of all of them in one forward "
                                "(1: one at a time)")
    kv_cache_mb: float = option(1000.0, "KV cache of the requests answered together, in MB (10^6 bytes): rows "
                                        "(n each) x the longest prompt + max_tokens; a request that needs more "
                                        "on its own gets 400, the others wait for room")

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise UserError(f"--port must be in 0..65535, got {self.port}")
        if self.max_tokens < 1 or self.max_queue < 1 or self.max_batch < 1:
            raise UserError("--max-tokens, --max-queue and --max-batch must be >= 1")
        if not self.kv_cache_mb > 0:
            raise UserError(f"--kv-cache-mb must be > 0, got {self.kv_cache_mb}")


def run(args) -> None:
    import torch
    import uvicorn  # imported here: `picochat --help` stays fast

    config = build(ServeConfig, args)
    check_port_free(config.host, config.port)  # before the model loads: a taken port is a one-line error
    engine = open_engine(build(LoadConfig, args))
    if engine.runtime.device.type == "cpu":
        # The event loop (HTTP, JSON, server-sent events) needs a core of its own: torch's threads busy-wait
        # between ops and would take it. 2 cores, 16 streaming clients: 909 tok/s with one thread, 754 with two.
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) - 1))
    app = create_app(engine, config)
    print(f"picochat serve: http://{config.host}:{config.port} (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as error:
            raise UserError(f"cannot listen on {host}:{port} ({error.strerror}); pick another --port or --host") from None


# ----------------------------------------------------------------------------------------------------------
# Requests

class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    @model_validator(mode="after")
    def bounded(self) -> "Message":
        length = len(self.text())
        if length > MAX_MESSAGE_CHARS:
            raise ValueError(f"a message holds at most {MAX_MESSAGE_CHARS} characters (text parts together), "
                             f"this one {length}")
        return self

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class SamplingRequest(BaseModel):
    """What chat and text completion requests share: OpenAI's sampling fields, with this server's limits."""
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (user, ...)
    model: str | None = None
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)  # not in OpenAI's API; the chat page uses it
    n: int = Field(1, ge=1, le=MAX_SAMPLES)
    stop: str | list[str] | None = Field(default_factory=list)  # a list once validated
    seed: int | None = Field(None, ge=-2**63, le=2**63 - 1)  # int64, as OpenAI declares it; torch's generator takes it
    stream: bool = False
    stream_options: dict | None = None

    @field_validator("stop")
    @classmethod
    def stop_strings(cls, stop: str | list[str] | None) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > MAX_STOPS or not all(stops):
            raise ValueError(f"stop takes up to {MAX_STOPS} non-empty strings")
        return stops


class ChatRequest(SamplingRequest):
    """OpenAI's chat completion request."""
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    @field_validator("messages")
    @classmethod
    def bounded(cls, messages: list[Message]) -> list[Message]:
        total = sum(len(message.text()) for message in messages)
        if total > MAX_TOTAL_CHARS:
            raise ValueError(f"the messages hold at most {MAX_TOTAL_CHARS} characters together, these {total}")
        return messages


class CompletionRequest(SamplingRequest):
    """OpenAI's (legacy) text completion request: one or more prompts, each text or token ids."""
    prompt: list[str | list[int]]  # one prompt (text or token ids) or a list of them: a list once validated
    max_tokens: int = Field(16, ge=0)  # 0 with echo: score the prompt only
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)

    @field_validator("prompt", mode="before")
    @classmethod
    def as_list(cls, prompt):
        if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], int)):
            return [prompt]
        if not isinstance(prompt, list):
            raise ValueError("prompt is text, token ids, or a list of either")
        return prompt

    @field_validator("prompt")
    @classmethod
    def bounded(cls, prompts: list[str | list[int]]) -> list[str | list[int]]:
        if not 1 <= len(prompts) <= MAX_PROMPTS or not all(prompts):
            raise ValueError(f"prompt takes 1 to {MAX_PROMPTS} non-empty prompts (text or token ids)")
        total = sum(len(p) for p in prompts)
        if total > MAX_TOTAL_CHARS:
            raise ValueError(f"the prompts hold at most {MAX_TOTAL_CHARS} characters or tokens together, these {total}")
        return prompts


def conversation(messages) -> dict:
    """OpenAI messages -> picochat's template: every system message merged into the first user turn, and
    consecutive turns of one role joined, so turns alternate user/assistant and end with the user."""
    system = "\n\n".join(m.text() for m in messages if m.role == "system")
    turns: list[dict] = []
    for message in (m for m in messages if m.role != "system"):
        if turns and turns[-1]["role"] == message.role:
            turns[-1]["content"] += "\n\n" + message.text()
        else:
            turns.append({"role": message.role, "content": message.text()})
    if not turns or turns[0]["role"] != "user" or turns[-1]["role"] != "user":
        raise RequestError("messages must hold a user message, and end with one", "messages")
    if system:
        turns[0]["content"] = system + "\n\n" + turns[0]["content"]
    return {"messages": turns}


class RequestError(Exception):
    """A bad request: becomes a 4xx with an OpenAI-style error body."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.status, self.kind = message, param, status, kind


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def failure_body(error: Exception) -> dict:
    """The error body for something that went wrong while answering: a UserError (one of the engine's own
    checks) is the request's fault; anything else is the server's, and its traceback goes to the server's log."""
    if isinstance(error, UserError):
        return error_body(str(error))
    logging.getLogger("uvicorn.error").error("answering a request failed", exc_info=error)
    return error_body(f"the server failed while answering ({type(error).__name__}: {error})", "server_error")


async def read_request(request, kind: type[BaseModel] = ChatRequest):
    """The body as a `kind` request. Reading stops at MAX_BODY_BYTES (413), so a huge body is never held or
    parsed."""
    from starlette.requests import ClientDisconnect  # starlette comes with FastAPI, imported when serving
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise RequestError(f"the request body is over {MAX_BODY_BYTES} bytes", status=413)
    except ClientDisconnect:  # nobody is left to answer; say so in one line rather than a traceback in the log
        raise RequestError("the client hung up while sending its request") from None
    try:
        return kind.model_validate_json(bytes(body))
    except ValidationError as error:
        first = error.errors()[0]
        if first["type"] == "json_invalid":
            raise RequestError("the request body is not valid JSON") from None
        param = ".".join(str(part) for part in first["loc"]) or None
        message = str(first["ctx"]["error"]) if first["type"] == "value_error" else first["msg"]  # our validators'
        raise RequestError(f"{message} ({param or 'body'})", param) from None


# ----------------------------------------------------------------------------------------------------------
# Generation: one job per request, decoded beside the others by the scheduler's thread

Event = tuple[int, str, str | None]  # (row, text delta, finish reason or None)


@dataclass
class Job:
    """One request's work: n samples of each prompt, a row per sample, prompt-major (OpenAI's choice order).
    It turns the tokens the decoder gives its rows into text events; stop strings cut a row short, and text
    that could be the start of a stop string is held back until it is clear that it is not."""
    engine: Engine
    prompts: list[list[int]]
    sampling: Sampling
    samples: int
    stops: list[str]
    logprobs: int | None = None  # text completions: score each row's tokens, with this many alternatives
    answer: bool = True          # False: max_tokens 0, the prompt is only scored
    generated: int = 0  # tokens generated for the rows still being answered: the usage count
    tokens: list[list[int]] = field(default_factory=list)  # each row's tokens, as generated
    scored: list = field(default_factory=list)  # each row's engine.score() of prompt + tokens, if asked

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.samples

    @property
    def length(self) -> int:
        """Positions of KV cache each row needs: the longest prompt and the answer."""
        return max(len(prompt) for prompt in self.prompts) + self.sampling.max_tokens * self.answer

    def start(self, decoder: Decoder) -> Request | None:
        """Join the decoder (its prompts are prefilled now); None for a job that only scores."""
        self.streams = [TextStream(self.engine.tokenizer) for _ in range(self.rows)]
        self.texts, self.sent, self.finished = [""] * self.rows, [0] * self.rows, [False] * self.rows
        self.tokens = [[] for _ in range(self.rows)]
        self.hold = max((len(stop) for stop in self.stops), default=1) - 1
        return decoder.join(self.prompts, self.sampling, self.samples) if self.answer else None

    @property
    def done(self) -> bool:
        return all(self.finished)

    def take(self, step: list[int | None]) -> list[Event]:
        """The events of one decoding step: a token (or None, done) for each row."""
        events = []
        for row, token in enumerate(step):
            if self.finished[row]:
                continue
            self.generated += token is not None
            if token is not None:
                self.tokens[row].append(token)
            if token is None or token in self.engine.stop_ids:
                self.texts[row] += self.streams[row].flush()
                events.append(self.finish(row, len(self.texts[row]), "stop"))
                continue
            self.texts[row] += self.streams[row].push(token)
            cut = min((self.texts[row].find(s) for s in self.stops if s in self.texts[row]), default=-1)
            if cut >= 0:
                events.append(self.finish(row, cut, "stop"))
                continue
            upto = max(self.sent[row], len(self.texts[row]) - self.hold)
            if upto > self.sent[row]:
                events.append((row, self.texts[row][self.sent[row]:upto], None))
                self.sent[row] = upto
        return events

    def finish(self, row: int, end: int, reason: str) -> Event:
        self.finished[row] = True
        return row, self.texts[row][self.sent[row]:end], reason

    def end(self) -> list[Event]:
        """The rows that max_tokens cut, then the logprobs a text completion asked for: the model's own,
        teacher-forced over each row's prompt and answer (in the scheduler's thread, between tokens)."""
        events = []
        for row in range(self.rows):
            if not self.finished[row]:
                self.texts[row] += self.streams[row].flush()
                events.append(self.finish(row, len(self.texts[row]), "length"))
        if self.logprobs is not None:
            sequences = [(self.prompts[row // self.samples] + self.tokens[row], 1) for row in range(self.rows)]
            self.scored = self.engine.score(sequences, top=max(1, self.logprobs))
        return events


class Scheduler:
    """The one thread that runs the model. Admitted requests wait in line; between tokens, the ones at the
    front join the decoder while there is room (--max-batch requests, --kv-cache-mb of cache), and one forward
    per token then answers them all. A request leaves when it ends or its client has gone, and its events go
    to its Generation. The thread ends when there is nothing to do; the next request starts it again."""

    def __init__(self, engine: Engine, config: ServeConfig):
        self.engine, self.config = engine, config
        self.decoder = Decoder(engine)
        self.waiting: deque[Generation] = deque()
        self.running: list[tuple[Request | None, Generation]] = []
        self.lock = threading.Lock()  # guards waiting and thread, which the event loop's thread also touches
        self.thread: threading.Thread | None = None
        self.most_together = 0  # the most requests decoded in one step so far (/health)

    def submit(self, generation: Generation) -> None:
        with self.lock:
            self.waiting.append(generation)
            if self.thread is None:
                self.thread = threading.Thread(target=self.work, name="picochat-decoder", daemon=True)
                self.thread.start()

    def work(self) -> None:
        while True:
            with self.lock:
                if not self.waiting and not self.running:
                    self.thread = None
                    return
            self.admit()
            self.step()

    def admit(self) -> None:
        while len(self.running) < self.config.max_batch:
            with self.lock:
                if not self.waiting or (self.running and not self.fits(self.waiting[0].job)):
                    return
                generation = self.waiting.popleft()
            if generation.cancel.is_set():
                generation.close()
                continue
            try:
                self.running.append((generation.job.start(self.decoder), generation))
            except Exception as error:  # its prompt could not be prefilled: this request fails, not the others
                generation.fail(error)

    def fits(self, job: Job) -> bool:
        rows, length = self.decoder.rows + job.rows, max(self.decoder.length, job.length)
        return kv_cache_mb(self.engine, rows, length) <= self.config.kv_cache_mb

    def step(self) -> None:
        for request, generation in list(self.running):  # the ones whose clients went away leave first
            if generation.cancel.is_set():
                self.leave(request, generation)
        decoding = [request for request, _ in self.running if request is not None]
        self.most_together = max(self.most_together, len(decoding))
        try:
            if decoding:
                self.decoder.step()
        except Exception as error:  # a broken forward fails every request in it
            for request, generation in self.running:
                generation.fail(error)
            self.running, self.decoder = [], Decoder(self.engine)
            return
        for request, generation in list(self.running):
            try:
                if request is not None:
                    generation.post(generation.job.take(request.step))
                if request is None or request.finished or generation.job.done:
                    self.leave(request, generation)
                    generation.post(generation.job.end())
                    generation.close()
            except Exception as error:  # this request's own failure (its scoring, say): the others go on
                self.leave(request, generation)
                generation.fail(error)

    def leave(self, request: Request | None, generation: Generation) -> None:
        self.running = [(other, g) for other, g in self.running if g is not generation]
        if request is not None and any(request is other for other in self.decoder.requests):
            self.decoder.leave(request)
        if generation.cancel.is_set():
            generation.close()


class Gate:
    """At most `limit` requests admitted (answered or waiting their turn); the rest are refused at once."""

    def __init__(self, limit: int):
        self.limit, self.admitted = limit, 0

    def admit(self) -> None:
        if self.admitted >= self.limit:
            raise RequestError(f"the server is busy ({self.limit} requests in progress); try again shortly",
                               status=429, kind="rate_limit_error")
        self.admitted += 1

    def leave(self) -> None:
        self.admitted -= 1

    async def prepare(self, make: Callable[[], Job]) -> Job:
        """Admit a request, then build its job in a worker thread: tokenizing is work, so it waits for a
        place and keeps the event loop free. A request refused there frees its place."""
        self.admit()
        try:
            return await asyncio.to_thread(make)
        except BaseException:
            self.leave()
            raise


class Generation:
    """One admitted request, as its reader sees it: the scheduler's thread puts its events on a queue, and
    closing it (the scheduler, not the reader) frees its place, so a place is freed even if no one ever
    reads. It also listens to the connection (`receive`, the request's ASGI receive, returns
    http.disconnect once the client has gone): a client that hangs up, or a reader that leaves, takes the
    request out of the decoder within one token."""

    FINISHED = object()

    def __init__(self, job: Job, gate: Gate, scheduler: Scheduler, receive: Callable[[], Awaitable[dict]]):
        self.job, self.gate = job, gate
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancel, self.closed = threading.Event(), False
        self.loop = asyncio.get_running_loop()
        self.listener = asyncio.create_task(self.cancel_on_hang_up(receive))
        scheduler.submit(self)

    async def cancel_on_hang_up(self, receive: Callable[[], Awaitable[dict]]) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass  # the body was read already; nothing else comes before the disconnect
        self.cancel.set()

    # ---- called from the scheduler's thread

    def post(self, events: list) -> None:
        if events:
            self.call(self.take, events)

    def fail(self, error: Exception) -> None:  # handed to the reader, which reports it
        self.post([error])
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.call(self.finish)

    def call(self, function, *args) -> None:
        try:
            self.loop.call_soon_threadsafe(function, *args)
        except RuntimeError:  # the server has stopped and its event loop with it: no one is left to tell
            pass

    # ---- on the event loop

    def take(self, events: list) -> None:
        for event in events:
            self.queue.put_nowait(event)

    def finish(self) -> None:
        self.listener.cancel()
        self.gate.leave()
        self.queue.put_nowait(self.FINISHED)

    async def events(self):
        """(row, text delta, finish reason) as they come."""
        try:
            while (event := await self.queue.get()) is not self.FINISHED:
                if isinstance(event, Exception):
                    raise event
                yield event
        finally:
            self.cancel.set()


# ----------------------------------------------------------------------------------------------------------
# The app

def create_app(engine: Engine, config: ServeConfig | None = None):
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse

    config = config or ServeConfig()
    app = FastAPI(title="picochat", docs_url=None, redoc_url=None)
    gate, scheduler = Gate(config.max_queue), Scheduler(engine, config)
    model_id = f"picochat-{engine.info.get('stage', 'model')}-step{engine.info.get('step', 0)}"

    @app.exception_handler(RequestError)
    async def refused(request: Request, error: RequestError):
        return JSONResponse(error_body(error.message, error.kind, error.param), status_code=error.status)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return UI_PAGE.read_text()

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id, "admitted": gate.admitted, "answering": len(scheduler.running),
                "most_answered_together": scheduler.most_together}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "picochat"}]}

    for path, kind, make, reply_class in (("/v1/chat/completions", ChatRequest, make_job, Reply),
                                          ("/v1/completions", CompletionRequest, make_completion_job, CompletionReply)):
        app.add_route(path, completion_route(engine, config, gate, scheduler, model_id, kind, make, reply_class),
                      methods=["POST"])
    add_tokenizer_routes(app, engine)
    return app


def completion_route(engine: Engine, config: ServeConfig, gate: Gate, scheduler: Scheduler, model_id: str,
                     kind: type[SamplingRequest], make: Callable, reply_class: type[Reply]):
    """The handler of a completions route: read and bound the body, admit it, then answer whole or streamed.
    A plain Starlette route: it reads (and bounds) its own body."""
    from fastapi.responses import JSONResponse, StreamingResponse

    async def complete(request):
        body = await read_request(request, kind)
        job = await gate.prepare(lambda: make(engine, body, config))
        generation, reply = Generation(job, gate, scheduler, request.receive), reply_class(model_id, job, body)
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(reply.stream(generation.events(), include_usage), media_type="text/event-stream")
        try:
            async for row, delta, reason in generation.events():
                reply.add(row, delta, reason)
        except Exception as error:  # as in a stream: a UserError is the request's fault, the rest the server's
            return JSONResponse(failure_body(error), status_code=400 if isinstance(error, UserError) else 500)
        return JSONResponse(reply.whole())
    return complete


def make_job(engine: Engine, body: ChatRequest, config: ServeConfig) -> Job:
    """Tokenize the messages and hold the request to the model's context and to the KV-cache budget."""
    try:
        prompt = engine.prompt_ids(conversation(body.messages))
    except UserError as error:
        raise RequestError(str(error), "messages") from error
    wanted = body.max_completion_tokens or body.max_tokens or config.max_tokens
    max_tokens = answer_length(engine, [prompt], wanted, body.n, config, "messages")
    sampling = Sampling(body.temperature, body.top_k, body.top_p, max_tokens, body.seed)
    return Job(engine, [prompt], sampling, body.n, body.stop)


def make_completion_job(engine: Engine, body: CompletionRequest, config: ServeConfig) -> Job:
    """Each prompt as token ids behind <|bos|> (picochat's models read every text after it, as they were
    trained; a prompt that starts with it keeps its own), held to the context and the KV-cache budget."""
    if body.stream and body.logprobs is not None:
        raise RequestError("logprobs are given with stream: false only", "logprobs")
    bos, vocab = engine.tokenizer.bos_id, engine.tokenizer.vocab_size
    prompts = []
    for prompt in body.prompt:
        if isinstance(prompt, str):
            ids = engine.tokenizer.encode(prompt)
        elif all(0 <= token < vocab for token in prompt):
            ids = list(prompt)
        else:
            raise RequestError(f"prompt token ids must be in 0..{vocab - 1}", "prompt")
        prompts.append(ids if ids and ids[0] == bos else [bos] + ids)
    max_tokens = answer_length(engine, prompts, body.max_tokens, body.n, config, "prompt")
    sampling = Sampling(body.temperature, body.top_k, body.top_p, max(1, max_tokens), body.seed)
    return Job(engine, prompts, sampling, body.n, body.stop, body.logprobs, answer=max_tokens > 0)


def answer_length(engine: Engine, prompts: list[list[int]], wanted: int, samples: int, config: ServeConfig,
                  param: str) -> int:
    """The answer's token budget: what was asked for, within --max-tokens and the context the model was
    trained on (the rotary table runs 10x further, into positions it never learned); the KV cache checked."""
    context, longest = engine.model.config.sequence_len, max(len(prompt) for prompt in prompts)
    if longest >= context + (wanted == 0):  # a prompt that is only scored may fill the whole context
        raise RequestError(f"the {param} is {longest} tokens; this model reads at most {context - 1} "
                           f"(its context is {context} tokens, answer included)", param)
    max_tokens = min(wanted, config.max_tokens, context - longest)
    check_kv_cache(engine, len(prompts) * samples, longest + max_tokens, config.kv_cache_mb)
    return max_tokens


def kv_cache_mb(engine: Engine, rows: int, length: int) -> float:
    """The KV cache holds a key and a value per layer, KV head and position, for each row (sample)."""
    model = engine.model.config
    per_token = 2 * model.n_layer * model.n_kv_head * model.head_dim * engine.cache_dtype().itemsize
    return rows * length * per_token / 1e6


def check_kv_cache(engine: Engine, samples: int, length: int, budget_mb: float) -> None:
    needed_mb = kv_cache_mb(engine, samples, length)
    if needed_mb > budget_mb:
        raise RequestError(f"n={samples} x {length} tokens (prompt + max_tokens) need {needed_mb:.3g} MB of KV "
                           f"cache, over this server's {budget_mb:g} MB (--kv-cache-mb); ask for fewer samples "
                           "or max_tokens", "n")


class Reply:
    """Builds OpenAI's chat.completion (whole) or chat.completion.chunk events (streamed)."""
    prefix, chunk_object = "chatcmpl", "chat.completion.chunk"

    def __init__(self, model_id: str, job: Job, body: SamplingRequest):
        self.id, self.created, self.model = f"{self.prefix}-{uuid.uuid4().hex[:24]}", int(time.time()), model_id
        self.job, self.body = job, body
        self.texts, self.reasons = [""] * job.rows, [None] * job.rows

    def add(self, row: int, delta: str, reason: str | None) -> None:
        self.texts[row] += delta
        self.reasons[row] = reason or self.reasons[row]

    def usage(self) -> dict:
        prompt, completion = sum(len(p) for p in self.job.prompts), self.job.generated
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def whole(self) -> dict:
        choices = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                    "logprobs": None} for i, (text, reason) in enumerate(zip(self.texts, self.reasons))]
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": choices, "usage": self.usage()}

    def first_choice(self, row: int) -> dict:
        return {"index": row, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}

    def delta_choice(self, row: int, delta: str, reason: str | None) -> dict:
        return {"index": row, "delta": {"content": delta} if delta else {}, "finish_reason": reason}

    def chunk(self, choices: list[dict], usage: dict | None = None) -> str:
        body = {"id": self.id, "object": self.chunk_object, "created": self.created, "model": self.model,
                "choices": choices}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    async def stream(self, events, include_usage: bool):
        for row in range(len(self.texts)):
            yield self.chunk([self.first_choice(row)])
        try:
            async for row, delta, reason in events:
                self.add(row, delta, reason)
                yield self.chunk([self.delta_choice(row, delta, reason)])
            if include_usage:
                yield self.chunk([], self.usage())
        except Exception as error:  # the 200 is sent: the stream itself says what went wrong, as OpenAI's does
            yield f"data: {json.dumps(failure_body(error))}\n\n"
        yield "data: [DONE]\n\n"


class CompletionReply(Reply):
    """OpenAI's text_completion: each choice's text (after its prompt's, with echo) and, when asked for,
    its logprobs: tokens, token_logprobs, top_logprobs and text_offset, for the prompt's tokens too with
    echo. The first token of a prompt that began with <|bos|> has none; the <|bos|> the server put in
    front of a prompt is not shown."""
    prefix, chunk_object = "cmpl", "text_completion"

    def prompt_of(self, row: int) -> tuple[list[int], str]:
        """The prompt's tokens as the client gave them, and their text."""
        prompt = self.job.prompts[row // self.job.samples]
        given = self.body.prompt[row // self.job.samples]
        shown = prompt if not isinstance(given, str) and given[0] == prompt[0] else prompt[1:]
        return shown, given if isinstance(given, str) else self.job.engine.tokenizer.decode(shown)

    def whole(self) -> dict:
        choices = []
        for row, (text, reason) in enumerate(zip(self.texts, self.reasons)):
            _, prompt_text = self.prompt_of(row)
            choices.append({"index": row, "text": prompt_text + text if self.body.echo else text,
                            "logprobs": self.logprobs(row), "finish_reason": reason})
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": choices, "usage": self.usage()}

    def logprobs(self, row: int) -> dict | None:
        if self.body.logprobs is None:
            return None
        decode = self.job.engine.tokenizer.decode
        shown, prompt_text = self.prompt_of(row)
        answer, scored = self.job.tokens[row], self.job.scored[row]  # scored: every token after the first
        entries = ([None] if len(shown) == len(scored) + 1 - len(answer) else []) + scored
        if not self.body.echo:
            shown, entries = [], entries[len(entries) - len(answer):]
        tokens = [decode([token]) for token in shown + answer]
        offsets = [0 if self.body.echo else len(prompt_text)]
        for token in tokens[:-1]:
            offsets.append(offsets[-1] + len(token))
        return {"tokens": tokens, "token_logprobs": [entry and entry[0] for entry in entries],
                "top_logprobs": [entry and {decode([i]): lp for i, lp in entry[1][:self.body.logprobs]}
                                 for entry in entries], "text_offset": offsets[:len(tokens)]}

    def first_choice(self, row: int) -> dict:
        text = self.prompt_of(row)[1] if self.body.echo else ""
        return {"index": row, "text": text, "logprobs": None, "finish_reason": None}

    def delta_choice(self, row: int, delta: str, reason: str | None) -> dict:
        return {"index": row, "text": delta, "logprobs": None, "finish_reason": reason}


# ----------------------------------------------------------------------------------------------------------
# The tokenizer, as vLLM serves it (lm-evaluation-harness's remote tokenizer reads these)

class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    prompt: str = Field(max_length=MAX_TOTAL_CHARS)
    add_special_tokens: bool = True  # put <|bos|> in front, as the completions route does


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    tokens: list[int] = Field(max_length=MAX_TOTAL_CHARS)


def add_tokenizer_routes(app, engine: Engine) -> None:
    from fastapi import Request
    from fastapi.responses import JSONResponse

    tokenizer, context = engine.tokenizer, engine.model.config.sequence_len

    async def tokenize(request: Request):  # plain Starlette routes, as the completions: they bound their bodies
        body = await read_request(request, TokenizeRequest)
        ids = await asyncio.to_thread(tokenizer.encode_special, body.prompt)
        ids = [tokenizer.bos_id] + ids if body.add_special_tokens and ids[:1] != [tokenizer.bos_id] else ids
        return JSONResponse({"tokens": ids, "count": len(ids), "max_model_len": context})

    async def detokenize(request: Request):
        body = await read_request(request, DetokenizeRequest)
        if not all(0 <= token < tokenizer.vocab_size for token in body.tokens):
            raise RequestError(f"token ids must be in 0..{tokenizer.vocab_size - 1}", "tokens")
        return JSONResponse({"prompt": tokenizer.decode(body.tokens)})

    @app.get("/tokenizer_info")
    async def tokenizer_info():
        return {"tokenizer_class": "picochat", "bos_token": "<|bos|>", "eos_token": "<|assistant_end|>",
                "pad_token": None, "model_max_length": context}

    app.add_route("/tokenize", tokenize, methods=["POST"])
    app.add_route("/detokenize", detokenize, methods=["POST"])
