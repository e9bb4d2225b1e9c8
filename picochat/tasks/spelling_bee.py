"""Questions about the letters of a word, answered with the calculator (licence: picochat's own; the words
come from the pretraining corpus).

- SpellingBee (nanochat's ChatCORE task): how many times a letter appears in a word.
- Spelling: a word backwards, its n-th letter, spelled out letter by letter, its length.

A model sees tokens, not letters, so it answers through the tool, whose string methods do see them:
"how many r's in strawberry" -> <<'strawberry'.count('r')=3>> There are 3 r's in strawberry. Words are
split between train and eval by a hash of the word, and the question templates by phrasing.held_out, so an
eval question asks about a word never trained on in a wording never trained on.

    SpellingBee.from_corpus(home, "eval")[0]; Spelling.from_corpus(home, "train")[0]
"""

from __future__ import annotations

import functools
import random
import re
import zlib
from pathlib import Path

from picochat.chat import TOOL_CALL_TEXT
from picochat.common import UserError
from picochat.data.shards import corpus_dir, iter_texts, split_shards
from picochat.tasks import GeneratedTask, final_number, tool_answer
from picochat.tasks.phrasing import ORDINALS, casual, chatty, held_out

WORD = re.compile(r"\b[a-z]{3,12}\b")  # whole words: a longer one is not cut to its first 12 letters
EVAL_SHARE = 10  # one word in 10 is an eval word
# {letter} is the letter as asked ("r", "'r'", "the letter r"...), {l} the bare letter, {word} the word
COUNT_QUESTIONS = [
    "How many {letter} are in {word}?", "How many {l}'s are in {word}?", "how many {l}s in {word}",
    "Count the letter {letter} in {word}.", "How many times does the letter {letter} appear in {word}?",
    "How many times does {letter} occur in the word {word}?", "Count the {l}'s in {word}.",
    "Number of {letter} in {word}?", "In the word {word}, how many {l}'s are there?",
    "Can you count how many {letter} are in {word}?", "How often does {letter} appear in {word}?",
    "What's the count of {letter} in {word}?", "Tell me how many {l}'s the word {word} has.",
    "How many {letter} does {word} have?", "{word}: how many {letter}?", "How many {letter} can you find in {word}?",
    "Count how many times {letter} shows up in {word}.", "how many {letter} in the word {word}",
    "How many letter {l}'s are there in {word}?", "Does {word} have any {l}'s? How many?",
    "Find the number of {letter} in {word}.", "What is the number of times {letter} appears in {word}?",
    "Count {letter} in {word}", "How many {l} letters are in the word {word}?",
    "How many {l}'s does the word {word} contain?", "What's the number of {l}'s in {word}?",
    "{word} has how many {letter}?", "Count up the {letter} in {word} for me.",
    "I need the number of {letter} in {word}.", "How many {letter} is in {word}?",
    "Tell me the count of {letter} in the word {word}.", "Is there a {l} in {word}? How many?",
]
# operation -> (the calculator call, the answer sentence, question templates); {w} is the word as the call
# writes it (as_asked) or as the answer says it; {nth} and {i} pick a letter. The answer quotes the result:
# "etinu" after a quote is the tokens of the tool's output, " etinu" after a space would be others.
SPELLING = {
    "backwards": ("{w}[::-1]", '{w} backwards is "{r}".', [
        "Spell {word} backwards.", "What is {word} spelled backwards?", "Reverse the word {word}.",
        "Write {word} in reverse.", "How do you spell {word} backwards?", "{word} backwards?",
        "Can you reverse {word}?", "What's {word} written backwards?", "Reverse the letters of {word}.",
        "Spell {word} in reverse order.", "What do you get if you spell {word} backwards?", "reverse {word}",
        "What's {word} reversed?", "Give me {word} spelled backwards.", "Say {word} backwards.",
        "Flip the letters of {word} around."]),
    "nth letter": ("{w}[{i}]", 'The {nth} letter of {w} is "{r}".', [
        "What is the {nth} letter of {word}?", "What's the {nth} letter in {word}?", "Which letter is {nth} in {word}?",
        "Tell me the {nth} letter of {word}.", "What letter comes {nth} in {word}?", "In {word}, what is the {nth} letter?",
        "Give me the {nth} letter of {word}.", "{nth} letter of {word}?", "What is the {nth} character of {word}?",
        "Name the {nth} letter in the word {word}.", "Which is the {nth} letter of {word}?",
        "what's the {nth} letter of the word {word}", "What is the {nth} letter in the word {word}?",
        "I want the {nth} letter of {word}.", "{nth} letter in {word}?", "Which letter of {word} comes {nth}?"]),
    "spell": ("'-'.join({w})", '{w} is spelled "{r}".', [
        "How do you spell {word}?", "Spell {word}.", "Spell out {word} letter by letter.", "Can you spell {word} for me?",
        "Spell the word {word}.", "What are the letters in {word}?", "Spell {word} with dashes between the letters.",
        "How is {word} spelled?", "Spell {word} one letter at a time.", "Please spell {word}.",
        "Write out the letters of {word}.", "Could you spell {word}?", "Spell {word} out for me.",
        "What letters make up {word}?", "Can you spell out the word {word}?", "Letter by letter, how is {word} spelled?"]),
    "length": ("len({w})", "{w} has {r} letters.", [
        "How many letters are in {word}?", "How long is the word {word}?", "How many letters does {word} have?",
        "Count the letters in {word}.", "What is the length of {word}?", "How many characters are in {word}?",
        "Number of letters in {word}?", "What's the length of the word {word}?", "How many letters make up {word}?",
        "Count all the letters of {word}.", "how many letters in {word}", "How many letters long is {word}?",
        "How many letters does the word {word} have?", "What's the letter count of {word}?",
        "Tell me how many letters are in {word}.", "{word} has how many letters?"]),
}


