"""`picochat tokenizer train` and `picochat tokenizer eval`, through the CLI and in process.

    python -m pytest tests/test_tokenizer_commands.py
"""

from __future__ import annotations

import json
import re

import pytest
import tiktoken

from picochat import cli
from picochat import tokenizer_commands as tokenizer_module
from picochat.data.shards import corpus_dir, iter_texts, list_shards, read_manifest
from picochat.tokenizer import META_FILE, RANKS_FILE, load_tokenizer, tokenizer_dir


# ---- `picochat tokenizer train` / `eval` ---------------------------------------------------------------

def offline_tiktoken(name):
    raise ConnectionError(f"no network for {name}")


def test_cli_train_then_eval(fresh_home, monkeypatch, capsys):
    monkeypatch.setenv("PICOCHAT_HOME", str(fresh_home))
    monkeypatch.setattr(tiktoken, "get_encoding", offline_tiktoken)
    directory = tokenizer_dir(fresh_home)
    for path in directory.iterdir():
        path.unlink()

    cli.main(["tokenizer", "train", "--vocab-size", "300"])
    assert "tokenizer: vocab 300" in capsys.readouterr().out
    assert (directory / RANKS_FILE).exists()
    meta = json.loads((directory / META_FILE).read_text())
    assert meta["vocab_size"] == 300 and "train_seconds" in meta
    tokenizer = load_tokenizer(fresh_home)
    assert tokenizer.vocab_size == 300

    monkeypatch.setattr(tokenizer_module, "url_reachable", lambda url: True)  # the host answers, the fetch fails
    cli.main(["tokenizer", "eval"])
    out = capsys.readouterr().out
    assert re.search(r"gpt2 +skipped \(offline: ConnectionError\)", out)
    assert re.search(r"cl100k_base +skipped \(offline: ConnectionError\)", out)
    assert re.search(r"picochat +\d+\.\d{3} bytes/token", out)
    report = json.loads((directory / "eval.json").read_text())
    assert set(report["bytes_per_token"]) == {"picochat"}
    assert report["bytes_per_token"]["picochat"] > 1

    manifest = read_manifest(corpus_dir(fresh_home))
    texts = list(iter_texts(list_shards(corpus_dir(fresh_home))))
    assert report["corpus"] == {
        "documents": manifest["documents"],
        "bytes": manifest["bytes"],
        "tokens": sum(len(tokenizer.encode(text)) + 1 for text in texts),
    }
    assert len(texts) == manifest["documents"]


def test_eval_skips_reference_encodings_when_their_host_is_silent(fresh_home, monkeypatch, capsys):
    """tiktoken downloads without a timeout, so an unanswered probe must keep eval from calling it."""
    monkeypatch.setenv("PICOCHAT_HOME", str(fresh_home))
    probed = []
    monkeypatch.setattr(tokenizer_module, "url_reachable", lambda url: probed.append(url) or False)
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: pytest.fail("tiktoken must not be asked"))
    cli.main(["tokenizer", "eval"])
    out = capsys.readouterr().out
    assert probed == [tokenizer_module.TIKTOKEN_PROBE_URL]
    assert re.search(r"gpt2 +skipped \(offline: .* did not answer\)", out)
    assert re.search(r"picochat +\d+\.\d{3} bytes/token", out)


def test_cli_train_respects_max_chars(fresh_home, monkeypatch, capsys):
    monkeypatch.setenv("PICOCHAT_HOME", str(fresh_home))
    cli.main(["tokenizer", "train", "--vocab-size", "400", "--max-chars", "2000", "--doc-cap", "100"])
    small = load_tokenizer(fresh_home)
    cli.main(["tokenizer", "train", "--vocab-size", "400"])
    full = load_tokenizer(fresh_home)
    text = " ".join(d for d in iter_texts(list_shards(corpus_dir(fresh_home))[-1:]))
    # trained on ~2000 characters the merges fit the corpus far worse
    assert len(small.encode(text)) > len(full.encode(text))


def test_cli_eval_without_tokenizer_says_what_to_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PICOCHAT_HOME", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["tokenizer", "eval"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("picochat: error:") and "picochat tokenizer train" in err
    assert len(err.strip().splitlines()) == 1


def test_cli_train_without_corpus_says_what_to_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PICOCHAT_HOME", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["tokenizer", "train", "--vocab-size", "300"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "picochat data prepare" in err and len(err.strip().splitlines()) == 1
