"""The token loader: batch layout, the exact document stream, exact resume, the DDP split, and bad shards.

    python -m pytest tests/test_loader.py
"""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import make_documents
from picochat.common import UserError
from picochat.data.loader import TokenLoader
from picochat.data.shards import Document, iter_texts, open_shard, shard_name, write_shard

SHARD_SIZES = (20, 13, 17)   # documents per shard; 4 per row group -> 5 + 4 + 5 row groups
ROW_GROUP = 4


@pytest.fixture(scope="module")
def documents() -> list[Document]:
    return make_documents(sum(SHARD_SIZES), seed=1)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, documents) -> list[Path]:
    directory = tmp_path_factory.mktemp("shards")
    paths, start = [], 0
    for index, size in enumerate(SHARD_SIZES):
        paths.append(directory / shard_name(index))
        write_shard(paths[-1], documents[start:start + size], row_group_size=ROW_GROUP)
        start += size
    assert [open_shard(p).num_row_groups for p in paths] == [5, 4, 5]
    return paths


def reference_stream(tokenizer, texts) -> list[int]:
    return [t for ids in tokenizer.encode_batch(list(texts), prepend_bos=True) for t in ids]


def take(loader, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [next(loader) for _ in range(count)]


def flat_stream(batches) -> list[int]:
    """The token stream the batches cover: each batch's last target is the next batch's first input."""
    tokens = [t for batch in batches for t in batch.inputs.flatten().tolist()]
    return tokens + batches[-1][1].flatten()[-1:].tolist() if batches else tokens


def same_batches(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x.inputs, y.inputs) and torch.equal(x.targets, y.targets)
                                    for x, y in zip(a, b))


def run_with_timeout(function, seconds: float = 20.0):
    """Run function in a thread; fail instead of hanging the test suite. Returns the exception it raised."""
    outcome = {}

    def target():
        try:
            outcome["value"] = function()
        except BaseException as error:  # hand every outcome, StopIteration included, back to the test
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds}s (hang)"
    return outcome.get("error")


# ---- layout and stream --------------------------------------------------------------------------------

def test_batches_are_shifted_by_one(tiny_tokenizer, shards):
    loader = TokenLoader(tiny_tokenizer, shards, batch_size=3, seq_len=7)
    batches = take(loader, 20)
    for inputs, targets, _ in batches:
        assert inputs.shape == targets.shape == (3, 7)
        assert inputs.dtype == targets.dtype == torch.long
        assert inputs.device.type == "cpu"
        assert torch.equal(inputs[:, 1:], targets[:, :-1])
        assert torch.equal(inputs.flatten()[1:], targets.flatten()[:-1])  # rows continue one another
    for (_, targets, _), (next_inputs, _, _) in zip(batches, batches[1:]):
        assert next_inputs[0, 0] == targets[-1, -1]  # ... and so do batches: no token is skipped


def test_micro_batches_cover_the_same_tokens_as_one_big_batch(tiny_tokenizer, shards):
    small = take(TokenLoader(tiny_tokenizer, shards, batch_size=2, seq_len=16), 6)
    big = take(TokenLoader(tiny_tokenizer, shards, batch_size=6, seq_len=16), 2)
    for index, (inputs, targets, _) in enumerate(big):
        part = small[3 * index:3 * index + 3]
        assert torch.equal(inputs, torch.cat([batch.inputs for batch in part]))
        assert torch.equal(targets, torch.cat([batch.targets for batch in part]))


def test_stream_is_bos_plus_each_document_in_order(tiny_tokenizer, shards):
    batch_size, seq_len = 2, 16
    needed = batch_size * seq_len + 1
    reference = reference_stream(tiny_tokenizer, iter_texts(shards))
    batches = list(TokenLoader(tiny_tokenizer, shards, batch_size, seq_len, loop=False))
    stream = flat_stream(batches)

    assert len(batches) == (len(reference) - 1) // (needed - 1)
    assert stream == reference[:len(stream)]
    assert stream[0] == tiny_tokenizer.bos_id
    document_starts, position = [], 0
    for text in iter_texts(shards):
        document_starts.append(position)
        position += len(tiny_tokenizer.encode(text)) + 1
    bos_positions = [i for i, token in enumerate(stream) if token == tiny_tokenizer.bos_id]
    assert bos_positions == [p for p in document_starts if p < len(stream)]


