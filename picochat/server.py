"""`picochat serve`: the web chat page and an OpenAI-compatible API over one engine, on 127.0.0.1.

    picochat serve --port 8000        # then open http://127.0.0.1:8000, or point an OpenAI client at /v1

Routes: GET / (the chat page, ui/index.html: no build step, no CDN), POST /v1/chat/completions (streamed
as server-sent events or whole), GET /v1/models, GET /health. The model answers one request at a time
(one CPU, one model); up to --max-queue requests wait their turn and more are turned away at once with 429.
A client that goes away mid-answer stops its generation within one token and frees its place.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field

from picochat.common import UserError
from picochat.config import build, option
from picochat.engine import Engine, LoadConfig, Sampling, TextStream

UI_PAGE = Path(__file__).parent / "ui" / "index.html"
MAX_MESSAGES = 64
MAX_MESSAGE_CHARS = 20_000
MAX_SAMPLES = 8


@dataclass
class ServeConfig:
    host: str = option("127.0.0.1", "address to listen on (0.0.0.0 exposes the server to your network)")
    port: int = option(8000, "port to listen on")
    max_tokens: int = option(512, "the longest answer a request may ask for")
    max_queue: int = option(32, "requests admitted at once (one generating, the rest waiting); more get 429")

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise UserError(f"--port must be in 0..65535, got {self.port}")
        if self.max_tokens < 1 or self.max_queue < 1:
            raise UserError("--max-tokens and --max-queue must be >= 1")


def run(args) -> None:
    import uvicorn  # imported here: `picochat --help` stays fast

    config = build(ServeConfig, args)
    check_port_free(config.host, config.port)  # before the model loads: a taken port is a one-line error
    engine = Engine.load(build(LoadConfig, args))
    app = create_app(engine, config.max_tokens, config.max_queue)
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
    content: str | list[TextPart] = Field(max_length=MAX_MESSAGE_CHARS)

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatRequest(BaseModel):
    """OpenAI's chat completion request, with the limits this server keeps."""
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (user, ...)
    model: str | None = None
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)  # not in OpenAI's API; the chat page uses it
    n: int = Field(1, ge=1, le=MAX_SAMPLES)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict | None = None


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


# ----------------------------------------------------------------------------------------------------------
# Generation: one job per request, run in a worker thread, stopped by a flag

@dataclass
class Job:
    engine: Engine
    prompt: list[int]
    sampling: Sampling
    samples: int
    stops: list[str]
    generated: int = 0  # tokens generated for the rows still being answered: the usage count

    def events(self, cancel: threading.Event) -> Iterator[tuple[int, str, str | None]]:
        """(row, text delta, finish reason or None) as tokens arrive; stop strings cut a row short. Text
        that could be the start of a stop string is held back until it is clear that it is not."""
        streams = [TextStream(self.engine.tokenizer) for _ in range(self.samples)]
        texts, sent, finished = [""] * self.samples, [0] * self.samples, [False] * self.samples
        hold = max((len(stop) for stop in self.stops), default=1) - 1
        for step in self.engine.generate([self.prompt], self.sampling, self.samples):
            if cancel.is_set():
                return
            for row, token in enumerate(step):
                if finished[row]:
                    continue
                self.generated += token is not None
                if token is None or token in self.engine.stop_ids:
                    texts[row] += streams[row].flush()
                    finished[row] = True
                    yield row, texts[row][sent[row]:], "stop"
                    continue
                texts[row] += streams[row].push(token)
                cut = min((texts[row].find(s) for s in self.stops if s in texts[row]), default=-1)
                if cut >= 0:
                    finished[row] = True
                    yield row, texts[row][sent[row]:cut], "stop"
                    continue
                upto = max(sent[row], len(texts[row]) - hold)
                if upto > sent[row]:
                    yield row, texts[row][sent[row]:upto], None
                    sent[row] = upto
            if all(finished):
                return
        for row in range(self.samples):  # max_tokens reached
            if not finished[row]:
                yield row, texts[row][sent[row]:] + streams[row].flush(), "length"


class Gate:
    """At most `limit` requests admitted (one generating, the rest waiting); the rest are refused at once."""

    def __init__(self, limit: int):
        self.limit, self.admitted = limit, 0
        self.model = asyncio.Lock()

    def admit(self) -> None:
        if self.admitted >= self.limit:
            raise RequestError(f"the server is busy ({self.limit} requests in progress); try again shortly",
                               status=429, kind="rate_limit_error")
        self.admitted += 1

    def leave(self) -> None:
        self.admitted -= 1


