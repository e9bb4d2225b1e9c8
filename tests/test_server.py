"""`picochat serve` on 127.0.0.1: the OpenAI client (whole and streamed), the chat page in headless
Chromium, bad requests and the server's limits (4xx, and the server keeps serving), the bounded queue,
hang-ups, errors inside a stream, stop strings; text completions with echo and logprobs, the tokenizer
routes, and lm-evaluation-harness scoring through them.

    python -m pytest tests/test_server.py
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from helpers import TINY, flags_dict
from picochat.runtime import Runtime
from picochat.checkpoint import load_engine
from picochat.engine import Engine, Sampling
from picochat import server as serving
from picochat.server import conversation, create_app, Message, ServeConfig
from picochat.tasks.core import core_items, core_tasks
from picochat.train import run

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def trained_home(tmp_path_factory, tiny_home: Path, name: str, max_seq_len: int, iterations: int) -> Path:
    """A copy of the tiny home with a base checkpoint of max_seq_len tokens' context."""
    home = tmp_path_factory.mktemp(name) / "home"
    shutil.copytree(tiny_home, home)
    run(flags_dict(*TINY, "--max-seq-len", str(max_seq_len), "--num-iterations", str(iterations), "--home", str(home)))
    return home


@pytest.fixture(scope="module")
def engine_home(tmp_path_factory, tiny_home) -> Path:
    # sequence_len 128: room for the answers below, and a prompt past it is still inside the rotary table (10x)
    return trained_home(tmp_path_factory, tiny_home, "serve", 128, 20)


@pytest.fixture(scope="module")
def engine(engine_home) -> Engine:
    import torch
    return load_engine(engine_home, runtime=Runtime(torch.device("cpu"), torch.float32), quiet=True)


class LiveServer:
    """uvicorn serving the app in a thread, on a free port of 127.0.0.1."""

    def __init__(self, app):
        import uvicorn
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


# 0.1 MB of KV cache a request: the tiny model's token takes 512 bytes (1 layer x 1 KV head x 64 dims x a key and
# a value x 4 bytes), so n=3 answers of 10 tokens fit and n=8 of 64 do not.
SERVED = ServeConfig(max_tokens=64, max_queue=32, kv_cache_mb=0.1)


@pytest.fixture(scope="module")
def server(engine):
    live = LiveServer(create_app(engine, SERVED))
    yield live
    live.stop()


def client(server):
    from openai import OpenAI
    return OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)


HELLO = [{"role": "user", "content": "Hello"}]


# ---- the OpenAI client ---------------------------------------------------------------------------------

def test_openai_client_whole_answer_with_usage(server, engine):
    answer = client(server).chat.completions.create(model="picochat", messages=HELLO, max_tokens=12,
                                                    temperature=0)
    choice = answer.choices[0]
    expected = engine.complete([engine.prompt_ids({"messages": HELLO})], sampling(temperature=0, max_tokens=12))[0]
    assert choice.message.role == "assistant" and choice.message.content == expected["text"]
    assert choice.finish_reason == expected["finish_reason"]
    assert answer.usage.prompt_tokens == len(engine.prompt_ids({"messages": HELLO}))
    assert answer.usage.completion_tokens == len(expected["tokens"])
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def sampling(**kwargs):
    from picochat.engine import Sampling
    return Sampling(**{"top_k": 0, **kwargs})


