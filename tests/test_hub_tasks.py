"""data/hub.py and the tasks it feeds (SmolTalk, MMLU auxiliary-train, GSM8K), against a fake Hugging Face
on 127.0.0.1 that serves small parquet files written here at the hub's URL layout, reached through
$HF_ENDPOINT as a mirror would be. Also GSM8K's calculator marks -> tool calls.

Run alone with `python -m pytest tests/test_hub_tasks.py`.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from picochat.calculator import calculate
from picochat.chat import merge_system, render_conversation
from picochat.common import UserError
from picochat.data.download import FINEWEB_URL
from picochat.data.hub import download_dataset_file, hub_dir, hub_url
from picochat.data.fetch import on_hub_endpoint
from picochat.tasks.online import download_chat_data
from picochat.tasks import gsm8k, mmlu_auxiliary, smoltalk
from picochat.tasks.gsm8k import ANNOTATION, GSM8K, answer_parts
from picochat.tasks.mmlu_auxiliary import MMLUAuxiliary
from picochat.tasks.smoltalk import SmolTalk

FAST = dict(retries=3, timeout=2.0, backoff=0.01)
GSM8K_TRAIN = f"{gsm8k.REPO}/{gsm8k.FILES['train']}"
OTHER_SHA256 = hashlib.sha256(b"other bytes").hexdigest()


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


@dataclass
class FakeHub:
    files: dict[str, bytes]        # "owner/name/path in repo" -> bytes
    redirect: str = ""             # "cdn": 302 to another host name (localhost), as to Hugging Face's CDN;
                                   # "hub": 302 to a path on the same host, as for a renamed repo
    status: int = 200              # 401: a gated repo; 404: no such file
    wrong_sha256_first: int = 0    # publish a wrong X-Linked-Etag for the first N GETs of each file
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (URL path, key, Authorization)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    def gets(self, key: str) -> int:
        """Requests answered with the bytes of key (not the redirects to them): one per download attempt."""
        return sum(1 for path, seen, _ in self.requests
                   if seen == key and (path.startswith("/cdn/") or not self.redirect))


class Handler(BaseHTTPRequestHandler):
    hub: FakeHub  # set on a per-server subclass

    def log_message(self, *args):
        pass  # keep pytest output clean

    def do_GET(self):
        key = self._key()
        with self.hub.lock:
            earlier = self.hub.gets(key)
            self.hub.requests.append((self.path, key, self.headers.get("Authorization")))
        if key not in self.hub.files or self.hub.status != 200:
            self.send_error(404 if key not in self.hub.files else self.hub.status)
            return
        data = self.hub.files[key]
        sha256 = OTHER_SHA256 if earlier < self.hub.wrong_sha256_first else hashlib.sha256(data).hexdigest()
        if self.hub.redirect and not self.path.startswith("/cdn/"):
            self.send_response(302)  # Hugging Face publishes the sha256 and size on its redirect
            host = f"http://localhost:{self.hub.port}" if self.hub.redirect == "cdn" else ""
            self.send_header("Location", f"{host}/cdn/{key}")
            self.send_header("X-Linked-Etag", f'"{sha256}"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        if not self.hub.redirect:
            self.send_header("X-Linked-Etag", f'"{sha256}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _key(self) -> str:
        """/datasets/<owner>/<name>/resolve/main/<path> or /cdn/<owner>/<name>/<path> -> owner/name/path."""
        if self.path.startswith("/cdn/"):
            return self.path.removeprefix("/cdn/")
        _, _, owner, name, _, _, path = self.path.split("/", 6)
        return f"{owner}/{name}/{path}"


@pytest.fixture
def serve(monkeypatch, tmp_path):
    """serve({key: bytes}, **behaviour) -> a running FakeHub that $HF_ENDPOINT points to; shut down after."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no token this machine's `hf auth login` saved
    servers = []

    def start(files: dict[str, bytes], **behaviour) -> FakeHub:
        hub = FakeHub(files, **behaviour)
        server = ThreadingHTTPServer(("127.0.0.1", 0), type("BoundHandler", (Handler,), {"hub": hub}))
        hub.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{hub.port}")
        return hub

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as probe:  # a port that was just free: connections to it are refused at once
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def gsm8k_file(rows: list[dict]) -> dict[str, bytes]:
    return {GSM8K_TRAIN: parquet_bytes(pa.Table.from_pylist(rows))}


