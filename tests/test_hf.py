"""`picochat export` / `picochat import` (picochat/hf.py), against the real transformers and tokenizers on a
tiny trained run (base, mid, SFT; 2 layers, 4 heads sharing 2 key/value heads): the same logits and greedy
tokens, the same token ids on the whole val shard and on chat renders with tool calls, export -> import ->
export byte-identical, one-line refusals, and an upload to a Hub stand-in on 127.0.0.1.

    python -m pytest -q tests/test_hf.py
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")

import torch  # noqa: E402

from helpers import TINY, TINY_RUN, error_line, flags_dict  # noqa: E402
from picochat import cli, hf  # noqa: E402
from picochat.chat import render_conversation, render_for_completion  # noqa: E402
from picochat.checkpoint import checkpoint_dir, list_checkpoints, load_engine, load_model  # noqa: E402
from picochat.common import UserError  # noqa: E402
from picochat.data.shards import corpus_dir, iter_texts, split_shards  # noqa: E402
from picochat.engine import Sampling  # noqa: E402
from picochat.train import run  # noqa: E402

SHAPE = ["--depth", "2", "--head-dim", "32", "--kv-head-ratio", "2"]  # 4 heads, 2 key/value heads


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory, tiny_home):
    home = tmp_path_factory.mktemp("hf") / "home"
    shutil.copytree(tiny_home, home)
    run(flags_dict(*TINY, *SHAPE, "--num-iterations", "40", "--home", str(home)))
    for stage in ("mid", "sft"):
        run(flags_dict(*TINY, *SHAPE, "--stage", stage, "--num-iterations", "3", "--home", str(home)))
    evals = {"step": 3, "chatcore": 0.0123, "results": [{"task": "ARC-Easy", "accuracy": 0.25, "stderr": 0.05,
                                                          "problems": 16}]}
    (home / "evals").mkdir()
    (home / "evals" / "sft_chat.json").write_text(json.dumps(evals))
    return home


@pytest.fixture(scope="module")
def exported(trained_home, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "picochat-d2"
    hf.export({"out_dir": str(out), "home": str(trained_home)})
    return out


@pytest.fixture(scope="module")
def hf_model(exported):
    return transformers.AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def hf_tokenizer(exported):
    return transformers.AutoTokenizer.from_pretrained(exported)


# ---- the model --------------------------------------------------------------------------------------------

def test_transformers_loads_a_nanochat_model_with_picochat_logits(exported, hf_model, trained_home):
    assert type(hf_model).__name__ == "NanoChatForCausalLM"
    model, _, _ = load_model(trained_home, "sft")
    ids = torch.randint(0, model.config.vocab_size, (2, 80), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(ids)
        for attention in ("sdpa", "eager"):
            hf_model.set_attn_implementation(attention)
            difference = (hf_model(ids).logits - ours).abs().max().item()
            print(f"max |logit difference| ({attention}): {difference:.3g}")
            assert difference < 1e-4
    hf_model.set_attn_implementation("sdpa")


def test_greedy_generation_gives_the_same_64_tokens(hf_model, hf_tokenizer, trained_home):
    model, tokenizer, _ = load_model(trained_home, "sft")
    prompt = render_for_completion(tokenizer, {"messages": [{"role": "user", "content": "What is 12 * 7?"}]})
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(64):  # no stop token: 64 steps however the model answers
            ids.append(int(model.next_logits(torch.tensor([ids])).argmax()))
        settings = transformers.GenerationConfig(max_new_tokens=64, min_new_tokens=0, do_sample=False,
                                                 eos_token_id=None, pad_token_id=hf_model.config.pad_token_id)
        theirs = hf_model.generate(torch.tensor([prompt]), generation_config=settings)[0].tolist()
    assert theirs == ids
    # The engine (KV cache, stop tokens) and generate() with the exported generation config (which stops
    # where the engine does) give the same answer, unless the calculator forced tokens into it.
    engine = load_engine(trained_home, "sft", quiet=True)
    answer = engine.complete([prompt], Sampling(temperature=0.0, max_tokens=64))[0]
    with torch.no_grad():
        stopped = hf_model.generate(torch.tensor([prompt]), max_new_tokens=64)[0, len(prompt):].tolist()
    if not any(answer["forced"]):
        assert answer["tokens"] == ids[len(prompt):len(prompt) + len(answer["tokens"])] == stopped


# ---- the tokenizer ----------------------------------------------------------------------------------------

def test_the_tokenizer_gives_picochat_ids_on_the_whole_val_shard(hf_tokenizer, trained_home):
    _, tokenizer, _ = load_model(trained_home, "sft")
    _, val_shards = split_shards(corpus_dir(trained_home))
    texts = list(iter_texts(val_shards))
    texts += ["", " ", "\n\n\t x", "1234567", "don't WE'LL", "東京 😀 👍🏽 x² «q»", "a  \r\n b", "<<1+2=3>>"]
    theirs = hf_tokenizer(texts)["input_ids"]
    ours = tokenizer.encode_batch(texts, prepend_bos=True)
    agree = sum(a == b for a, b in zip(theirs, ours))
    print(f"tokenizer agreement: {agree}/{len(texts)} texts, {sum(map(len, ours)):,} tokens")
    assert theirs == ours and len(texts) > 20
    assert [hf_tokenizer.decode(ids, skip_special_tokens=True) for ids in theirs] == texts


CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "What is 12*7?"}, {"role": "assistant", "content": "It is <<12*7=84>>84."},
     {"role": "user", "content": "And <<x=1>> here?"}],
    [{"role": "user", "content": "q"}, {"role": "assistant", "content": [
        {"type": "text", "text": "Let me count: "}, {"type": "python", "text": "'strawberry'.count('r')"},
        {"type": "python_output", "text": "3"}, {"type": "text", "text": " so 3."}]},
     {"role": "user", "content": "thanks"}, {"role": "assistant", "content": "welcome"}],  # trailing answer
    [{"role": "user", "content": "x"}, {"role": "assistant",
                                        "content": "<<a=b=c>> <<no equals>> <<x<<1+1=2>> a >> b << c <<=5>>>"},
     {"role": "user", "content": "\n\n y "}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_the_chat_template_renders_what_the_engine_prefills(hf_tokenizer, trained_home, messages):
    _, tokenizer, _ = load_model(trained_home, "sft")
    prompt = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    assert prompt == render_for_completion(tokenizer, {"messages": messages})
    if messages[-1]["role"] == "assistant":  # without the prompt: the whole conversation, as training renders it
        whole = hf_tokenizer.apply_chat_template(messages)["input_ids"]
        assert whole == render_conversation(tokenizer, {"messages": messages}, max_tokens=1 << 30)[0]


def test_the_chat_template_refuses_what_picochat_refuses(hf_tokenizer, tiny_tokenizer):
    for messages in ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
                     [{"role": "system", "content": "a"}, {"role": "assistant", "content": "b"}]):
        with pytest.raises(UserError):
            render_for_completion(tiny_tokenizer, {"messages": messages})
        with pytest.raises(Exception, match="expected assistant|followed by a user message"):
            hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True)


# ---- the directory ----------------------------------------------------------------------------------------

def test_the_export_holds_what_from_pretrained_needs_and_a_model_card(exported):
    names = {path.name for path in exported.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "README.md"} <= names
    config = json.loads((exported / "config.json").read_text())
    assert config["model_type"] == "nanochat" and "auto_map" not in config
    assert config["rms_norm_eps"] == torch.finfo(torch.float32).eps
    card = (exported / "README.md").read_text()
    assert "| sft | done | 3 |" in card and "| base | done | 40 |" in card
    assert "ARC-Easy" in card and "0.0123" in card and "evals/sft_chat.json" in card


def test_export_import_export_is_byte_identical(exported, trained_home, tmp_path):
    home = tmp_path / "imported"
    hf.import_model({"hf_dir": str(exported), "stage": "sft", "home": str(home)})
    again = tmp_path / "again"
    hf.export({"out_dir": str(again), "home": str(home)})
    assert (again / "model.safetensors").read_bytes() == (exported / "model.safetensors").read_bytes()
    assert (again / "tokenizer.json").read_bytes() == (exported / "tokenizer.json").read_bytes()
    assert "Imported into picochat from" in (again / "README.md").read_text()
    # chat and serve load it through the engine
    engine = load_engine(home, "sft", quiet=True)
    assert engine.info["step"] == 3
    original, _, _ = load_model(trained_home, "sft")
    assert all(torch.equal(a, b) for a, b in zip(original.state_dict().values(), engine.model.state_dict().values()))


def test_the_default_tied_model_exports_as_tie_word_embeddings_and_comes_back_tied(exported, hf_model, trained_home,
                                                                                   tmp_path):
    """The default ties the embeddings: transformers' loader ties lm_head to embed_tokens (its logits are
    picochat's: the first test), and import makes one matrix of them again."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(exported / "model.safetensors"), framework="pt") as f:
        assert "model.embed_tokens.weight" in f.keys() and "lm_head.weight" not in f.keys()
    assert "relu^2 MLP, tied head" in (exported / "README.md").read_text()
    assert hf_model.config.tie_word_embeddings
    assert hf_model.lm_head.weight.data_ptr() == hf_model.model.embed_tokens.weight.data_ptr()
    model, _, _ = load_model(trained_home, "sft")
    imported = tmp_path / "imported"
    hf.import_model({"hf_dir": str(exported), "stage": "sft", "home": str(imported)})
    back, _, _ = load_model(imported, "sft")
    assert back.lm_head.weight is back.wte.weight and torch.equal(back.wte.weight, model.wte.weight)
    # A tied model written with its lm_head too imports when the two are the same, and is refused if not.
    written = Path(shutil.copytree(exported, tmp_path / "with-head"))
    tensors = load_file(exported / "model.safetensors")
    embedding = tensors["model.embed_tokens.weight"]
    for head, accepted in ((embedding.clone(), True), (embedding + 1, False)):
        save_file({**tensors, "lm_head.weight": head}, written / "model.safetensors")
        if accepted:
            hf.import_model({"hf_dir": str(written), "stage": "sft", "home": str(imported)})
        else:
            with pytest.raises(UserError, match="ties the embeddings, but its lm_head.weight differs"):
                hf.import_model({"hf_dir": str(written), "stage": "sft", "home": str(imported)})


