"""`picochat eval base`: CORE's options and few-shot prompts, the centring math, likelihood scoring (padding
changes nothing, greedy exactness), the pick per task kind, and the JSON results of a real run.

    python -m pytest tests/test_eval_core.py
"""

from __future__ import annotations

import json

import pytest
import torch

from helpers import TINY, flags_dict
from picochat.common import UserError
from picochat.runtime import Runtime
from picochat.engine import Engine
from picochat.evals import core
from picochat.evals.core import centered, evaluate_core_task, fewshot_prefix, option_sequences, options_of
from picochat.evals.core import run as eval_base
from picochat.model import GPT, GPTConfig
from picochat.tasks.core import CoreTask
from picochat.train import run

CPU = Runtime(torch.device("cpu"), torch.float32)
MC = CoreTask("toy_mc", "multiple_choice", "toy", "validation", num_fewshot=2, random_baseline=0.25, license="MIT")
SCHEMA = CoreTask("toy_schema", "schema", "toy", "validation", num_fewshot=0, random_baseline=0.5, license="MIT")
LM = CoreTask("toy_lm", "language_modeling", "toy", "validation", num_fewshot=0, random_baseline=0.0, license="MIT")


def mc_items(count: int = 6) -> list[dict]:
    return [{"contexts": [f"Question {i}: pick one.\nAnswer:"], "continuations": [" red", " green", " blue", " gray"],
             "answer": i % 4} for i in range(count)]


@pytest.fixture(scope="module")
def engine(tiny_tokenizer) -> Engine:
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=64, vocab_size=tiny_tokenizer.vocab_size, n_layer=2, n_embd=64, n_head=2,
                          n_kv_head=2))
    for p in model.parameters():  # init zeroes the residual branches: random weights make outputs varied
        torch.nn.init.normal_(p, std=0.3)
    return Engine(model.eval(), tiny_tokenizer, CPU)


def test_options_pair_contexts_and_continuations():
    assert options_of({"contexts": ["A"], "continuations": [" x", " y"], "answer": 1}) == [("A", " x"), ("A", " y")]
    assert options_of({"contexts": ["A", "B"], "continuations": [" z"], "answer": 0}) == [("A", " z"), ("B", " z")]
    assert options_of({"contexts": ["A"], "continuations": [" z"], "answer": 0}) == [("A", " z")]


def test_fewshot_examples_are_other_items_with_their_right_answers():
    items = mc_items()
    prefix = fewshot_prefix(MC, items, 3)
    shots = prefix.split(core.SEPARATOR)[:-1]
    assert len(shots) == 2 and prefix == fewshot_prefix(MC, items, 3)  # the same shots on every run
    for shot in shots:
        number = int(shot.split(":")[0].split()[-1])
        assert number != 3 and shot.endswith(items[number]["continuations"][items[number]["answer"]])
    assert fewshot_prefix(SCHEMA, items, 3) == ""


def test_a_long_prompt_is_cut_from_the_left_keeping_the_continuation(tiny_tokenizer):
    items = [{"contexts": ["word " * 200], "continuations": [" end of it"], "answer": 0}]
    (ids, start), = option_sequences(tiny_tokenizer, LM, items, 0, max_len=32)
    assert len(ids) == 32 and ids[start:] == tiny_tokenizer.encode(" end of it")
    with pytest.raises(UserError, match="continuation"):
        option_sequences(tiny_tokenizer, LM, items, 0, max_len=3)


def test_centring_is_zero_at_chance_and_one_at_perfect():
    assert centered(0.25, 0.25) == 0 and centered(1.0, 0.25) == 1
    assert centered(0.625, 0.25) == pytest.approx(0.5) and centered(0.0, 0.5) == -1
    assert centered(0.3, 0.0) == pytest.approx(0.3)


def test_padding_changes_no_score_and_greedy_exactness_is_checked(engine, tiny_tokenizer):
    prompt = tiny_tokenizer.encode("The quick brown fox")
    with torch.no_grad():  # the model's own greedy continuation of the prompt
        greedy = []
        for _ in range(3):
            greedy.append(int(engine.model.next_logits(torch.tensor([[tiny_tokenizer.bos_id] + prompt + greedy]))[0].argmax()))
    own = ([tiny_tokenizer.bos_id] + prompt + greedy, 1 + len(prompt))
    other = ([tiny_tokenizer.bos_id] + prompt + [(greedy[0] + 1) % 256] + greedy[1:], 1 + len(prompt))
    short = ([tiny_tokenizer.bos_id] + tiny_tokenizer.encode("Hi") + greedy[:1], 3)
    together = core.score_sequences(engine, [own, other, short])
    alone = [core.score_sequences(engine, [sequence])[0] for sequence in (own, other, short)]
    for (loss, exact), (loss_alone, exact_alone) in zip(together, alone):
        assert loss == pytest.approx(loss_alone, rel=1e-4) and exact == exact_alone
    assert together[0][1] and not together[1][1]
    with torch.no_grad():  # the mean loss is the continuation's mean cross-entropy
        logits = engine.model(torch.tensor([own[0][:-1]]))[0, own[1] - 1:]
        expected = torch.nn.functional.cross_entropy(logits, torch.tensor(own[0][own[1]:]))
    assert together[0][0] == pytest.approx(expected.item(), rel=1e-4)


def scripted_scores(monkeypatch, scores):
    """score_sequences replaced by scores handed out in order, whatever the batching."""
    scores = iter(scores)
    monkeypatch.setattr(core, "score_sequences", lambda engine, sequences: [next(scores) for _ in sequences])


def test_the_pick_is_the_lowest_mean_loss_or_an_exact_continuation(engine, monkeypatch):
    items = mc_items(8)
    scripted_scores(monkeypatch, [(abs(option - item["answer"]) + 0.5, False) for item in items for option in range(4)])
    result = evaluate_core_task(engine, MC, items, count=8, batch_size=6)
    assert (result["correct"], result["centered"]) == (8, 1.0)
    scripted_scores(monkeypatch, [(float(option), False) for item in items for option in range(4)])  # always A
    result = evaluate_core_task(engine, MC, items, count=8, batch_size=6)
    assert (result["correct"], result["centered"]) == (2, 0.0)  # two of eight answers are A: chance
    lm_items = [{"contexts": ["a"], "continuations": [" b"], "answer": 0}] * 4
    scripted_scores(monkeypatch, [(9.0, True), (0.1, False), (9.0, True), (9.0, True)])
    assert evaluate_core_task(engine, LM, lm_items, count=4, batch_size=3)["correct"] == 3  # exactness, not loss


def test_eval_base_writes_core_results(fresh_home, capsys):
    run(flags_dict(*TINY, "--max-seq-len", "256", "--num-iterations", "2", "--home", str(fresh_home)))
    report = eval_base({"max_problems": 4, "batch_size": 8, "eval_tokens": 4096, "device": "cpu",
                        "home": str(fresh_home)})
    saved = json.loads((fresh_home / "evals" / "base_core.json").read_text())
    assert saved == report and saved["stage"] == "base" and saved["val_bpb"] > 0
    assert len(saved["results"]) == len(core.core_tasks())
    assert all(r["problems"] <= 4 and 0 <= r["accuracy"] <= 1 for r in saved["results"])
    assert saved["core"] == pytest.approx(sum(r["centered"] for r in saved["results"]) / len(saved["results"]))
    assert "CORE" in capsys.readouterr().out