class Generation:
    """One admitted request's generation: a task that waits for the model, runs job.events() in a worker
    thread and queues what it yields. The task, not the reader, frees the request's place, so a place is
    freed even if no one ever reads; a reader that leaves (a client that disconnected) stops the
    generation within one token."""

    FINISHED = object()

    def __init__(self, job: Job, gate: Gate):
        self.job, self.gate = job, gate
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancel = threading.Event()
        self.task = asyncio.create_task(self.run())

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with self.gate.model:
                if not self.cancel.is_set():
                    await loop.run_in_executor(None, self.work, loop)
        finally:
            self.gate.leave()
            self.queue.put_nowait(self.FINISHED)

    def work(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            for event in self.job.events(self.cancel):
                loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except Exception as error:  # handed to the reader, which reports it
            loop.call_soon_threadsafe(self.queue.put_nowait, error)

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

def create_app(engine: Engine, max_tokens: int = 512, max_queue: int = 32):
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

    app = FastAPI(title="picochat", docs_url=None, redoc_url=None)
    gate = Gate(max_queue)
    model_id = f"picochat-{engine.info.get('stage', 'model')}-step{engine.info.get('step', 0)}"
    context = engine.model.cos.size(1)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        first = error.errors()[0]
        if first.get("type") == "json_invalid":
            return JSONResponse(error_body("the request body is not valid JSON"), status_code=400)
        param = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
        return JSONResponse(error_body(f"{first.get('msg', 'invalid request')} ({param or 'body'})", param=param),
                            status_code=400)

    @app.exception_handler(RequestError)
    async def refused(request: Request, error: RequestError):
        return JSONResponse(error_body(error.message, error.kind, error.param), status_code=error.status)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return UI_PAGE.read_text()

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id, "admitted": gate.admitted}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "picochat"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest):
        job = make_job(engine, body, max_tokens, context)
        gate.admit()
        generation, reply = Generation(job, gate), Reply(model_id, job)
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(reply.stream(generation.events(), include_usage), media_type="text/event-stream")
        try:
            async for row, delta, reason in generation.events():
                reply.add(row, delta, reason)
        except UserError as error:
            raise RequestError(str(error)) from error
        return reply.whole()

    return app


def make_job(engine: Engine, body, max_tokens: int, context: int) -> Job:
    try:
        prompt = engine.prompt_ids(conversation(body.messages))
    except UserError as error:
        raise RequestError(str(error), "messages") from error
    wanted = min(body.max_completion_tokens or body.max_tokens or max_tokens, max_tokens)
    room = context - len(prompt)
    if room < 1:
        raise RequestError(f"the messages are {len(prompt)} tokens; this model reads at most {context - 1}",
                           "messages")
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > 4 or any(not stop for stop in stops):
        raise RequestError("stop takes up to 4 non-empty strings", "stop")
    sampling = Sampling(body.temperature, body.top_k, body.top_p, min(wanted, room), body.seed)
    return Job(engine, prompt, sampling, body.n, stops)


class Reply:
    """Builds OpenAI's chat.completion (whole) or chat.completion.chunk events (streamed)."""

    def __init__(self, model_id: str, job: Job):
        self.id, self.created, self.model = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), model_id
        self.job = job
        self.texts, self.reasons = [""] * job.samples, [None] * job.samples

    def add(self, row: int, delta: str, reason: str | None) -> None:
        self.texts[row] += delta
        self.reasons[row] = reason or self.reasons[row]

    def usage(self) -> dict:
        prompt, completion = len(self.job.prompt), self.job.generated
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def whole(self) -> dict:
        choices = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                    "logprobs": None} for i, (text, reason) in enumerate(zip(self.texts, self.reasons))]
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": choices, "usage": self.usage()}

    def chunk(self, choices: list[dict], usage: dict | None = None) -> str:
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": choices}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    async def stream(self, events, include_usage: bool):
        for index in range(len(self.texts)):
            yield self.chunk([{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        try:
            async for row, delta, reason in events:
                self.add(row, delta, reason)
                yield self.chunk([{"index": row, "delta": {"content": delta} if delta else {}, "finish_reason": reason}])
        except UserError as error:
            yield f"data: {json.dumps(error_body(str(error)))}\n\n"
        if include_usage:
            yield self.chunk([], self.usage())
        yield "data: [DONE]\n\n"