def test_an_untied_model_exports_its_lm_head_and_comes_back_untied(tiny_home, tmp_path):
    """--tie-embeddings false: two matrices, written and loaded as two, with picochat's logits."""
    from safetensors import safe_open

    home = Path(shutil.copytree(tiny_home, tmp_path / "home"))
    run(flags_dict(*TINY, *SHAPE, "--tie-embeddings", "false", "--num-iterations", "20", "--home", str(home)))
    out = tmp_path / "export"
    hf.export({"out_dir": str(out), "source": "base", "home": str(home)})
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert {"model.embed_tokens.weight", "lm_head.weight"} <= set(f.keys())
    assert "relu^2 MLP, untied head" in (out / "README.md").read_text()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert not theirs.config.tie_word_embeddings
    assert theirs.lm_head.weight.data_ptr() != theirs.model.embed_tokens.weight.data_ptr()
    model, _, _ = load_model(home, "base")
    ids = torch.randint(0, model.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (theirs(ids).logits - model(ids)).abs().max().item() < 1e-4
    imported = tmp_path / "imported"
    hf.import_model({"hf_dir": str(out), "stage": "base", "home": str(imported)})
    back, _, _ = load_model(imported, "base")
    assert back.lm_head.weight is not back.wte.weight
    assert torch.equal(back.wte.weight, model.wte.weight) and torch.equal(back.lm_head.weight, model.lm_head.weight)
    again = tmp_path / "again"
    hf.export({"out_dir": str(again), "source": "base", "home": str(imported)})
    assert (again / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()


def test_an_imported_model_starts_the_next_stage(exported, tiny_home, tmp_path):
    home = Path(shutil.copytree(tiny_home, tmp_path / "home"))  # the same tokenizer: accepted
    hf.import_model({"hf_dir": str(exported), "stage": "mid", "home": str(home)})
    state = run(flags_dict(*TINY_RUN, "--stage", "sft", "--num-iterations", "1", "--home", str(home)))
    assert state.step == 1 and list_checkpoints(checkpoint_dir(home, "sft"))


def test_an_imported_checkpoint_cannot_be_resumed_and_says_so(exported, tiny_home, tmp_path):
    """It holds weights only: no optimizer state, no data position to go on from."""
    home = Path(shutil.copytree(tiny_home, tmp_path / "home"))
    hf.import_model({"hf_dir": str(exported), "stage": "mid", "home": str(home)})
    with pytest.raises(UserError, match="holds weights only \\(imported\\): it cannot be resumed"):
        run(flags_dict(*TINY_RUN, "--stage", "mid", "--num-iterations", "5", "--resume", "--home", str(home)))


def test_import_sets_an_earlier_checkpoint_of_the_stage_aside(exported, trained_home, tmp_path):
    home = Path(shutil.copytree(trained_home, tmp_path / "home"))
    hf.import_model({"hf_dir": str(exported), "stage": "sft", "home": str(home)})
    assert [p.name for p in list_checkpoints(checkpoint_dir(home, "sft"))] == ["step_000003.pt"]
    assert any(p.name.startswith("previous-") for p in checkpoint_dir(home, "sft").iterdir())


def copy_export(exported: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(exported, tmp_path / "copy"))


@pytest.mark.parametrize("change, named", [
    ({"sliding_window": 128}, "'sliding_window'"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"model_type": "llama"}, "model_type 'llama'"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0}}, "rope_parameters"),
    ({"final_logit_softcapping": None}, "final_logit_softcapping=None"),
    ({"intermediate_size": 300}, "intermediate_size=300"),
    ({"auto_map": {"AutoModelForCausalLM": "x.y"}}, "'auto_map'"),
])
def test_import_refuses_a_config_naming_what_picochat_lacks(exported, tmp_path, change, named):
    source = copy_export(exported, tmp_path)
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(UserError, match="picochat's model does not have") as refusal:
        hf.import_model({"hf_dir": str(source), "home": str(tmp_path / "home")})
    assert named in str(refusal.value) and "\n" not in str(refusal.value)
    assert not (tmp_path / "home").exists()  # nothing written


