"""The BPE tokenizer: training, round trips, special tokens, token bytes, save/load, fingerprint.

    python -m pytest tests/test_tokenizer.py
"""

from __future__ import annotations

import json

import pytest

from picochat.common import UserError
from picochat.tokenizer import META_FILE, RANKS_FILE, SPECIAL_TOKENS, Tokenizer, load_tokenizer

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




def test_fingerprint_follows_the_merges_not_the_object(corpus_documents, tiny_tokenizer, tmp_path):
    tiny_tokenizer.save(tmp_path)
    assert Tokenizer.load(tmp_path).fingerprint() == tiny_tokenizer.fingerprint()
    other = Tokenizer.train((d.text for d in corpus_documents), 300)
    assert other.fingerprint() != tiny_tokenizer.fingerprint()