def test_openai_client_streams_the_same_answer(server):
    api = client(server)
    whole = api.chat.completions.create(model="picochat", messages=HELLO, max_tokens=16, temperature=0)
    chunks = list(api.chat.completions.create(model="picochat", messages=HELLO, max_tokens=16, temperature=0,
                                              stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_n_seed_and_models(server):
    api = client(server)
    first = api.chat.completions.create(model="x", messages=HELLO, max_tokens=10, n=3, seed=5, temperature=1)
    again = api.chat.completions.create(model="x", messages=HELLO, max_tokens=10, n=3, seed=5, temperature=1)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    assert [m.id for m in api.models.list().data] == [first.model]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_system_messages_are_merged_into_the_first_user_turn():
    messages = [Message(role="system", content="Be brief."), Message(role="user", content="Hi"),
                Message(role="system", content="Be kind."), Message(role="user", content="Again")]
    assert conversation(messages) == {"messages": [{"role": "user", "content": "Be brief.\n\nBe kind.\n\nHi\n\nAgain"}]}


def test_stop_strings_cut_the_answer(server, engine):
    full = client(server).chat.completions.create(model="x", messages=HELLO, max_tokens=30, temperature=0)
    text = full.choices[0].message.content
    stop = text[len(text) // 2: len(text) // 2 + 2]
    assert stop.strip(), text
    for stream in (False, True):
        answer = post(server, {"messages": HELLO, "max_tokens": 30, "temperature": 0, "stop": [stop], "stream": stream})
        assert answer["text"] == text[:text.index(stop)] and answer["finish_reason"] == "stop"


def post(server, body: dict) -> dict:
    """Text and finish reason of choice 0, from a whole or a streamed answer."""
    response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    if not body.get("stream"):
        choice = response.json()["choices"][0]
        return {"text": choice["message"]["content"], "finish_reason": choice["finish_reason"]}
    chunks = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
    deltas = [c["choices"][0] for c in chunks if c["choices"]]
    return {"text": "".join(d["delta"].get("content", "") for d in deltas),
            "finish_reason": [d["finish_reason"] for d in deltas if d["finish_reason"]][-1]}


# ---- bad requests and load -----------------------------------------------------------------------------

TOO_LONG_PROMPT = "hello " * 200  # over the tiny model's 128-token context, well inside its rotary table


def malformed_requests() -> list[tuple[bytes, int, str]]:
    """(body, status, a fragment of the error message, or "" where any message will do)."""
    good = {"messages": HELLO, "max_tokens": 4}
    bodies = [b"{bad json", b"", b"[]", b"null", b"42", "\udcff".encode("utf-8", "surrogatepass"), b"\xff\xfe"]
    variants = [
        {"messages": []}, {"messages": "hi"}, {"messages": [{"role": "robot", "content": "x"}]},
        {"messages": [{"role": "user"}]}, {"messages": [{"role": "user", "content": 5}]},
        {"messages": [{"role": "user", "content": "x" * 30_000}]}, {"messages": HELLO * 100},
        {"messages": [{"role": "assistant", "content": "x"}]}, {"messages": [{"role": "system", "content": "x"}]},
        {"temperature": -1}, {"temperature": "hot"}, {"temperature": 9}, {"top_p": 0}, {"top_p": 2}, {"n": 0},
        {"n": 100}, {"max_tokens": 0}, {"max_tokens": "many"}, {"stop": ["a", "b", "c", "d", "e"]}, {"stop": [""]},
        {"stop": 5}, {"seed": "x"}, {"stream": "yes please"}, {"top_k": -3},
    ]
    requests = [(body, 400, "") for body in bodies]
    requests += [(json.dumps(v if "messages" in v else {**good, **v}).encode(), 400, "") for v in variants]
    limits = [  # the server's limits, each held before the work it bounds
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 30_000}]}]}, 400,
         "a message holds at most 20000 characters (text parts together), this one 30000 (messages.0)"),
        ({"messages": [{"role": "user", "content": "x" * 19_000}] * 6}, 400,
         "the messages hold at most 100000 characters together, these 114000 (messages)"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 5_000_000}]}]}, 413,
         "the request body is over 2000000 bytes"),
        ({"messages": [{"role": "user", "content": TOO_LONG_PROMPT}]}, 400, "this model reads at most 127"),
        ({**good, "n": 8, "max_tokens": 64}, 400, "over this server's 0.1 MB (--kv-cache-mb)"),
        ({**good, "seed": 2**64}, 400, "Input should be less than or equal to 9223372036854775807 (seed)"),
        ({**good, "seed": -2**63 - 1}, 400, "(seed)"),
    ]
    requests += [(json.dumps(body).encode(), status, message) for body, status, message in limits]
    requests.append((b'{"messages": ' + b" " * 2_000_000 + b"[]}", 413, "the request body is over 2000000 bytes"))
    return requests


