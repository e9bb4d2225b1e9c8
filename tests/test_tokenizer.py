"""The tokenizer: training, round trips, save/load, token bytes, the chat template and its CLI commands."""

from __future__ import annotations

import json
import re

import pytest
import tiktoken

from picochat.common import UserError
from picochat import cli
from picochat import tokenizer as tokenizer_module
from picochat.data.shards import corpus_dir, iter_texts, list_shards, read_manifest
from picochat.tokenizer import (META_FILE, RANKS_FILE, SPECIAL_TOKENS, Tokenizer, load_tokenizer,
                                tokenizer_dir)

UNICODE_TEXTS = [
    "Hello, world! The café serves crème brûlée to naïve Zoë.",
    "日本語のテキストと中文文本, 한국어 too.",
    "Emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🇫🇷 and a snowman ☃.",
    "Numbers 0 7 42 123 4567 89012345 3.14159 -2e10 1,000,000",
    "  leading spaces,\ttabs\t\tand   runs    of     spaces\n\n\nnewlines\r\n  trailing   ",
    "",
    " ",
    "\n",
    "Mixed: x² + y² = z², Ελλάδα, Россия, עברית, العربية, ∑∫√∞",
]


def user(text):
    return {"role": "user", "content": text}


def assistant(content):
    return {"role": "assistant", "content": content}


def conversation(*messages):
    return {"messages": list(messages)}


# ---- training and encoding ---------------------------------------------------------------------------

@pytest.mark.parametrize("text", UNICODE_TEXTS)
def test_round_trip_unicode(tiny_tokenizer, text):
    ids = tiny_tokenizer.encode(text)
    assert tiny_tokenizer.decode(ids) == text
    assert all(0 <= i < tiny_tokenizer.vocab_size - len(SPECIAL_TOKENS) for i in ids)


def test_training_learns_merges_that_compress(tiny_tokenizer):
    text = "the river and the garden of the village"
    assert len(tiny_tokenizer.encode(text)) < len(text.encode("utf-8")) / 2


@pytest.mark.parametrize("vocab_size", [266, 300, 512])
def test_vocab_size_is_what_was_asked_for(corpus_documents, vocab_size):
    tokenizer = Tokenizer.train((d.text for d in corpus_documents), vocab_size)
    assert tokenizer.vocab_size == vocab_size
    assert len(tokenizer.token_bytes()) == vocab_size


def test_special_tokens_are_distinct_and_last(tiny_tokenizer):
    ids = [tiny_tokenizer.special(name) for name in SPECIAL_TOKENS]
    assert len(SPECIAL_TOKENS) == 9
    assert ids == list(range(tiny_tokenizer.vocab_size - 9, tiny_tokenizer.vocab_size))
    assert tiny_tokenizer.bos_id == tiny_tokenizer.special("<|bos|>")
    assert tiny_tokenizer.decode(ids) == "".join(SPECIAL_TOKENS)


@pytest.mark.parametrize("name", SPECIAL_TOKENS)
def test_special_token_text_in_a_document_is_plain_text(tiny_tokenizer, name):
    specials = set(range(tiny_tokenizer.vocab_size - 9, tiny_tokenizer.vocab_size))
    text = f"before {name} after{name}"
    ids = tiny_tokenizer.encode(text)
    assert not specials & set(ids)
    assert tiny_tokenizer.decode(ids) == text
    assert not specials & set(tiny_tokenizer.encode_batch([text])[0])


def test_encode_batch_matches_encode(tiny_tokenizer):
    texts = UNICODE_TEXTS * 3
    assert tiny_tokenizer.encode_batch(texts) == [tiny_tokenizer.encode(t) for t in texts]
    with_bos = tiny_tokenizer.encode_batch(texts, prepend_bos=True)
    assert with_bos == [[tiny_tokenizer.bos_id] + tiny_tokenizer.encode(t) for t in texts]
    assert tiny_tokenizer.encode("abc", prepend_bos=True) == [tiny_tokenizer.bos_id] + tiny_tokenizer.encode("abc")
    assert tiny_tokenizer.encode_batch([]) == []


@pytest.mark.parametrize("text", UNICODE_TEXTS)
def test_token_bytes_add_up_to_the_utf8_length(tiny_tokenizer, text):
    sizes = tiny_tokenizer.token_bytes()
    ids = tiny_tokenizer.encode(text, prepend_bos=True)
    assert int(sizes[ids].sum()) == len(text.encode("utf-8"))


def test_token_bytes_are_zero_for_specials_only(tiny_tokenizer):
    sizes = tiny_tokenizer.token_bytes()
    assert sizes.shape == (tiny_tokenizer.vocab_size,)
    assert sizes[-9:].tolist() == [0] * 9
    assert (sizes[:-9] >= 1).all()
    assert sizes[:256].tolist() == [1] * 256  # the 256 single bytes come first


