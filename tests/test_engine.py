"""The engine: KV-cached decoding (= the full forward), sampling, independent rows,
the calculator tool inside generation, and text streaming that never splits a character.

    python -m pytest tests/test_engine.py
"""

from __future__ import annotations


import pytest
import torch

from helpers import ScriptedModel
from picochat.calculator import calculate
from picochat.chat import render_for_completion
from picochat.common import UserError
from picochat.runtime import Runtime
from picochat.engine import Decoder, Engine, Row, Sampling, TextStream
from picochat.model import GPT, GPTConfig
from picochat.tokenizer import Tokenizer

CPU = Runtime(torch.device("cpu"), torch.float32)


def random_model(vocab_size: int, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(sequence_len=64, vocab_size=vocab_size, n_layer=2, n_embd=64, n_head=2, n_kv_head=1))
    for p in model.parameters():  # init zeroes the residual branches: random weights make outputs varied
        torch.nn.init.normal_(p, std=0.3)
    return model.eval()


@pytest.fixture(scope="module")
def engine(tiny_tokenizer) -> Engine:
    return Engine(random_model(tiny_tokenizer.vocab_size), tiny_tokenizer, CPU)


def hello(text: str = "Hello there") -> dict:
    return {"messages": [{"role": "user", "content": text}]}


# ---- decoding ------------------------------------------------------------------------------------------

@torch.no_grad()
def without_cache(engine: Engine, prompt: list[int], max_tokens: int) -> list[int]:
    """Greedy decoding by running the whole sequence each step, with the engine's own tool handling."""
    ids, row, out = list(prompt), Row(), []
    for _ in range(max_tokens):
        logits = engine.model(torch.tensor([ids]))[0, -1]
        token = engine.advance(row, int(logits.argmax()))
        if token is None:
            break
        ids.append(token)
        out.append(token)
    return out


def test_greedy_with_the_cache_equals_the_full_forward(engine):
    prompt = engine.prompt_ids(hello())
    cached = engine.complete([prompt], Sampling(temperature=0, max_tokens=40))[0]["tokens"]
    assert cached == without_cache(engine, prompt, 40) and len(cached) > 5


def test_a_seed_reproduces_a_sample(engine):
    prompt = engine.prompt_ids(hello())
    sample = lambda seed: engine.complete([prompt], Sampling(temperature=1.0, top_k=0, max_tokens=30, seed=seed))[0]
    assert sample(7)["tokens"] == sample(7)["tokens"]
    assert sample(7)["tokens"] != sample(8)["tokens"]


def test_n_samples_share_one_prefill_and_match_single_samples_greedily(engine):
    prompt = engine.prompt_ids(hello())
    greedy = Sampling(temperature=0, max_tokens=20)
    rows = engine.complete([prompt], greedy, num_samples=4)
    single = engine.complete([prompt], greedy)[0]
    assert all(row["tokens"] == single["tokens"] for row in rows)


def test_prompts_of_different_lengths_batched_match_each_alone(engine):
    prompts = [engine.prompt_ids(hello(text)) for text in ("Hi", "Hello there, how are you today?", "Why?")]
    assert len({len(p) for p in prompts}) == 3  # the batch really is padded
    logits, _ = engine.prefill(prompts)
    for row, prompt in enumerate(prompts):
        alone, _ = engine.prefill([prompt])
        torch.testing.assert_close(logits[row], alone[0], rtol=1e-4, atol=1e-4)
    greedy = Sampling(temperature=0, max_tokens=20)
    batched = engine.complete(prompts, greedy, num_samples=2)
    for index, prompt in enumerate(prompts):
        alone = engine.complete([prompt], greedy)[0]["tokens"]
        assert batched[2 * index]["tokens"] == batched[2 * index + 1]["tokens"] == alone