def test_200_malformed_requests_get_4xx_and_the_server_keeps_serving(server):
    requests = malformed_requests()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for index in range(200):
            body, status, message = requests[index % len(requests)]
            response = http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
            assert response.status_code == status, (body[:200], response.text[:500])
            error = response.json()["error"]
            assert error["type"] == "invalid_request_error" and error["message"], error
            assert message in error["message"] and "\n" not in error["message"], error
        assert http.get("/v1/chat/completions").status_code == 405
    assert post(server, {"messages": HELLO, "max_tokens": 4})["text"] is not None


def test_the_openai_client_sees_the_limits_as_bad_requests(server, engine):
    from openai import BadRequestError
    api = client(server)
    assert len(engine.prompt_ids({"messages": [{"role": "user", "content": TOO_LONG_PROMPT}]})) in range(128, 1280)
    for too_much in ({"seed": 2**64}, {"n": 8, "max_tokens": 64},
                     {"messages": [{"role": "user", "content": TOO_LONG_PROMPT}]}):
        with pytest.raises(BadRequestError):
            api.chat.completions.create(**{"model": "x", "messages": HELLO, **too_much})
    assert len(api.chat.completions.create(model="x", messages=HELLO, n=3, max_tokens=10).choices) == 3


def test_a_temperature_too_small_to_divide_by_is_greedy(server, engine):
    api = client(server)
    greedy = api.chat.completions.create(model="x", messages=HELLO, max_tokens=16, temperature=0)
    tiny = api.chat.completions.create(model="x", messages=HELLO, max_tokens=16, temperature=1e-40)
    chunks = api.chat.completions.create(model="x", messages=HELLO, max_tokens=16, temperature=1e-40, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)  # raises on an error event
    assert tiny.choices[0].message.content == streamed == greedy.choices[0].message.content
    prompt = engine.prompt_ids({"messages": HELLO})  # the engine itself, for every caller
    assert engine.complete([prompt], sampling(temperature=1e-40, max_tokens=8, seed=1)) == \
        engine.complete([prompt], sampling(temperature=0, max_tokens=8))


