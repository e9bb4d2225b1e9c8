"""`picochat serve` on 127.0.0.1: the OpenAI client (whole and streamed), the chat page in headless
Chromium, bad requests (4xx, and the server keeps serving), the bounded queue, disconnects, stop strings.

    python -m pytest tests/test_server.py
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from helpers import TINY, flags_dict
from picochat.common import Runtime
from picochat.engine import Engine
from picochat.server import conversation, create_app, Message
from picochat.train import run

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def engine(tmp_path_factory, tiny_home) -> Engine:
    import torch
    home = tmp_path_factory.mktemp("serve") / "home"
    shutil.copytree(tiny_home, home)
    run(flags_dict(*TINY, "--num-iterations", "20", "--home", str(home)))
    return Engine.from_checkpoint(home, runtime=Runtime(torch.device("cpu"), torch.float32), quiet=True)


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


@pytest.fixture(scope="module")
def server(engine):
    live = LiveServer(create_app(engine, max_tokens=64, max_queue=32))
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

def malformed_requests() -> list:
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
    requests = [("raw", body) for body in bodies]
    requests += [("json", variant if "messages" in variant else {**good, **variant}) for variant in variants]
    return requests


def test_200_malformed_requests_get_4xx_and_the_server_keeps_serving(server):
    requests = malformed_requests()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for index in range(200):
            kind, body = requests[index % len(requests)]
            if kind == "raw":
                response = http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
            else:
                response = http.post("/v1/chat/completions", json=body)
            assert 400 <= response.status_code < 500, (body, response.text)
            error = response.json()["error"]
            assert error["type"] == "invalid_request_error" and error["message"]
        assert http.get("/v1/chat/completions").status_code == 405
    assert post(server, {"messages": HELLO, "max_tokens": 4})["text"] is not None


def test_16_concurrent_streaming_clients_all_finish(server):
    def one(index: int) -> str:
        chunks = client(server).chat.completions.create(model="x", messages=[{"role": "user", "content": f"Hi {index}"}],
                                                        max_tokens=24, stream=True, seed=index)
        return [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    with ThreadPoolExecutor(16) as pool:
        reasons = list(pool.map(one, range(16)))
    assert all(reason in ("stop", "length") for reason in reasons)
    assert httpx.get(server.url + "/health").json()["admitted"] == 0


def test_beyond_the_queue_requests_get_429(engine):
    live = LiveServer(create_app(engine, max_tokens=400, max_queue=2))
    try:
        body = {"messages": HELLO, "max_tokens": 400, "temperature": 1}
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(httpx.post, live.url + "/v1/chat/completions", json=body, timeout=120)
                       for _ in range(6)]
            codes = sorted(f.result().status_code for f in futures)
        assert codes.count(200) >= 2 and codes.count(429) >= 1 and set(codes) <= {200, 429}
        refused = httpx.post(live.url + "/v1/chat/completions", json=body, timeout=120)  # after the rush: served
        assert refused.status_code == 200
    finally:
        live.stop()


def test_a_client_that_disconnects_mid_stream_frees_its_place(engine):
    live = LiveServer(create_app(engine, max_tokens=2000, max_queue=1))
    try:
        body = {"messages": HELLO, "max_tokens": 2000, "temperature": 1, "stream": True}
        with httpx.stream("POST", live.url + "/v1/chat/completions", json=body, timeout=60) as response:
            next(response.iter_lines())  # the answer has started; now hang up
        deadline = time.monotonic() + 20
        while httpx.get(live.url + "/health").json()["admitted"]:
            assert time.monotonic() < deadline, "the disconnected client still holds its place"
            time.sleep(0.05)
        assert post(live, {"messages": HELLO, "max_tokens": 4})["finish_reason"] in ("stop", "length")
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