# ----------------------------------------------------------------------------------------------------------
# hub.py: URLs, download, reuse, tokens, errors

def test_hub_url_and_fineweb_follow_hf_endpoint(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert hub_url("openai/gsm8k", "main/train.parquet") == \
        "https://huggingface.co/datasets/openai/gsm8k/resolve/main/main/train.parquet"
    assert on_hub_endpoint(FINEWEB_URL) == FINEWEB_URL
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example/")
    assert hub_url("a/b", "dir/my file.parquet", "refs/convert/parquet") == \
        "https://mirror.example/datasets/a/b/resolve/refs%2Fconvert%2Fparquet/dir/my%20file.parquet"
    assert on_hub_endpoint(FINEWEB_URL) == FINEWEB_URL.replace("https://huggingface.co", "https://mirror.example")
    assert on_hub_endpoint("https://huggingface.co.evil/x") == "https://huggingface.co.evil/x"


def test_download_lands_in_home_is_reused_and_refetched_when_changed(serve, tmp_path):
    data = parquet_bytes(pa.table({"question": ["q"], "answer": ["#### 1"]}))
    hub = serve({GSM8K_TRAIN: data})
    path = download_dataset_file(gsm8k.REPO, gsm8k.FILES["train"], hub_dir(tmp_path), **FAST)
    assert path == tmp_path / "data" / "hub" / "openai" / "gsm8k" / "main" / "train-00000-of-00001.parquet"
    assert path.read_bytes() == data and hub.gets(GSM8K_TRAIN) == 1
    assert path.with_name(path.name + ".sha256").read_text().split()[0] == hashlib.sha256(data).hexdigest()
    assert download_dataset_file(gsm8k.REPO, gsm8k.FILES["train"], hub_dir(tmp_path), **FAST) == path
    assert hub.gets(GSM8K_TRAIN) == 1
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one changed byte: only the sha256 sees it
    download_dataset_file(gsm8k.REPO, gsm8k.FILES["train"], hub_dir(tmp_path), **FAST)
    assert path.read_bytes() == data and hub.gets(GSM8K_TRAIN) == 2
    assert not list(path.parent.glob("*.part"))


def test_processes_asking_at_once_download_once(serve, tmp_path):
    hub = serve(gsm8k_file([{"question": "q", "answer": "#### 1"}]))
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(download_dataset_file(
        gsm8k.REPO, gsm8k.FILES["train"], hub_dir(tmp_path), **FAST))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(paths) == 4 and len(set(paths)) == 1 and hub.gets(GSM8K_TRAIN) == 1


def test_a_file_put_there_by_hand_is_used_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    final = hub_dir(tmp_path) / GSM8K_TRAIN
    final.parent.mkdir(parents=True)
    pq.write_table(pa.table({"question": ["q"], "answer": ["#### 1"]}), final)
    assert download_dataset_file(gsm8k.REPO, gsm8k.FILES["train"], hub_dir(tmp_path), **FAST) == final
    assert final.with_name(final.name + ".sha256").exists()


@pytest.mark.parametrize("redirect", ["", "cdn", "hub"])
def test_token_goes_to_the_hub_and_nowhere_else(serve, tmp_path, monkeypatch, redirect):
    hub = serve(gsm8k_file([{"question": "q", "answer": "#### 1"}]), redirect=redirect)
    download_dataset_file(gsm8k.REPO, gsm8k.FILES["train"], hub_dir(tmp_path / "a"), **FAST)
    assert [auth for _, _, auth in hub.requests] == [None] * (2 if redirect else 1)

    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    hub.requests.clear()
    download_dataset_file(gsm8k.REPO, gsm8k.FILES["train"], hub_dir(tmp_path / "b"), **FAST)
    hub_request, *redirected = hub.requests
    assert hub_request[0].startswith("/datasets/") and hub_request[2] == "Bearer hf_secret"
    expected = {"": [], "cdn": [("/cdn/", None)], "hub": [("/cdn/", "Bearer hf_secret")]}[redirect]
    assert [(path[:5], auth) for path, _, auth in redirected] == expected

    monkeypatch.delenv("HF_TOKEN")  # then the token `hf auth login` saved is used
    (tmp_path / "hf_home").mkdir()
    (tmp_path / "hf_home" / "token").write_text("hf_saved\n")
    hub.requests.clear()
    download_dataset_file(gsm8k.REPO, gsm8k.FILES["train"], hub_dir(tmp_path / "c"), **FAST)
    assert hub.requests[0][2] == "Bearer hf_saved"


def test_wrong_published_sha256_is_retried_then_refused(serve, tmp_path):
    hub = serve(gsm8k_file([{"question": "q", "answer": "#### 1"}]), wrong_sha256_first=1)
    path = download_dataset_file(gsm8k.REPO, gsm8k.FILES["train"], hub_dir(tmp_path / "a"), **FAST)
    assert hub.gets(GSM8K_TRAIN) == 2 and path.read_bytes() == hub.files[GSM8K_TRAIN]

    hub = serve(hub.files, wrong_sha256_first=99)
    with pytest.raises(UserError, match=r"after 3 attempts.*sha256 mismatch") as info:
        download_dataset_file(gsm8k.REPO, gsm8k.FILES["train"], hub_dir(tmp_path / "b"), **FAST)
    assert "\n" not in str(info.value) and hub.gets(GSM8K_TRAIN) == 3
    folder = (hub_dir(tmp_path / "b") / GSM8K_TRAIN).parent
    assert not [p for p in folder.iterdir() if not p.name.endswith(".lock")]


@pytest.mark.parametrize("status, message", [(401, "HF_TOKEN"), (404, "404")])
def test_refused_or_missing_file_fails_at_once(serve, tmp_path, monkeypatch, status, message):
    hub = serve(gsm8k_file([{"question": "q", "answer": "#### 1"}]), status=status)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    with pytest.raises(UserError, match=message) as info:
        download_dataset_file(gsm8k.REPO, gsm8k.FILES["train"], hub_dir(tmp_path), **FAST)
    assert len(hub.requests) == 1  # no retry can fix it
    assert "hf_secret" not in str(info.value) and "\n" not in str(info.value)


def test_unreachable_hub_is_one_line_saying_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"could not reach http://127\.0\.0\.1.*HF_ENDPOINT.*offline") as info:
        download_dataset_file(gsm8k.REPO, gsm8k.FILES["train"], hub_dir(tmp_path), **FAST)
    assert "\n" not in str(info.value) and time.perf_counter() - start < 5