def test_16_concurrent_streaming_clients_all_finish(server):
    def one(index: int) -> str:
        chunks = client(server).chat.completions.create(model="x", messages=[{"role": "user", "content": f"Hi {index}"}],
                                                        max_tokens=24, stream=True, seed=index)
        return [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    with ThreadPoolExecutor(16) as pool:
        reasons = list(pool.map(one, range(16)))
    assert all(reason in ("stop", "length") for reason in reasons)
    assert httpx.get(server.url + "/health").json()["admitted"] == 0


# ---- a scripted engine: the queue, hang-ups and failures, counted in tokens -------------------------------

class Scripted(Engine):
    """The tiny engine with a scripted model: every forward puts all probability on one visible token, never
    the end token, and waits for a permit the test releases; it counts forwards (the prefill's too) and
    tokenizations, and notes the tokenizing threads. `fail_at` makes that decoding forward of each answer
    (after its prefill) raise, as a broken model would."""

    def __init__(self, real: Engine, fail_at: int = 0):
        super().__init__(real.model, real.tokenizer, real.runtime)
        self.info, self.fail_at = real.info, fail_at
        self.token = real.tokenizer.encode("a")[0]
        self.permits = threading.Semaphore(0)
        self.steps, self.answer_steps, self.tokenized, self.tokenizing_threads = 0, 0, 0, set()

    def prompt_ids(self, conversation: dict) -> list[int]:
        self.tokenized += 1
        self.tokenizing_threads.add(threading.get_ident())
        return super().prompt_ids(conversation)

    def forward(self, ids, cache, lengths=None):
        import torch
        self.permits.acquire()
        self.steps += 1
        self.answer_steps = 0 if cache.longest == 0 else self.answer_steps + 1
        if self.fail_at and self.answer_steps == self.fail_at:
            raise RuntimeError("the scripted model broke")
        cache.advance(ids.size(1))
        logits = torch.full((ids.size(0), self.tokenizer.vocab_size), -1e9)
        logits[:, self.token] = 0.0
        return logits


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def admitted(live) -> int:
    return httpx.get(live.url + "/health").json()["admitted"]


class Held(Engine):
    """The tiny engine, whose first forward (the first request's prefill) waits until the test lets it go."""

    def __init__(self, real: Engine):
        super().__init__(real.model, real.tokenizer, real.runtime)
        self.info, self.go = real.info, threading.Event()

    def forward(self, ids, cache, lengths=None):
        assert self.go.wait(timeout=60)
        return super().forward(ids, cache, lengths)


def test_an_answer_is_the_same_alone_or_beside_15_others(engine):
    """16 clients at once: while the first request's prefill is held, the other 15 are admitted and wait; then
    they all join the decoder and are answered together. Each gets the answer it gets alone: greedy ones the
    same text, seeded samples (n=2) the same samples."""
    held = Held(engine)
    live = LiveServer(create_app(held, ServeConfig(max_tokens=64, max_queue=32, max_batch=16, kv_cache_mb=10)))
    words = ["Hello", "Hi there, how are you today?", "Why?", "Tell me a story about a cat", "What is 2 plus 2?",
             "Spell cat", "Goodbye!", "Thanks"]
    bodies = [{"messages": [{"role": "user", "content": words[i % 8] + "!" * (i // 8)}], "max_tokens": 8 + 2 * i,
               "temperature": 0, "stream": i % 2 == 1} for i in range(16)]
    for body in bodies[::5]:
        body.update(temperature=1.0, seed=7, n=2, stream=False)
    try:
        with ThreadPoolExecutor(16) as pool:
            answers = [pool.submit(httpx.post, live.url + "/v1/chat/completions", json=body, timeout=120)
                       for body in bodies]
            wait_until(lambda: admitted(live) == 16, "the 16 requests were not admitted")
            held.go.set()
            replies = [answer.result() for answer in answers]
        assert httpx.get(live.url + "/health").json()["most_answered_together"] == 16
    finally:
        held.go.set()
        live.stop()
    for body, reply in zip(bodies, replies):
        assert reply.status_code == 200, reply.text
        if body["stream"]:
            chunks = [json.loads(line[6:]) for line in reply.text.splitlines() if line.startswith("data: {")]
            texts = ["".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])]
        else:
            texts = [choice["message"]["content"] for choice in reply.json()["choices"]]
        settings = sampling(temperature=body["temperature"], max_tokens=body["max_tokens"], seed=body.get("seed"))
        alone = engine.complete([engine.prompt_ids({"messages": body["messages"]})], settings, body.get("n", 1))
        assert texts == [row["text"] for row in alone], body


def test_the_serving_benchmark_compares_batched_and_one_at_a_time_on_the_same_tokens(engine_home, tmp_path):
    out = tmp_path / "serve.json"
    result = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "benchmarks" / "serve.py"),
                             "--home", str(engine_home), "--clients", "1", "3", "--requests", "2", "--max-tokens",
                             "6", "--batches", "1", "4", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    rows = {(row["max_batch"], row["clients"]): row for row in report["rows"]}
    assert set(rows) == {(1, 1), (1, 3), (4, 1), (4, 3)}
    for clients in (1, 3):  # greedy: both servers generate the same tokens
        assert rows[1, clients]["completion_tokens"] == rows[4, clients]["completion_tokens"] > 0
        assert rows[1, clients]["requests"] == 2 * clients
        assert 0 < rows[1, clients]["ttft_p50_ms"] <= rows[1, clients]["ttft_p95_ms"]
    assert [c["clients"] for c in report["batched_over_one_at_a_time"]] == [1, 3]
    assert "| --max-batch | clients |" in result.stdout


def test_beyond_the_queue_requests_get_429_before_they_are_tokenized(engine):
    scripted = Scripted(engine)
    live = LiveServer(create_app(scripted, ServeConfig(max_tokens=8, max_queue=2)))
    try:
        body = {"messages": HELLO, "max_tokens": 8}
        with ThreadPoolExecutor(2) as pool:
            queued = [pool.submit(httpx.post, live.url + "/v1/chat/completions", json=body, timeout=60)
                      for _ in range(2)]  # one generating (waiting for permits), one waiting its turn
            wait_until(lambda: scripted.tokenized == 2, "the two requests were not admitted")
            refused = httpx.post(live.url + "/v1/chat/completions", json=body, timeout=60)
            assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limit_error"
            assert scripted.tokenized == 2  # refused before any work
            scripted.permits.release(16)
            assert [future.result().status_code for future in queued] == [200, 200]
        scripted.permits.release(8)
        assert post(live, body)["finish_reason"] == "length"  # after the rush: served
        assert live.thread.ident not in scripted.tokenizing_threads  # never on the event loop's thread
    finally:
        scripted.permits.release(1000)
        live.stop()


def raw_post(body: dict) -> bytes:
    data = json.dumps(body).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(data)) + data


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_hangs_up_stops_its_generation_within_one_token(engine, monkeypatch, stream):
    generations = []

    class Recorded(serving.Generation):
        def __init__(self, *args):
            super().__init__(*args)
            generations.append(self)

    monkeypatch.setattr(serving, "Generation", Recorded)
    scripted = Scripted(engine)
    live = LiveServer(create_app(scripted, ServeConfig(max_queue=1)))
    try:
        scripted.permits.release(3)
        with socket.create_connection(("127.0.0.1", live.port)) as connection:
            connection.sendall(raw_post({"messages": HELLO, "max_tokens": 20, "stream": stream}))
            wait_until(lambda: scripted.steps == 3, "the generation did not start")
        # hung up, with the generation waiting for its 4th token
        wait_until(lambda: generations[0].cancel.is_set(), "the server did not notice the hang-up")
        scripted.permits.release(17)  # the rest of max_tokens: a generation that went on would use them all
        wait_until(lambda: admitted(live) == 0, "the request still holds its place")
        assert scripted.steps <= 3 + 1
        scripted.permits.release(4)
        assert post(live, {"messages": HELLO, "max_tokens": 4})["finish_reason"] == "length"
    finally:
        scripted.permits.release(1000)
        live.stop()