def test_requests_joining_a_decoder_midway_sample_what_they_sample_alone(engine):
    """Continuous batching: requests join a shared Decoder at different steps, with their own prompt lengths,
    sample counts and settings (greedy and seeded), and leave when they end; each gets the tokens it gets on
    its own."""
    texts = ("Hi", "Hello there, how are you today?", "Why?", "Tell me a story about a cat, please")
    settings = [(Sampling(temperature=0, max_tokens=12), 1), (Sampling(temperature=1.0, top_k=20, seed=7,
                max_tokens=20), 2), (Sampling(temperature=0, max_tokens=6), 1), (Sampling(temperature=0.8, seed=3,
                max_tokens=16), 3)]
    prompts = [engine.prompt_ids(hello(text)) for text in texts]
    alone = [[row["tokens"] for row in engine.complete([prompt], sampling, n)]
             for prompt, (sampling, n) in zip(prompts, settings)]
    decoder, requests, together = Decoder(engine), [], 0
    while len(requests) < len(prompts) or decoder.requests:
        if len(requests) < len(prompts):  # one more joins before every step, while the others go on
            sampling, n = settings[len(requests)]
            requests.append((decoder.join([prompts[len(requests)]], sampling, n), [[] for _ in range(n)]))
        together = max(together, len(decoder.requests))
        stepping = [(request, tokens) for request, tokens in requests if request in decoder.requests]
        decoder.step()
        for request, tokens in stepping:
            for row, token in zip(tokens, request.step):
                row.extend([] if token is None else [token])
    assert together >= 3  # (the first, greedy, may end before the last joins)
    assert [tokens for _, tokens in requests] == alone
    assert decoder.cache is None  # all left


def test_padding_is_invisible_to_the_tokens_that_follow(engine):
    """A short prompt right-padded beside a long one: its next token must see its own prompt only, not the
    padding's keys in the slots after it (its length in the cache masks them, and they get written over)."""
    short, long = engine.prompt_ids(hello("Hi")), engine.prompt_ids(hello("Hello there, how are you today?"))
    _, cache = engine.prefill([short, long], max_new_tokens=4)
    assert cache.pos.tolist() == [len(short), len(long)] and len(short) < len(long)
    token = engine.tokenizer.encode(" ok")[0]
    batched = engine.forward(torch.tensor([[token], [token]]), cache)
    _, alone_cache = engine.prefill([short], max_new_tokens=4)
    alone = engine.forward(torch.tensor([[token]]), alone_cache)
    torch.testing.assert_close(batched[0], alone[0], rtol=1e-5, atol=1e-5)
    assert cache.pos.tolist() == [len(short) + 1, len(long) + 1]


def test_top_k_one_is_greedy_and_top_p_keeps_at_least_one_token(engine):
    prompt = engine.prompt_ids(hello())
    greedy = engine.complete([prompt], Sampling(temperature=0, max_tokens=15))[0]["tokens"]
    assert engine.complete([prompt], Sampling(temperature=1.0, top_k=1, max_tokens=15, seed=3))[0]["tokens"] == greedy
    assert engine.complete([prompt], Sampling(temperature=1.0, top_k=0, top_p=1e-6, max_tokens=15,
                                            seed=3))[0]["tokens"] == greedy


def scripted_engine(tokenizer: Tokenizer, scripts: list[list[int]], prompt: list[int]) -> Engine:
    return Engine(ScriptedModel(tokenizer.vocab_size, scripts, len(prompt)), tokenizer, CPU)


def test_rows_stop_independently(tiny_tokenizer):
    t = tiny_tokenizer
    end, word = t.special("<|assistant_end|>"), t.encode(" the")[0]
    prompt = [t.bos_id, 1, 2]
    scripts = [[word] * n + [end] for n in (2, 5, 9)] + [[word] * 50]  # the last row never stops
    engine = scripted_engine(t, scripts, prompt)
    steps = list(engine.generate([prompt], Sampling(temperature=0, max_tokens=12), num_samples=4))
    assert len(steps) == 12
    for row, stops_after in enumerate((3, 6, 10, None)):
        column = [step[row] for step in steps]
        if stops_after is None:
            assert column == [word] * 12
        else:
            assert column[:stops_after] == [word] * (stops_after - 1) + [end]
            assert column[stops_after:] == [None] * (12 - stops_after)
    reasons = [r["finish_reason"] for r in engine.complete([prompt], Sampling(temperature=0, max_tokens=12), 4)]
    assert reasons == ["stop", "stop", "stop", "length"]