@pytest.mark.parametrize("repo, path", [("openai", "x.parquet"), ("../x", "x.parquet"), ("a/b", "../../x"),
                                        ("a/b", "/etc/passwd"), ("a/b", "dir//x"), ("a/..", "x")])
def test_names_that_would_leave_the_hub_folder_are_refused(tmp_path, repo, path):
    with pytest.raises(UserError, match="owner/name"):
        download_dataset_file(repo, path, hub_dir(tmp_path))
    assert not (tmp_path / "data").exists()


def test_download_chat_data_fetches_every_file(serve, tmp_path):
    keys = [f"{module.REPO}/{path}" for module in (smoltalk, mmlu_auxiliary, gsm8k) for path in module.FILES.values()]
    files = {key: parquet_bytes(pa.table({"row": [index]})) for index, key in enumerate(keys)}
    serve(files)
    lines = []
    paths = download_chat_data(tmp_path, log=lines.append)
    assert sorted(paths) == sorted(hub_dir(tmp_path) / key for key in files) and len(lines) == len(files) == 4
    assert download_chat_data(tmp_path / "other", names=("gsm8k",), log=lines.append) == \
        [hub_dir(tmp_path / "other") / GSM8K_TRAIN]
    with pytest.raises(UserError, match="unknown chat dataset 'mmlu'.*smoltalk, mmlu_auxiliary, gsm8k"):
        download_chat_data(tmp_path, names=("mmlu",))