def test_import_refuses_a_tensor_picochat_lacks(exported, tmp_path):
    from safetensors.torch import load_file, save_file

    source = copy_export(exported, tmp_path)
    tensors = load_file(source / "model.safetensors")
    save_file({**tensors, "model.layers.0.self_attn.q_norm.weight": torch.ones(32)}, source / "model.safetensors")
    with pytest.raises(UserError, match="'model.layers.0.self_attn.q_norm.weight', which picochat's model"):
        hf.import_model({"hf_dir": str(source), "home": str(tmp_path / "home")})


def test_import_refuses_a_home_with_another_tokenizer(exported, tmp_path, corpus_documents):
    from picochat.tokenizer import Tokenizer, tokenizer_dir

    home = tmp_path / "home"
    Tokenizer.train((d.text for d in corpus_documents[:50]), 300).save(tokenizer_dir(home))
    with pytest.raises(UserError, match="another tokenizer"):
        hf.import_model({"hf_dir": str(exported), "home": str(home)})


# ---- the command line -------------------------------------------------------------------------------------

@pytest.fixture
def commands(monkeypatch):
    """The two commands, where cli.COMMANDS does not list them yet."""
    for name, (config, function) in {"export": ("ExportConfig", "export"),
                                     "import": ("ImportConfig", "import_model")}.items():
        if (name, None) not in cli.COMMANDS:
            monkeypatch.setitem(cli.COMMANDS, (name, None), ("picochat.hf", config, function, name))