def test_an_error_inside_a_stream_ends_it_with_an_error_event_and_done(engine):
    scripted = Scripted(engine, fail_at=3)
    scripted.permits.release(1000)
    live = LiveServer(create_app(scripted))
    try:
        body = {"messages": HELLO, "max_tokens": 10, "stream": True}
        response = httpx.post(live.url + "/v1/chat/completions", json=body, timeout=60)
        events = [line[len("data: "):] for line in response.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["type"] == "server_error" and "RuntimeError: the scripted model broke" in error["message"]
        assert "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-2]) == "aa"
        whole = httpx.post(live.url + "/v1/chat/completions", json={**body, "stream": False}, timeout=60)
        assert whole.status_code == 500 and whole.json()["error"]["type"] == "server_error"
    finally:
        live.stop()


def test_a_taken_port_is_a_one_line_error(server):
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "picochat.cli", "serve", "--port", str(server.port)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"picochat: error: cannot listen on 127.0.0.1:{server.port} (Address already in "
                                   "use); pick another --port or --host")


# ---- the chat page in a real browser -------------------------------------------------------------------

@pytest.mark.slow
def test_the_chat_page_streams_an_answer_in_headless_chromium(server, tmp_path):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium and chromium-driver (.ci/run does)")
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=420,800"):  # phone-sized
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        driver.get(server.url)
        driver.find_element(By.ID, "prompt").send_keys("Hello there")
        driver.find_element(By.ID, "send").click()
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".assistant")
                   and d.find_element(By.CSS_SELECTOR, ".assistant").text.strip())
        wait.until(lambda d: d.find_element(By.ID, "send").is_enabled())  # the stream has ended
        assert driver.find_element(By.CSS_SELECTOR, ".user").text == "Hello there"
        answer = driver.find_element(By.CSS_SELECTOR, ".assistant")
        assert answer.text.strip() and "error" not in answer.get_attribute("class")
        driver.save_screenshot(str(tmp_path / "chat.png"))
        driver.find_element(By.ID, "new-chat").click()
        assert driver.find_elements(By.CSS_SELECTOR, ".msg") == []
    finally:
        driver.quit()
    assert (tmp_path / "chat.png").stat().st_size > 1000


