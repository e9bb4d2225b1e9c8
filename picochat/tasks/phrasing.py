"""Phrasings for the tasks picochat generates, and which of them are held out for eval.

A generated task asks its questions in many wordings (templates). Every EVAL_EVERY-th template of each list
is asked only in the eval split, so an eval score measures new wordings, not recall of trained ones; the
trained templates never reach the eval split (tests/test_tasks.py compares the sets). Around a question
people say more ("Hi! ...", "... Thanks!"): chatty() wraps a template in an opening and a closing, held
out the same way, so the model learns that the question is in there somewhere. On top of that, people
type casually: lowercase, no final punctuation. That noise is drawn in both splits: it is typing, not
wording.

    template = chatty(rng.choice(held_out(TEMPLATES, "train")), rng, "train")
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


# What people say before and after a question. An opening that does not end a sentence runs into it.
OPENINGS = ["Hi! ", "Hey, ", "Quick question: ", "Hello. ", "Excuse me, ", "OK, ", "Question: ", "Um, ",
            "Can you help me? ", "So, ", "Here's one: ", "Hi there, ", "I have a question. ", "Hiya! ",
            "Next one: ", "hey ", "Help me out: ", "Hello, ", "One more: ", "Quick one: "]
CLOSINGS = [" Thanks!", " thanks", " Thank you.", " please", " :)", " Can you help?", " I'm stuck.", " thx",
            " Thanks in advance.", " Please answer.", " I need this for homework.", " Cheers!"]


def chatty(template: str, rng: random.Random, split: str) -> str:
    """The template, sometimes with an opening before it and a closing after it, from split's share of
    each (held_out): a quarter of questions open with one, a sixth close with one."""
    if rng.random() < 0.25:
        opening = rng.choice(held_out(OPENINGS, split))
        template = opening + (template if opening.rstrip()[-1] in ".!?:" else template[0].lower() + template[1:])
    if rng.random() < 0.16:
        template += rng.choice(held_out(CLOSINGS, split))
    return template


def casual(text: str, rng: random.Random) -> str:
    """How people type a question: sometimes all lowercase, or without its final mark."""
    roll = rng.random()
    if roll < 0.2:
        text = text.lower()
    elif roll < 0.3:
        text = text[0].lower() + text[1:]
    if rng.random() < 0.2 and text[-1] in ".?!":
        text = text[:-1]
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