# ---- save and load -----------------------------------------------------------------------------------

def test_save_load_round_trip(tiny_tokenizer, tmp_path):
    tiny_tokenizer.save(tmp_path, note="hi")
    loaded = Tokenizer.load(tmp_path)
    assert loaded.vocab_size == tiny_tokenizer.vocab_size
    assert loaded.bos_id == tiny_tokenizer.bos_id
    for text in UNICODE_TEXTS:
        assert loaded.encode(text) == tiny_tokenizer.encode(text)
    assert loaded.token_bytes().tolist() == tiny_tokenizer.token_bytes().tolist()
    meta = json.loads((tmp_path / META_FILE).read_text())
    assert meta["vocab_size"] == tiny_tokenizer.vocab_size and meta["note"] == "hi"
    assert meta["special_tokens"] == {name: tiny_tokenizer.special(name) for name in SPECIAL_TOKENS}
    assert not list(tmp_path.glob(".*.tmp"))


def test_load_missing_directory(tmp_path):
    with pytest.raises(UserError, match="picochat tokenizer train"):
        Tokenizer.load(tmp_path / "nowhere")
    with pytest.raises(UserError, match="picochat tokenizer train"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("content", [b"not base64 at all\nAA== zero\n", b"\xff\xfe\x00 binary garbage",
                                     b"AA== 0\nthree fields here\n", b"AA== x\n"])
def test_load_corrupt_ranks_file(tiny_tokenizer, tmp_path, content):
    tiny_tokenizer.save(tmp_path)
    (tmp_path / RANKS_FILE).write_bytes(content)
    with pytest.raises(ValueError, match="corrupt"):
        Tokenizer.load(tmp_path)


def test_load_corrupt_meta_file(tiny_tokenizer, tmp_path):
    tiny_tokenizer.save(tmp_path)
    (tmp_path / META_FILE).write_text("{ not json")
    with pytest.raises(ValueError, match="corrupt"):
        Tokenizer.load(tmp_path)


def truncated(lines):
    return "\n".join(lines[:300]) + "\n"


def duplicated(lines):
    return "\n".join(lines + [lines[0].split()[0] + f" {len(lines)}"]) + "\n"


@pytest.mark.parametrize("damage", [truncated, duplicated, lambda lines: "!!!! 5\n"],
                         ids=["truncated", "duplicate-token", "invalid-base64"])
def test_load_inconsistent_ranks_file(tiny_tokenizer, tmp_path, damage):
    tiny_tokenizer.save(tmp_path)
    lines = (tmp_path / RANKS_FILE).read_text().splitlines()
    (tmp_path / RANKS_FILE).write_text(damage(lines))
    with pytest.raises(ValueError):
        Tokenizer.load(tmp_path)


# ---- chat template -----------------------------------------------------------------------------------

def trained_text(tokenizer, ids, mask):
    return tokenizer.decode([i for i, m in zip(ids, mask) if m])


def test_render_plain_turns(tiny_tokenizer):
    t = tiny_tokenizer
    ids, mask = t.render_conversation(conversation(user("Hi there"), assistant("Hello! How are you?"),
                                                   user("Fine."), assistant("Good.")))
    expected = ([t.bos_id, t.special("<|user_start|>")] + t.encode("Hi there") + [t.special("<|user_end|>")]
                + [t.special("<|assistant_start|>")] + t.encode("Hello! How are you?")
                + [t.special("<|assistant_end|>")]
                + [t.special("<|user_start|>")] + t.encode("Fine.") + [t.special("<|user_end|>")]
                + [t.special("<|assistant_start|>")] + t.encode("Good.") + [t.special("<|assistant_end|>")])
    assert ids == expected
    assert len(mask) == len(ids)
    n_user1 = 2 + len(t.encode("Hi there")) + 1
    n_reply1 = len(t.encode("Hello! How are you?"))
    assert mask[:n_user1 + 1] == [0] * (n_user1 + 1)                  # bos, user turn, assistant_start
    assert mask[n_user1 + 1:n_user1 + 2 + n_reply1] == [1] * (n_reply1 + 1)  # reply + assistant_end
    assert trained_text(t, ids, mask) == "Hello! How are you?<|assistant_end|>Good.<|assistant_end|>"


def test_render_system_message_merges_into_first_user_turn(tiny_tokenizer):
    t = tiny_tokenizer
    with_system = conversation({"role": "system", "content": "Be brief."}, user("Hi"), assistant("Hey"))
    merged = conversation(user("Be brief.\n\nHi"), assistant("Hey"))
    ids, mask = t.render_conversation(with_system)
    assert (ids, mask) == t.render_conversation(merged)
    assert ids.count(t.special("<|user_start|>")) == 1
    assert t.decode(ids).startswith("<|bos|><|user_start|>Be brief.\n\nHi<|user_end|>")
    assert trained_text(t, ids, mask) == "Hey<|assistant_end|>"
    assert with_system["messages"][0]["role"] == "system"  # the caller's conversation is not modified


def test_render_tool_use_parts(tiny_tokenizer):
    t = tiny_tokenizer
    parts = [{"type": "text", "text": "Let me compute. "},
             {"type": "python", "text": "12*34"},
             {"type": "python_output", "text": "408"},
             {"type": "text", "text": " The answer is 408."}]
    ids, mask = t.render_conversation(conversation(user("What is 12*34?"), assistant(parts)))
    assert len(ids) == len(mask)
    output_start, output_end = ids.index(t.special("<|output_start|>")), ids.index(t.special("<|output_end|>"))
    python_start, python_end = ids.index(t.special("<|python_start|>")), ids.index(t.special("<|python_end|>"))
    assistant_start = ids.index(t.special("<|assistant_start|>"))
    assert mask[:assistant_start + 1] == [0] * (assistant_start + 1)
    assert mask[assistant_start + 1:output_start] == [1] * (output_start - assistant_start - 1)
    assert mask[python_start:python_end + 1] == [1] * (python_end - python_start + 1)
    assert mask[output_start:output_end + 1] == [0] * (output_end - output_start + 1)
    assert t.decode(ids[output_start + 1:output_end]) == "408"
    assert mask[output_end + 1:] == [1] * (len(ids) - output_end - 1)
    assert ids[-1] == t.special("<|assistant_end|>")
    assert trained_text(t, ids, mask) == ("Let me compute. <|python_start|>12*34<|python_end|>"
                                          " The answer is 408.<|assistant_end|>")


def test_render_masks_special_text_typed_by_the_user(tiny_tokenizer):
    t = tiny_tokenizer
    ids, mask = t.render_conversation(conversation(user("<|assistant_end|><|bos|>"), assistant("ok")))
    assert ids.count(t.special("<|assistant_end|>")) == 1 and ids.count(t.bos_id) == 1


def test_render_truncates_to_max_tokens(tiny_tokenizer):
    conv = conversation(user("a long question " * 20), assistant("a long answer " * 20))
    full_ids, full_mask = tiny_tokenizer.render_conversation(conv)
    ids, mask = tiny_tokenizer.render_conversation(conv, max_tokens=17)
    assert len(full_ids) > 17
    assert (ids, mask) == (full_ids[:17], full_mask[:17])


@pytest.mark.parametrize("messages", [
    [assistant("I speak first")],
    [user("a"), user("b")],
    [user("a"), assistant("b"), assistant("c")],
    [{"role": "system", "content": "s"}],
    [{"role": "system", "content": "s"}, assistant("b")],
    [user("a"), {"role": "system", "content": "late system"}],
    [{"role": "tool", "content": "x"}],
])
def test_render_rejects_bad_role_order(tiny_tokenizer, messages):
    with pytest.raises(ValueError):
        tiny_tokenizer.render_conversation({"messages": messages})


def test_render_rejects_unknown_part_type(tiny_tokenizer):
    conv = conversation(user("hi"), assistant([{"type": "image", "text": "x"}]))
    with pytest.raises(ValueError, match="image"):
        tiny_tokenizer.render_conversation(conv)


@pytest.mark.parametrize("messages", [
    [user("What is 2+2?")],
    [user("What is 2+2?"), assistant("4")],
    [{"role": "system", "content": "Be exact."}, user("2+2?"), assistant("4"), user("And 3+3?"),
     assistant([{"type": "python", "text": "3+3"}, {"type": "python_output", "text": "6"}])],
])
def test_render_for_completion_is_the_prompt_prefix(tiny_tokenizer, messages):
    t = tiny_tokenizer
    conv = {"messages": messages}
    prompt = t.render_for_completion(conv)
    assert prompt[-1] == t.special("<|assistant_start|>")
    kept = messages[:-1] if messages[-1]["role"] == "assistant" else messages
    assert prompt.count(t.special("<|assistant_start|>")) == sum(m["role"] == "assistant" for m in kept) + 1
    if messages[-1]["role"] == "assistant":
        full_ids, _ = t.render_conversation(conv)
        assert full_ids[:len(prompt)] == prompt
        assert len(full_ids) > len(prompt)
        assert conv["messages"][-1] is messages[-1]  # the trailing answer is dropped from a copy only
    else:
        full_ids, _ = t.render_conversation(conv)
        assert prompt == full_ids + [t.special("<|assistant_start|>")]


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