def test_a_client_that_hangs_up_while_sending_gets_one_line_not_a_traceback():
    from starlette.requests import ClientDisconnect

    class HungUp:
        async def stream(self):
            yield b'{"messages": '
            raise ClientDisconnect()

    with pytest.raises(serving.RequestError, match="the client hung up while sending its request"):
        asyncio.run(serving.read_request(HungUp()))


# ---- text completions, logprobs and the tokenizer routes ------------------------------------------------

def test_openai_client_text_completion_is_the_engines_greedy_text(server, engine):
    """A text prompt is read behind <|bos|>, as the model was trained; token ids give the same answer."""
    api, ids = client(server), engine.tokenizer.encode("The cat sat")
    answer = api.completions.create(model="picochat", prompt="The cat sat", max_tokens=10, temperature=0)
    expected = engine.complete([[engine.tokenizer.bos_id] + ids], sampling(temperature=0, max_tokens=10))[0]
    assert answer.object == "text_completion" and answer.choices[0].text == expected["text"]
    assert answer.usage.prompt_tokens == len(ids) + 1 and answer.usage.completion_tokens == len(expected["tokens"])
    assert api.completions.create(model="x", prompt=ids, max_tokens=10, temperature=0).choices[0].text == expected["text"]
    streamed = api.completions.create(model="x", prompt="The cat sat", max_tokens=10, temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed) == expected["text"]


def test_echo_and_logprobs_are_the_engines_own_scores(server, engine):
    """What lm-evaluation-harness reads: each prompt token's logprob given the tokens before it (the first
    of a prompt that brings its own <|bos|> has none), and the likeliest tokens at each position."""
    tokenizer, ids = engine.tokenizer, engine.tokenizer.encode("The cat sat on the mat")
    response = httpx.post(server.url + "/v1/completions", timeout=60, json={
        "prompt": [ids, [tokenizer.bos_id] + ids], "max_tokens": 0, "echo": True, "logprobs": 2}).json()
    hidden, given = (choice["logprobs"] for choice in response["choices"])
    scored = engine.score([([tokenizer.bos_id] + ids, 1)], top=2)[0]
    assert hidden["token_logprobs"] == pytest.approx([logprob for logprob, _ in scored], abs=1e-5)
    assert given["token_logprobs"][0] is None and given["token_logprobs"][1:] == pytest.approx(hidden["token_logprobs"])
    assert hidden["tokens"] == [tokenizer.decode([token]) for token in ids]
    assert "".join(hidden["tokens"]) == response["choices"][0]["text"] == "The cat sat on the mat"
    for top, (logprob, best) in zip(hidden["top_logprobs"], scored):
        assert len(top) <= 2 and max(top.values()) == pytest.approx(best[0][1], abs=1e-5)
        assert best[0][1] >= logprob - 1e-5
    assert hidden["text_offset"] == [sum(len(t) for t in hidden["tokens"][:i]) for i in range(len(ids))]
    answer = httpx.post(server.url + "/v1/completions", timeout=60, json={
        "prompt": ids, "max_tokens": 3, "temperature": 0, "logprobs": 1}).json()["choices"][0]
    assert len(answer["logprobs"]["tokens"]) == len(answer["logprobs"]["token_logprobs"]) <= 3
    assert answer["logprobs"]["text_offset"][0] == len("The cat sat on the mat")