# ----------------------------------------------------------------------------------------------------------
# SmolTalk

def turn(role: str, content: str | None) -> dict:
    return {"role": role, "content": content}


GOOD_CONVERSATIONS = [
    [turn("user", "Hi!"), turn("assistant", "Hello. How can I help?")],
    [turn("system", "Be brief."), turn("user", "2+2?"), turn("assistant", "4"), turn("user", "And 3+3?"),
     turn("assistant", "6")],
]
BAD_CONVERSATIONS = [
    [turn("assistant", "I start."), turn("user", "Odd.")],
    [turn("user", "Question?"), turn("assistant", "Answer."), turn("user", "No answer to this one?")],
    [turn("user", "One."), turn("user", "Two."), turn("assistant", "Three.")],
    [turn("user", "Say something."), turn("assistant", "   ")],
    [turn("user", "Missing content?"), turn("assistant", None)],
    [turn("system", "Rules."), turn("assistant", "No user.")],
    [turn("system", "Only a system prompt.")],
    [],
    None,
]


def test_smoltalk_keeps_well_formed_conversations_in_order_and_counts_the_rest(tiny_tokenizer):
    rows = [BAD_CONVERSATIONS[0], GOOD_CONVERSATIONS[0], *BAD_CONVERSATIONS[1:], GOOD_CONVERSATIONS[1]]
    task = SmolTalk("train", pa.array(rows))
    assert (len(task), task.dropped) == (2, len(BAD_CONVERSATIONS))
    assert [task[i]["messages"] for i in range(len(task))] == GOOD_CONVERSATIONS
    with_system = task[1]
    assert merge_system(with_system["messages"])[0]["content"].startswith("Be brief.")
    ids, mask = render_conversation(tiny_tokenizer, with_system)
    assert sum(mask) > 0 and len(ids) == len(mask)
    with pytest.raises(IndexError):
        task[2]


def test_smoltalk_from_hub_reads_train_and_test_files(serve, tmp_path):
    serve({f"{smoltalk.REPO}/{smoltalk.FILES['train']}": parquet_bytes(pa.table({
               "messages": [*GOOD_CONVERSATIONS, BAD_CONVERSATIONS[2]], "source": ["a", "b", "c"]})),
           f"{smoltalk.REPO}/{smoltalk.FILES['eval']}": parquet_bytes(pa.table({
               "messages": GOOD_CONVERSATIONS[:1]}))})
    train, evals = SmolTalk.from_hub(tmp_path, "train"), SmolTalk.from_hub(tmp_path, "eval")
    assert (len(train), train.dropped, len(evals), evals.dropped) == (2, 1, 1, 0)
    assert evals[0]["messages"] == GOOD_CONVERSATIONS[0] and train.split == "train" and evals.split == "eval"
    assert SmolTalk.from_hub(tmp_path, "train") is train  # read once per process
    with pytest.raises(UserError, match="split must be one of train, eval"):
        SmolTalk.from_hub(tmp_path, "test")


def test_smoltalk_file_without_messages_column_is_one_clear_error(serve, tmp_path):
    serve({f"{smoltalk.REPO}/{smoltalk.FILES['eval']}": parquet_bytes(pa.table({"text": ["hello"]}))})
    with pytest.raises(UserError, match="has no column 'messages'"):
        SmolTalk.from_hub(tmp_path, "eval")


# ----------------------------------------------------------------------------------------------------------
# MMLU auxiliary-train