def test_non_looping_loader_stops(tiny_tokenizer, shards):
    loader = TokenLoader(tiny_tokenizer, shards[1:2], batch_size=1, seq_len=64, loop=False)
    reference = reference_stream(tiny_tokenizer, iter_texts(shards[1:2]))
    count = 0
    while True:
        error = run_with_timeout(lambda: next(loader))
        if error is not None:
            break
        count += 1
    assert isinstance(error, StopIteration)
    assert count == (len(reference) - 1) // 64
    with pytest.raises(StopIteration):
        next(loader)


def test_looping_loader_starts_the_next_epoch(tiny_tokenizer, shards):
    reference = reference_stream(tiny_tokenizer, iter_texts(shards[1:2]))
    loader = TokenLoader(tiny_tokenizer, shards[1:2], batch_size=2, seq_len=50)
    count = 3 * len(reference) // 100 + 1
    stream = flat_stream(take(loader, count))
    assert len(stream) > 3 * len(reference)
    assert stream == (reference * 4)[:len(stream)]
    assert loader.state_dict()["epoch"] == count * 100 // len(reference) == 3


# ---- exact resume -------------------------------------------------------------------------------------

def check_resume_everywhere(tokenizer, shards, total: int, **kwargs) -> list[dict]:
    """Run `total` batches once, then restart from the state after every k and compare the rest."""
    loader = TokenLoader(tokenizer, shards, **kwargs)
    batches, states = [], [loader.state_dict()]
    for _ in range(total):
        batches.append(next(loader))
        states.append(loader.state_dict())
    for k in range(total):
        resumed = TokenLoader(tokenizer, shards, state=dict(states[k]), **kwargs)
        rest = take(resumed, total - k)
        assert same_batches(rest, batches[k:]), f"resume after {k} batches from {states[k]} differs"
        assert resumed.state_dict() == states[total]
    return states


def test_resume_at_every_batch(tiny_tokenizer, shards):
    states = check_resume_everywhere(tiny_tokenizer, shards, 40, batch_size=2, seq_len=48)
    assert any(s["offset"] > 0 for s in states)                         # mid-document
    assert any(s["row"] > 0 for s in states)                            # inside a row group
    assert len({(s["shard"], s["row_group"]) for s in states}) > 3      # several row groups ...
    assert max(s["shard"] for s in states) >= 1                         # ... and shards


def test_resume_across_epoch_boundaries(tiny_tokenizer, documents, tmp_path):
    shortest = sorted(documents, key=lambda d: len(d.text))[:3]
    tiny = [tmp_path / shard_name(0)]
    write_shard(tiny[0], shortest, row_group_size=2)
    states = check_resume_everywhere(tiny_tokenizer, tiny, 30, batch_size=2, seq_len=8)
    epochs = [s["epoch"] for s in states]
    assert epochs[0] == 0 and epochs[-1] >= 3
    assert any(s["offset"] > 0 and s["epoch"] > 0 for s in states)
    assert {s["row_group"] for s in states} == {0, 1}


@pytest.mark.parametrize("rank", [0, 1])
def test_resume_on_each_ddp_rank(tiny_tokenizer, shards, rank):
    states = check_resume_everywhere(tiny_tokenizer, shards, 40, batch_size=2, seq_len=48, rank=rank,
                                     world_size=2)
    assert any(s["offset"] > 0 for s in states)


@pytest.mark.parametrize("loop", [True, False])
@pytest.mark.parametrize("extra", [-2, -1, 0, 1])
def test_resume_where_a_document_ends_at_a_batch_edge(tiny_tokenizer, shards, loop, extra):
    texts = list(iter_texts(shards[:1]))
    first = len(tiny_tokenizer.encode(texts[0])) + 1
    kwargs = dict(batch_size=1, seq_len=first + extra, loop=loop)  # batch 1 ends around document 1's end
    check_resume_everywhere(tiny_tokenizer, shards[:1], 6, **kwargs)
    stream = flat_stream(take(TokenLoader(tiny_tokenizer, shards[:1], **kwargs), 6))
    assert stream == reference_stream(tiny_tokenizer, texts)[:len(stream)]


def test_state_dict_is_plain_and_independent(tiny_tokenizer, shards):
    loader = TokenLoader(tiny_tokenizer, shards, batch_size=2, seq_len=16)
    next(loader)
    state = loader.state_dict()
    assert set(state) == {"epoch", "shard", "row_group", "row", "offset"}
    assert all(type(v) is int for v in state.values())
    snapshot = dict(state)
    next(loader)
    assert state == snapshot  # a saved state does not move with the loader


# ---- DDP split ----------------------------------------------------------------------------------------

