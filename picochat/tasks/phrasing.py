"""Phrasings for the tasks picochat generates, and which of them are held out for eval.

A generated task asks its questions in many wordings (templates). Every EVAL_EVERY-th template of each list
is asked only in the eval split, so an eval score measures new wordings, not recall of trained ones; the
trained templates never reach the eval split (tests/test_tasks.py compares the sets). On top of the
template, people type casually: lowercase, no final punctuation, extra "please". That noise is drawn in
both splits: it is typing, not wording.

    train_templates = held_out(TEMPLATES, "train")
"""

from __future__ import annotations

import random

EVAL_EVERY = 4  # templates 3, 7, 11, ... of each list are eval-only

ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen").split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
ORDINALS = ("first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth").split()


def held_out(templates: list, split: str) -> list:
    """The templates of `split`: every EVAL_EVERY-th is eval's, the others train's."""
    return [t for i, t in enumerate(templates) if (i % EVAL_EVERY == EVAL_EVERY - 1) == (split == "eval")]


def casual(text: str, rng: random.Random, prefix: bool = True) -> str:
    """How people type a question: sometimes all lowercase, without its final mark, or (where `prefix`)
    opening with "please"."""
    roll = rng.random()
    if roll < 0.2:
        text = text.lower()
    elif roll < 0.3:
        text = text[0].lower() + text[1:]
    if rng.random() < 0.2 and text[-1] in ".?!":
        text = text[:-1]
    if prefix and rng.random() < 0.05:
        text = rng.choice(["please ", "Please, ", "hey, ", "Quick one: "]) + text[0].lower() + text[1:]
    return text


def number_words(n: int) -> str:
    """0 <= n < 1,000,000 in English words: 1234 -> "one thousand two hundred thirty-four"."""
    if not 0 <= n < 1_000_000:
        raise ValueError(f"number_words covers 0..999,999, not {n}")
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("-" + ONES[n % 10] if n % 10 else "")
    if n < 1000:
        return ONES[n // 100] + " hundred" + (" " + number_words(n % 100) if n % 100 else "")
    return number_words(n // 1000) + " thousand" + (" " + number_words(n % 1000) if n % 1000 else "")