MMLU_ROWS = [
    {"question": "Which gas do plants take in?", "subject": "", "choices": ["Oxygen", "Carbon dioxide",
                                                                            "Helium", "Neon"], "answer": 1},
    {"question": "The passage mostly tells us that ___.", "subject": "",
     "choices": ["Tom was late", "Tom won", "Ann left", "nobody came"], "answer": 3},
    {"question": "Is water wet?", "subject": "", "choices": ["yes", "no"], "answer": 0},
]
BAD_MMLU_ROWS = [
    {"question": "Answer out of range?", "subject": "", "choices": ["a", "b", "c", "d"], "answer": 4},
    {"question": "Only one choice?", "subject": "", "choices": ["a"], "answer": 0},
    {"question": "  ", "subject": "", "choices": ["a", "b"], "answer": 0},
    {"question": "A blank choice?", "subject": "", "choices": ["a", ""], "answer": 0},
]


@pytest.mark.parametrize("nested", [True, False], ids=["train-struct", "flat"])
def test_mmlu_auxiliary_rows_become_lettered_questions(serve, tmp_path, nested):
    rows = [MMLU_ROWS[0], BAD_MMLU_ROWS[0], *MMLU_ROWS[1:], *BAD_MMLU_ROWS[1:]]
    table = pa.table({"train": rows}) if nested else pa.Table.from_pylist(rows)
    serve({f"{mmlu_auxiliary.REPO}/{mmlu_auxiliary.FILES['train']}": parquet_bytes(table)})
    task = MMLUAuxiliary.from_hub(tmp_path)
    assert (len(task), task.dropped) == (len(MMLU_ROWS), len(BAD_MMLU_ROWS))
    for example, row in zip((task[i] for i in range(len(task))), MMLU_ROWS):
        question, answer = example["messages"][0]["content"], example["messages"][1]["content"]
        assert question.startswith(row["question"])
        lines = question.splitlines()
        assert [f"{letter}. {choice}" for letter, choice in zip("ABCD", row["choices"])] == \
            [line for line in lines if line[:3] in ("A. ", "B. ", "C. ", "D. ")]
        assert answer == "ABCD"[row["answer"]] == example["answer"]


def test_mmlu_auxiliary_is_training_only():
    with pytest.raises(UserError, match="only a train split"):
        MMLUAuxiliary("eval", MMLU_ROWS)


# ----------------------------------------------------------------------------------------------------------
# GSM8K

def parts(*pairs: tuple[str, str]) -> list[dict]:
    return [{"type": kind, "text": text} for kind, text in pairs]


@pytest.mark.parametrize("solution, expected", [
    ("She sold 48/2 = <<48/2=24>>24 clips.",
     parts(("text", "She sold 48/2 = "), ("python", "48/2"), ("python_output", "24"), ("text", "24 clips."))),
    ("It costs 3 * $4 = $<<3*$4=12>>12.",  # dollar signs are not Python: the call leaves them out
     parts(("text", "It costs 3 * $4 = $"), ("python", "3*4"), ("python_output", "12"), ("text", "12."))),
    ("That is <<1,000*2=2,000>>2,000 m.",  # thousands commas would make a tuple
     parts(("text", "That is "), ("python", "1000*2"), ("python_output", "2000"), ("text", "2,000 m."))),
    ("Each gets <<10/4=2.50>>$2.50",  # the calculator says 2.5, the annotation 2.50: the same number
     parts(("text", "Each gets "), ("python", "10/4"), ("python_output", "2.5"), ("text", "$2.50"))),
    ("He pays 18*.5 = $<<18*.5=9.00>>9.00 (half of 18, see <<18/2=9>>9).",
     parts(("text", "He pays 18*.5 = $"), ("python", "18*.5"), ("python_output", "9"),
           ("text", "9.00 (half of 18, see "), ("python", "18/2"), ("python_output", "9"), ("text", "9)."))),
    ("<<2+3=5>><<5*2=10>>\n#### 10",  # back to back, nothing between
     parts(("python", "2+3"), ("python_output", "5"), ("python", "5*2"), ("python_output", "10"),
           ("text", "\n#### 10"))),
    ("Wrong: 10-3 = <<10-3=8>>8", parts(("text", "Wrong: 10-3 = <<10-3=8>>8"))),  # the calculator disagrees
    ("Times: <<2x3=6>>6", parts(("text", "Times: <<2x3=6>>6"))),                   # not an expression
    ("No result <<48/2>> and none <<=5>>", parts(("text", "No result <<48/2>> and none <<=5>>"))),
    ("Huge <<9**9**9=1>>", parts(("text", "Huge <<9**9**9=1>>"))),                 # the calculator refuses
])
def test_gsm8k_marks_become_calculator_calls(solution, expected):
    assert answer_parts(solution) == expected