def epoch_documents(tokenizer, shards, rank: int, world_size: int) -> tuple[list[str], set]:
    """Texts a rank reads in its first epoch (in order) and the (shard, row group) pairs it visits."""
    loader = TokenLoader(tokenizer, shards, batch_size=1, seq_len=1, rank=rank, world_size=world_size)
    stream, groups = [], set()
    total = sum(len(tokenizer.encode(text)) + 1 for text in iter_texts(shards))
    while loader.state_dict()["epoch"] == 0:  # the state names the next batch's first token
        assert len(stream) <= total, "a rank's epoch is longer than the whole corpus"
        stream += next(loader)[0].flatten().tolist()
        state = loader.state_dict()
        if state["epoch"] == 0:
            groups.add((state["shard"], state["row_group"]))
    pieces = []
    for token in stream:
        if token == tokenizer.bos_id:
            pieces.append([])
        else:
            pieces[-1].append(token)  # IndexError if the stream does not start with bos
    return [tokenizer.decode(piece) for piece in pieces], groups


@pytest.mark.parametrize("world_size", [2, 3])
def test_ddp_ranks_read_disjoint_row_groups_covering_everything(tiny_tokenizer, shards, documents, world_size):
    position = {}  # text -> (shard, row group, row)
    for shard, path in enumerate(shards):
        parquet = open_shard(path)
        for group in range(parquet.num_row_groups):
            for row, text in enumerate(parquet.read_row_group(group).column("text").to_pylist()):
                position[text] = (shard, group, row)

    seen, all_groups = [], []
    for rank in range(world_size):
        texts, groups = epoch_documents(tiny_tokenizer, shards, rank, world_size)
        assert texts, f"rank {rank} read nothing"
        assert [position[t] for t in texts] == sorted(position[t] for t in texts)  # shard/row-group order
        assert {position[t][:2] for t in texts} >= groups
        seen.append(set(texts))
        all_groups.append({position[t][:2] for t in texts})
        # whole row groups: a rank that reads one document of a group reads all of it
        for shard, group in all_groups[-1]:
            assert sum(position[t][:2] == (shard, group) for t in texts) == \
                sum(p[:2] == (shard, group) for p in position.values())
    for a in range(world_size):
        for b in range(a + 1, world_size):
            assert not seen[a] & seen[b]
            assert not all_groups[a] & all_groups[b]
    assert set().union(*seen) == {d.text for d in documents}


# ---- bad input ----------------------------------------------------------------------------------------

def drain(loader, limit: int = 10_000) -> None:
    for _ in range(limit):
        next(loader)


def test_missing_shard_names_the_file(tiny_tokenizer, shards, tmp_path):
    missing = tmp_path / "shard_00099.parquet"
    for shard_list in ([missing], [shards[1], missing]):
        loader = TokenLoader(tiny_tokenizer, shard_list, batch_size=2, seq_len=16)
        with pytest.raises(UserError, match=str(missing)):
            drain(loader)


def test_corrupt_shard_names_the_file(tiny_tokenizer, shards, tmp_path):
    corrupt = tmp_path / "shard_00007.parquet"
    corrupt.write_bytes(b"PAR1 this is not a parquet file at all" * 10)
    for shard_list in ([corrupt], [shards[1], corrupt]):
        loader = TokenLoader(tiny_tokenizer, shard_list, batch_size=2, seq_len=16)
        with pytest.raises(ValueError, match=str(corrupt)):
            drain(loader)


def test_shard_without_text_column(tiny_tokenizer, tmp_path):
    path = tmp_path / "shard_00000.parquet"
    pq.write_table(pa.table({"body": ["hello", "world"]}), path)
    with pytest.raises(ValueError, match="text"):
        next(TokenLoader(tiny_tokenizer, [path], batch_size=1, seq_len=4))


def test_no_shards(tiny_tokenizer):
    with pytest.raises(ValueError, match="shard"):
        TokenLoader(tiny_tokenizer, [], batch_size=1, seq_len=4)


@pytest.mark.parametrize("world_size", [2, 5])
def test_rank_without_row_groups_raises_instead_of_hanging(tiny_tokenizer, documents, tmp_path, world_size):
    path = tmp_path / "shard_00000.parquet"
    write_shard(path, documents[:3])  # one row group only
    loader = TokenLoader(tiny_tokenizer, [path], batch_size=2, seq_len=8, rank=world_size - 1,
                         world_size=world_size)
    error = run_with_timeout(lambda: next(loader))
    assert isinstance(error, ValueError), error
    assert "no documents" in str(error) and f"rank {world_size - 1}" in str(error)
    # rank 0 owns that group and streams normally
    inputs = next(TokenLoader(tiny_tokenizer, [path], batch_size=2, seq_len=8, rank=0, world_size=world_size)).inputs
    assert inputs[0, 0] == tiny_tokenizer.bos_id