def test_generation_ends_when_every_row_has_stopped(tiny_tokenizer):
    t = tiny_tokenizer
    engine = scripted_engine(t, [[t.encode(" a")[0], t.bos_id]], [t.bos_id])
    assert len(list(engine.generate([[t.bos_id]], Sampling(temperature=0, max_tokens=100), num_samples=3))) == 2


@pytest.mark.parametrize("expression, result", [("12*3", "36"), ("9**9**9", "error: result too large"),
                                                ("__import__('os')", "error: only string methods")])
def test_the_calculator_result_is_forced_into_the_row(tiny_tokenizer, expression, result):
    t = tiny_tokenizer
    special = t.special
    call = [special("<|python_start|>")] + t.encode(expression) + [special("<|python_end|>")]
    forced = [special("<|output_start|>")] + t.encode(calculate(expression)) + [special("<|output_end|>")]
    filler = [t.encode(" x")[0]] * len(forced)  # what the model "samples" while the tool output is fed
    script = call + filler + t.encode(" done") + [special("<|assistant_end|>")]
    prompt = [t.bos_id]
    sample = scripted_engine(t, [script], prompt).complete([prompt], Sampling(temperature=0, max_tokens=100))[0]
    assert sample["tokens"] == call + forced + t.encode(" done") + [special("<|assistant_end|>")]
    assert sample["forced"] == [False] * len(call) + [True] * len(forced) + [False] * (len(t.encode(" done")) + 1)
    assert sample["text"].startswith(f"<<{expression}={result}") and sample["text"].endswith(">> done")


def test_a_conversations_history_round_trips_through_its_text(tiny_tokenizer):
    """The server and the web page send an earlier answer back as the text the engine showed; the next
    prompt must hold the tokens the model really produced, calculator call and output included."""
    t, special = tiny_tokenizer, tiny_tokenizer.special
    call = [special("<|python_start|>")] + t.encode("12*34") + [special("<|python_end|>")]
    script = t.encode("Let me see.") + call + [t.encode(" x")[0]] * 5 + t.encode(" So 408.") + \
        [special("<|assistant_end|>")]
    first = [{"role": "user", "content": "What is 12 times 34?"}]
    engine = scripted_engine(t, [script], render_for_completion(t, {"messages": first}))
    prompt = engine.prompt_ids({"messages": first})
    answer = engine.complete([prompt], Sampling(temperature=0, max_tokens=100))[0]
    assert "<<12*34=408>>" in answer["text"]
    history = first + [{"role": "assistant", "content": answer["text"]}, {"role": "user", "content": "Thanks!"}]
    again = engine.prompt_ids({"messages": history})
    assert again[len(prompt):len(prompt) + len(answer["tokens"])] == answer["tokens"]


# ---- text ----------------------------------------------------------------------------------------------

def test_text_stream_never_splits_a_character(tiny_tokenizer):
    text = "Zürich 東京 😀👍🏽 naïve"
    tokens = tiny_tokenizer.encode(text)
    stream = TextStream(tiny_tokenizer)
    deltas = [stream.push(token) for token in tokens] + [stream.flush()]
    assert "".join(deltas) == text
    assert all("\ufffd" not in delta for delta in deltas)
    assert "" in deltas[:-1]  # some token ended mid-character and its bytes were held back


def test_stream_yields_the_answer_as_text(engine):
    sampling = Sampling(temperature=0, max_tokens=25)
    streamed = "".join(engine.stream(hello(), sampling))
    assert streamed == engine.complete([engine.prompt_ids(hello())], sampling)[0]["text"] and streamed


def test_sampling_settings_are_checked():
    for bad in (dict(temperature=-1), dict(top_k=-1), dict(top_p=0), dict(top_p=1.5), dict(max_tokens=0),
                dict(seed=2**64), dict(seed=2**63), dict(seed=-2**63 - 1)):
        with pytest.raises(UserError):
            Sampling(**bad)
    for seed in (2**63 - 1, -2**63):  # the ends of the range seed a generator
        torch.Generator().manual_seed(Sampling(seed=seed).seed)


def test_a_prompt_longer_than_the_context_is_refused(engine):
    with pytest.raises(UserError, match="exceeds the model's context"):
        list(engine.generate([[1] * 600], Sampling(max_tokens=100)))