def test_the_commands_export_and_import(commands, trained_home, tmp_path, capsys):
    out = tmp_path / "out"
    cli.run_command(["export", "--source", "sft", "--step", "3", "--out-dir", str(out), "--home", str(trained_home)])
    cli.run_command(["import", "--hf-dir", str(out), "--stage", "sft", "--home", str(tmp_path / "home")])
    assert "exported sft step 3" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.run_command(["export", "--out-dir", str(out), "--home", str(trained_home)])  # not empty
    assert "--force" in error_line(capsys)


def test_the_directory_is_also_the_bare_argument(commands):
    parsers = {name: cli.command_parser([name])[1] for name in ("export", "import")}
    assert vars(parsers["export"].parse_args(["--source", "sft", "out"])) == {"source": "sft", "out_dir": "out"}
    assert vars(parsers["import"].parse_args(["dir", "--stage", "mid"])) == {"hf_dir": "dir", "stage": "mid"}


def test_without_the_extra_each_command_says_how_to_get_it(commands, monkeypatch, trained_home, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    for argv in (["export", "--out-dir", str(tmp_path / "x"), "--home", str(trained_home)],
                 ["import", "--hf-dir", str(tmp_path), "--home", str(tmp_path)]):
        with pytest.raises(SystemExit):
            cli.run_command(argv)
        assert "pip install -e '.[hf]'" in error_line(capsys)


# ---- the Hub ----------------------------------------------------------------------------------------------

class FakeHub(BaseHTTPRequestHandler):
    """The three calls an upload of small files makes: create the repository, ask how to upload each file
    (inline, "regular"), and the commit, whose NDJSON body carries the files base64-encoded."""
    received: dict = {}

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        FakeHub.received.setdefault("authorization", self.headers.get("Authorization"))
        if self.path == "/api/validate-yaml":  # the model card's front matter
            return self.reply({"errors": [], "warnings": []})
        if self.path == "/api/repos/create":
            return self.reply({"url": "http://127.0.0.1/user/model", "name": "user/model"})
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            return self.reply({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                         for f in files], "commitOid": "0" * 40})
        if "/commit/" in self.path:
            FakeHub.received["commit"] = [json.loads(line) for line in body.decode().splitlines() if line]
            return self.reply({"commitUrl": "http://127.0.0.1/user/model/commit/1", "commitOid": "1" * 40,
                               "pullRequestUrl": None})
        self.send_error(404)

    def reply(self, value: dict) -> None:
        data = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def test_push_to_hub_uploads_the_export(exported, monkeypatch, capsys):
    import huggingface_hub.constants

    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    try:
        hf.push(exported, "user/model", "picochat sft step 3")
    finally:
        server.shutdown()
        server.server_close()
    files = {entry["value"]["path"] for entry in FakeHub.received["commit"] if entry["key"] == "file"}
    assert files == {path.name for path in exported.iterdir()}
    assert FakeHub.received["authorization"] == "Bearer hf_test_token"
    assert "pushed" in capsys.readouterr().out