def test_gsm8k_rounded_annotation_keeps_the_calculators_own_output():
    call, output, text = answer_parts("Each gets 10/3 = <<10/3=3.33>>3.33 cakes.")[1:]
    assert (call["text"], output["text"]) == ("10/3", calculate("10/3"))
    assert output["text"] != "3.33" and text["text"] == "3.33 cakes."


# Solutions written the way GSM8K's train file writes them (its first examples and similar ones).
REAL_LOOKING = [
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in "
    "April and May.\n#### 72",
    "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = "
    "$<<0.2*50=10>>10.\n#### 10",
    "In the beginning, Betty has only 100 / 2 = $<<100/2=50>>50.\nBetty's grandparents gave her 15 * 2 = "
    "$<<15*2=30>>30.\nThis means, Betty needs 100 - 50 - 30 - 15 = $<<100-50-30-15=5>>5 more.\n#### 5",
    "Maila read 12 x 2 = <<12*2=24>>24 pages today.\nSo she was able to read a total of 12 + 24 = <<12+24=36>>36 "
    "pages since yesterday.\nThere are 120 - 36 = <<120-36=84>>84 pages left to be read.\nSince she wants to "
    "read half of the remaining pages tomorrow, then she should read 84/2 = <<84/2=42>>42 pages.\n#### 42",
    "He writes each friend\n3*2=<<3*2=6>>6 pages a week\nSo he writes\n6*2=<<6*2=12>>12 pages every week\nThat "
    "means he writes\n12*52=<<12*52=624>>624 pages a year\n#### 624",
    "There are 80/100 * 10 = <<80/100*10=8>>8 more purple flowers than yellow flowers.\nSo in Mark's garden, "
    "there are 10 + 8 = <<10+8=18>>18 purple flowers.\nPurple and yellow flowers sum up to 10 + 18 = "
    "<<10+18=28>>28 flowers.\nThat means in Mark's garden there are 25/100 * 28 = <<25/100*28=7>>7 green "
    "flowers.\nSo in total Mark has 28 + 7 = <<28+7=35>>35 plants in his garden.\n#### 35",
    "He eats 32 from the largest pizzas because 2 x 16 = <<2*16=32>>32\nHe eats 16 from the small pizza because "
    "2 x 8 = <<2*8=16>>16\nHe eats 48 pieces because 32 + 16 = <<32+16=48>>48\n#### 48",
    "To the initial 2 pounds of jelly beans, he added enough brownies to cause the weight to triple, bringing "
    "the weight to 2*3=<<2*3=6>>6 pounds.\nNext, he added another 2 pounds of jelly beans, bringing the weight "
    "to 6+2=<<6+2=8>>8 pounds.\nAnd finally, he added enough gummy worms to double the weight once again, to a "
    "final weight of 8*2=<<8*2=16>>16 pounds.\n#### 16",
    "Let S be the amount Alexis paid for the shoes.\nShe spent S + 30 + 46 + 38 + 11 + 18 = S + "
    "<<+30+46+38+11+18=143>>143.\nShe used all but $16 of her budget, so S + 143 = 200 - 16 = 184.\nThus, Alexis "
    "paid S = 184 - 143 = $<<184-143=41>>41 for the shoes.\n#### 41",
    "She works 8 hours a day for $18 per hour so she makes 8*18 = $<<8*18=144.00>>144.00 per 8-hour shift\nShe "
    "works 10 hours a day and anything over 8 hours is eligible for overtime, so she gets 10-8 = <<10-8=2>>2 "
    "hours of overtime\nOvertime is calculated as time and a half so and she makes $18/hour so her overtime pay "
    "is 18*.5 = $<<18*.5=9.00>>9.00\nHer overtime pay is 18+9 = $<<18+9=27.00>>27.00\nHer base pay is $144.00 "
    "per 8-hour shift and she works 5 days and makes 5 * $144 = $<<144*5=720.00>>720.00\nHer overtime pay is "
    "$27.00 per hour and she works 2 hours of overtime per day and makes 27*2 = $<<27*2=54.00>>54.00 in overtime "
    "pay\n2 hours of overtime pay for 5 days means she makes 54*5 = $270.00\nIn 5 days her base pay is $720.00 "
    "and she makes $270.00 in overtime pay so she makes $720 + $270 = $<<720+270=990.00>>990.00\n#### 990",
    "The third hundred years' ship had twice as many as the second, so it had 2 * 2S = <<2*2=4>>4S people.\nAll "
    "the ships had S + 2S + 4S = 7S = 847 people.\nThus, the ship that the monster ate in the first hundred "
    "years had S = 847 / 7 = <<847/7=121>>121 people on it.\n#### 121",
    "He saved up $110 total because 95 + 15 = <<95+15=110>>110\nHe saved $15 from his allowance because 3 x 5 = "
    "<<3*5=15>>15\nHe earned $60 mowing lawns because 4 x 15 = <<4*15=60>>60\nHe earned $35 shoveling "
    "driveways because 110 - 60 - 15 = <<110-60-15=35>>35\nHe shoveled 5 driveways because 35 / 7 = "
    "<<35/7=5>>5\n#### 5",
    "The discount is 20% of $1,250, which is 1,250 * 0.2 = $<<1,250*0.2=250>>250.\nSo the price is 1,250 - 250 = "
    "$<<1,250-250=1,000>>1,000.\n#### 1,000",
    "A third of the 10 cakes is 10/3 = <<10/3=3.33>>3.33 cakes, so about 3 each.\nWith 2 left over per box, "
    "that is 3*4+2 = <<3*4+2=14>>14.\n#### 14",
]