def test_several_prompts_and_samples_come_back_prompt_major(server):
    body = {"prompt": ["a b", "c d"], "n": 2, "max_tokens": 4, "temperature": 1, "seed": 3}
    first = httpx.post(server.url + "/v1/completions", json=body, timeout=60).json()
    again = httpx.post(server.url + "/v1/completions", json=body, timeout=60).json()
    assert [choice["index"] for choice in first["choices"]] == [0, 1, 2, 3]
    assert [c["text"] for c in first["choices"]] == [c["text"] for c in again["choices"]]  # the seed holds


@pytest.mark.parametrize("body, message", [
    ({"prompt": []}, "prompt takes 1 to 16 non-empty prompts"), ({"prompt": ["a"] * 17}, "1 to 16"),
    ({"prompt": [""]}, "non-empty"), ({"prompt": [[10**9]]}, "prompt token ids must be in 0.."),
    ({"prompt": "x", "logprobs": 6}, "(logprobs)"), ({"prompt": "x", "max_tokens": -1}, "(max_tokens)"),
    ({"prompt": "x", "logprobs": 1, "stream": True}, "logprobs are given with stream: false only"),
    ({"prompt": "x " * 200}, "this model reads at most 127"), ({"prompt": 5}, "prompt is text, token ids, or a list of either (prompt)"),
    ({"prompt": ["a"] * 8, "n": 8, "max_tokens": 64}, "over this server's 0.1 MB (--kv-cache-mb)"),
])
def test_bad_completion_requests_get_400_naming_the_problem(server, body, message):
    response = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
    assert response.status_code == 400 and message in response.json()["error"]["message"], response.text


def test_tokenize_and_detokenize_round_trip(server, engine):
    tokenizer = engine.tokenizer
    tokens = httpx.post(server.url + "/tokenize", json={"prompt": "Hi there", "add_special_tokens": False}).json()
    assert tokens["tokens"] == tokenizer.encode("Hi there") and tokens["max_model_len"] == 128
    assert httpx.post(server.url + "/tokenize", json={"prompt": "Hi"}).json()["tokens"][0] == tokenizer.bos_id
    special = httpx.post(server.url + "/tokenize", json={"prompt": "<|assistant_end|>", "add_special_tokens": False})
    assert special.json()["tokens"] == [tokenizer.special("<|assistant_end|>")]  # how lm-eval finds the eos id
    assert httpx.post(server.url + "/detokenize", json={"tokens": tokens["tokens"]}).json() == {"prompt": "Hi there"}
    info = httpx.get(server.url + "/tokenizer_info").json()
    assert info["bos_token"] == "<|bos|>" and info["eos_token"] == "<|assistant_end|>"
    for route, body in (("/detokenize", {"tokens": [-1]}), ("/detokenize", {"tokens": "x"}), ("/tokenize", {})):
        assert httpx.post(server.url + route, json=body).status_code == 400


# ---- lm-evaluation-harness drives /v1/completions against `picochat serve` ----------------------------------------------------------