def is_eval_word(word: str) -> bool:
    return zlib.crc32(word.encode()) % EVAL_SHARE == 0


@functools.lru_cache(maxsize=4)  # a stage asks for its tasks several times (batches, val, fingerprint)
def corpus_words(home: Path, max_bytes: int = 2_000_000) -> tuple[str, ...]:
    """Distinct lowercase words of 3-12 letters in the first max_bytes of the corpus's train shards."""
    train_shards, _ = split_shards(corpus_dir(home))
    words = {w for text in iter_texts(train_shards, max_bytes=max_bytes) for w in WORD.findall(text.lower())}
    return tuple(sorted(words))


def as_asked(word: str, rng: random.Random, template: str) -> tuple[str, str]:
    """The word as the question (template) writes it, and as the calculator call writes it. The call copies
    the question's tokens: after a space, "millennium" is the tokens " mill", "enn", "ium", but quoted it is
    "'m", "ill", "enn", "ium", which a tiny model would have to learn to respell for every word. So a bare
    word keeps its space in the call, ' millennium'.strip(); a quoted one keeps its quotes; one that opens
    the question has no space to keep."""
    if rng.random() < 0.15:  # not 'word': in 'soviet' the tokenizer splits off "'s" as in "it's"
        return f'"{word}"', f'"{word}"'
    if template.startswith("{word}"):
        return word, f'"{word}"'
    return (f"the word {word}" if rng.random() < 0.1 and "word {word}" not in template else word), f"' {word}'.strip()"


class WordTask(GeneratedTask):
    """Questions about words of one split: the words and the number of questions, drawn per index."""
    source = "generated by picochat/tasks/spelling_bee.py from words of the pretraining corpus"
    license = "MIT (picochat); words from the corpus, see its manifest"

    SIZES = {"train": 5_000, "eval": 300}

    def __init__(self, split: str, words: list[str], size: int = 0):
        super().__init__(split, size)
        self.words = sorted({w for w in words if WORD.fullmatch(w) and is_eval_word(w) == (split == "eval")})
        if not self.words:
            raise UserError(f"{self.name}: no {split} words to make problems from")

    @classmethod
    def from_corpus(cls, home: str | Path, split: str, size: int = 0) -> "WordTask":
        return cls(split, list(corpus_words(Path(home))), size)

    def make(self, index: int) -> dict:
        rng = random.Random(f"{self.name}-{self.split}-{index}")
        template, question, answer, result = self.draw(rng.choice(self.words), rng)
        return {"messages": [{"role": "user", "content": casual(question, rng)},
                             {"role": "assistant", "content": answer}], "answer": result, "template": template}

    def draw(self, word: str, rng: random.Random) -> tuple[str, str, list[dict], str]:
        """(template, question, assistant parts, expected answer) of one question about word."""
        raise NotImplementedError


class SpellingBee(WordTask):
    name = "spelling_bee"

    def draw(self, word, rng):
        letter = rng.choice(word) if rng.random() < 0.7 else rng.choice("abcdefghijklmnopqrstuvwxyz")
        template = chatty(rng.choice(held_out(COUNT_QUESTIONS, self.split)), rng, self.split)
        asked = rng.choice([letter] * 3 + [f"'{letter}'", f'"{letter}"', letter.upper()])
        count = word.count(letter)
        sentence = f"There is 1 {letter} in {word}." if count == 1 else f"There are {count} {letter}'s in {word}."
        said, literal = as_asked(word, rng, template)
        answer = tool_answer(f"{literal}.count('{letter}')", str(count), sentence)
        return template, template.format(letter=asked, l=letter, word=said), answer, str(count)

    def score(self, example: dict, answer: str) -> bool:
        return final_number(answer) == example["answer"]


class Spelling(WordTask):
    name = "spelling"

    def draw(self, word, rng):
        operation = rng.choice(list(SPELLING))
        call, sentence, templates = SPELLING[operation]
        template = chatty(rng.choice(held_out(templates, self.split)), rng, self.split)
        position = rng.randrange(min(len(word), len(ORDINALS)))
        nth, index = (ORDINALS[position], position) if rng.random() < 0.8 else ("last", -1)
        said, literal = as_asked(word, rng, template)
        call = call.format(w=literal, i=index)
        result = {"backwards": word[::-1], "nth letter": word[index], "spell": "-".join(word),
                  "length": str(len(word))}[operation]
        question = template.format(word=said, nth=nth)
        return template, question, tool_answer(call, result, sentence.format(w=word, r=result, nth=nth)), result

    def score(self, example: dict, answer: str) -> bool:
        """The expected text stands as a word of its own in what the answer says after its last tool call."""
        said = TOOL_CALL_TEXT.split(answer)[-1]
        return re.search(rf"(?<![\w-]){re.escape(example['answer'])}(?![\w-])", said) is not None