def test_gsm8k_real_looking_solutions_call_the_calculator_and_score():
    task = GSM8K("train", [{"question": f"Problem {i}?", "answer": answer} for i, answer in enumerate(REAL_LOOKING)])
    marks = calls = 0
    for solution, example in zip(REAL_LOOKING, (task[i] for i in range(len(task)))):
        content = example["messages"][-1]["content"]
        marks += len(ANNOTATION.findall(solution))
        for call, output in zip(content, content[1:]):
            if call["type"] == "python":
                calls += 1
                assert output["type"] == "python_output" and calculate(call["text"]) == output["text"]
        text = "".join(part["text"] for part in content)
        assert "<<" not in text  # every mark here is one the calculator reproduces
        assert example["answer"] == solution.rpartition("#### ")[2].replace(",", "")
        assert task.score(example, text) and not task.score(example, text + "\n#### 99999")
    assert calls == marks and marks > 40


def test_gsm8k_rows_without_a_final_number_are_dropped_and_eval_takes_rows(serve, tmp_path):
    rows = [{"question": "1+1?", "answer": "<<1+1=2>>2\n#### 2"}, {"question": "", "answer": "#### 3"},
            {"question": "No final line?", "answer": "It is 4."}, {"question": "Empty?", "answer": "#### "}]
    evals = GSM8K("eval", rows)
    assert (len(evals), evals.dropped, evals.split) == (1, 3, "eval")
    assert evals.prompt(0) == {"messages": [{"role": "user", "content": "1+1?"}]}
    serve(gsm8k_file(rows))
    train = GSM8K.from_hub(tmp_path)
    assert (len(train), train.dropped, train.split) == (1, 3, "train") and train[0] == evals[0]