def picochat_serve(home: Path, tmp_path: Path):
    """`picochat serve` in its own process on a free port of 127.0.0.1: (process, base URL)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(tmp_path / "serve.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "picochat.cli", "serve", "--home", str(home), "--port", str(port),
                                "--source", "base", "--device", "cpu"], stdout=log, stderr=subprocess.STDOUT)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
    while True:
        assert process.poll() is None, (tmp_path / "serve.log").read_text()
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return process, url
        except httpx.TransportError:
            assert time.monotonic() < deadline, "picochat serve did not start"
            time.sleep(0.2)


def write_lm_eval_tasks(directory: Path, choice_items: list[dict], text_items: list[dict]) -> None:
    """Two lm-eval task files over local JSON lines: a multiple-choice task (loglikelihoods) and a
    generative one (greedy answers cut at a newline)."""
    for name, items in (("mc", choice_items), ("gen", text_items)):
        (directory / f"{name}.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    common = "dataset_path: json\ntest_split: train\n"
    (directory / "picochat_mc.yaml").write_text(
        f"task: picochat_mc\n{common}dataset_kwargs:\n  data_files: {{train: {directory / 'mc.jsonl'}}}\n"
        "output_type: multiple_choice\ndoc_to_text: '{{context}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\ntarget_delimiter: ''\nmetric_list:\n  - metric: acc\n")
    (directory / "picochat_gen.yaml").write_text(
        f"task: picochat_gen\n{common}dataset_kwargs:\n  data_files: {{train: {directory / 'gen.jsonl'}}}\n"
        "output_type: generate_until\ndoc_to_text: '{{context}}'\ndoc_to_target: '{{target}}'\n"
        "target_delimiter: ''\ngeneration_kwargs:\n  until: ['\\n']\n  max_gen_toks: 12\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n")


@pytest.mark.slow
def test_lm_eval_scores_through_the_server_as_picochat_does(served_home, tmp_path, monkeypatch):
    """lm-evaluation-harness's local-completions model, with its remote tokenizer (/tokenize, /detokenize,
    /tokenizer_info), runs a multiple-choice and a generative task from the offline eval data against
    `picochat serve`. Each loglikelihood it computes equals the engine's own for the same context and
    continuation, its greedy answers are the engine's, and so its accuracies are picochat's."""
    lm_eval = pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # the task files are local; nothing may reach for the Hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lm_eval.tasks import TaskManager
    engine = load_engine(served_home, source="base", quiet=True)
    items = [item for task in core_tasks() if task.kind == "multiple_choice" for item in core_items(served_home, task)]
    choice_items = [{"context": item["contexts"][0], "choices": item["continuations"], "answer": item["answer"]}
                    for item in items]
    text_items = [{"context": item["contexts"][0][-200:], "target": item["continuations"][item["answer"]]}
                  for item in items[:12]]
    write_lm_eval_tasks(tmp_path, choice_items, text_items)
    process, url = picochat_serve(served_home, tmp_path)
    try:
        out = lm_eval.simple_evaluate(
            model="local-completions", tasks=["picochat_mc", "picochat_gen"], task_manager=TaskManager(
                include_path=str(tmp_path)), log_samples=True, batch_size=1,
            model_args={"base_url": f"{url}/v1/completions", "model": "picochat", "tokenizer_backend": "remote",
                        "max_length": engine.model.config.sequence_len, "num_concurrent": 1})
    finally:
        process.terminate()
        process.wait(timeout=30)
    encode, bos = engine.tokenizer.encode, engine.tokenizer.bos_id
    ours, right = [], 0
    for item in choice_items:
        context = encode(item["context"])  # continuations start with their space: the split is a token boundary
        sums = [sum(lp for lp, _ in engine.score([([bos] + context + encode(choice), 1 + len(context))])[0])
                for choice in item["choices"]]
        ours.append(sums)
        right += max(range(len(sums)), key=sums.__getitem__) == item["answer"]
    samples = sorted(out["samples"]["picochat_mc"], key=lambda sample: sample["doc_id"])
    theirs = [[response[0][0] for response in sample["resps"]] for sample in samples]
    assert len(theirs) == len(ours) == len(items) >= 24
    assert max(abs(a - b) for mine, its in zip(ours, theirs) for a, b in zip(mine, its)) < 1e-4
    assert out["results"]["picochat_mc"]["acc,none"] == pytest.approx(right / len(choice_items))
    answers = engine.complete([[bos] + encode(item["context"]) for item in text_items],
                              Sampling(temperature=0, max_tokens=12))
    mine = [answer["text"].split("\n")[0] for answer in answers]
    generated = sorted(out["samples"]["picochat_gen"], key=lambda sample: sample["doc_id"])
    assert [sample["resps"][0][0] for sample in generated] == mine
    exact = sum(text == item["target"] for text, item in zip(mine, text_items)) / len(text_items)
    assert out["results"]["picochat_gen"]["exact_match,none"] == pytest.approx(exact)


@pytest.fixture(scope="module")
def served_home(tmp_path_factory, tiny_home) -> Path:
    """A home with a base checkpoint of 256-token context: room for an eval item and its answer."""
    return trained_home(tmp_path_factory, tiny_home, "served", 256, 10)
