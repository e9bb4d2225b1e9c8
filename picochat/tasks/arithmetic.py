"""Arithmetic asked the ways people ask it, solved through the calculator tool, made by code (licence:
picochat's own).

A question is an operation said in words or symbols ("37 times 24", "15% of 80", "(12 + 8) / 4") inside a
question frame ("What's ...?", "Calculate ...", "how much is ..."), a command ("Multiply 37 by 24."), or a
short word problem. Numbers come as digits, with thousands commas, or as words. The assistant copies the
numbers into a calculator call and the result out of it, which even a tiny model can learn:
"what's thirty-seven times 24?" -> <<37 * 24=888>> The answer is 888.

Frames, commands and word problems are split into train and eval templates (phrasing.held_out), so an eval
question is asked in a wording never trained on; the ways to say an operation ("times", "multiplied by")
are vocabulary and appear in both. A question also belongs to the split its hash picks, so no eval
question is a training question, whatever the wording.

    ArithmeticWithTool("eval")[0]
"""

from __future__ import annotations

import itertools
import random
import zlib

from picochat.calculator import calculate
from picochat.tasks import GeneratedTask, final_number, tool_answer
from picochat.tasks.phrasing import casual, chatty, held_out, number_words

# name -> (the calculator's expression, the ways people say it); a and b are drawn per operation below
OPERATIONS = {
    "add": ("{a} + {b}", ["{a} + {b}", "{a}+{b}", "{a} plus {b}", "the sum of {a} and {b}",
                          "{a} and {b} added together", "{b} added to {a}", "{a} add {b}"]),
    "subtract": ("{a} - {b}", ["{a} - {b}", "{a}-{b}", "{a} minus {b}", "{a} take away {b}",
                               "{b} subtracted from {a}", "the difference between {a} and {b}", "{a} less {b}"]),
    "multiply": ("{a} * {b}", ["{a} * {b}", "{a}*{b}", "{a} x {b}", "{a} × {b}", "{a} times {b}",
                               "{a} multiplied by {b}", "the product of {a} and {b}", "{a} by {b}"]),
    "divide": ("{a} / {b}", ["{a} / {b}", "{a}/{b}", "{a} ÷ {b}", "{a} divided by {b}", "{a} over {b}",
                             "{a} split into {b} equal parts"]),
    "percent": ("{a} * {b} / 100", ["{a}% of {b}", "{a} percent of {b}", "{a} % of {b}", "{a} per cent of {b}"]),
    "power": ("{a} ** {b}", ["{a} to the power of {b}", "{a} ** {b}", "{a}^{b}", "{a} raised to the power {b}"]),
    "square": ("{a} ** 2", ["{a} squared", "the square of {a}", "{a}^2", "{a} to the second power"]),
}
# Question frames around an operation ({x}); the last of each row is eval-only (phrasing.held_out)
FRAMES = [
    "What is {x}?", "What's {x}?", "Calculate {x}.", "What does {x} equal?",
    "How much is {x}?", "{x} = ?", "Compute {x}", "Could you tell me what {x} is?",
    "Can you calculate {x}?", "whats {x}", "Please work out {x}.", "Evaluate {x}.",
    "{x}?", "Tell me {x}.", "What do you get for {x}?", "What would {x} be?",
    "Solve {x}", "{x}=", "What is the value of {x}?", "Find {x}.",
    "Could you work out {x}?", "I need to know {x}.", "How much does {x} come to?", "How much would {x} be?",
    "Help me with {x}", "Work out {x} for me.", "What's the answer to {x}?", "Do you know what {x} is?",
    "can u do {x}", "What is {x} equal to?", "Figure out {x}.", "{x} is what?",
    "I'd like to know {x}.", "What's the result of {x}?", "Can you work out {x}?", "Answer this: {x}",
    "{x}, what is it?", "Can you tell me {x}?", "So what is {x}?", "What's {x} equal to?",
]
# Commands: (operation, template)
COMMANDS = [
    ("add", "Add {a} and {b}."), ("subtract", "Subtract {b} from {a}."), ("multiply", "Multiply {a} by {b}."),
    ("divide", "Divide {a} by {b}."), ("add", "Add {b} to {a}."), ("percent", "Find {a}% of {b}."),
    ("multiply", "Multiply {a} and {b} together."), ("subtract", "Take {b} away from {a}."),
    ("divide", "How many times does {b} go into {a}?"), ("add", "Sum {a} and {b}."),
    ("square", "Square {a}."), ("multiply", "What do you get if you multiply {a} by {b}?"),
    ("subtract", "If I take {b} from {a}, what's left?"), ("divide", "Share {a} equally between {b}."),
    ("add", "What do {a} and {b} make together?"), ("percent", "Take {a} percent of {b}."),
    ("multiply", "Times {a} by {b}."), ("add", "Add up {a} and {b}."), ("subtract", "Take away {b} from {a}."),
    ("multiply", "What is {a} lots of {b}?"),
]
NAMES = ["Sam", "Ana", "Lee", "Maya", "Omar", "Ivy", "Noah", "Zoe", "Ravi", "Lena", "Tom", "Mia"]
THINGS = ["apples", "books", "coins", "stamps", "marbles", "shells", "cards", "pencils", "stickers", "eggs"]
# Word problems: (operation, question, answer sentence); "{r}" is the result
WORD_PROBLEMS = [
    ("add", "{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?",
     "{name} has {r} {thing} now."),
    ("subtract", "{name} had {a} {thing} and gave away {b}. How many {thing} are left?", "{r} {thing} are left."),
    ("multiply", "{name} buys {b} boxes with {a} {thing} in each. How many {thing} is that?", "That is {r} {thing}."),
    ("divide", "{name} shares {a} {thing} equally among {b} friends. How many does each friend get?",
     "Each friend gets {r}."),
    ("multiply", "A ticket costs ${a}. How much do {b} tickets cost?", "{b} tickets cost ${r}."),
    ("add", "{name} read {a} pages on Monday and {b} pages on Tuesday. How many pages is that in total?",
     "That is {r} pages in total."),
    ("subtract", "There are {a} people on a train and {b} get off. How many are still on the train?",
     "{r} people are still on the train."),
    ("multiply", "{name} earns ${a} an hour. How much is that for {b} hours?", "That is ${r}."),
    ("divide", "A rope is {a} meters long and is cut into {b} equal pieces. How long is each piece?",
     "Each piece is {r} meters long."),
    ("percent", "A jacket costs ${b} and is {a}% off. How much money do you save?", "You save ${r}."),
    ("add", "A shop sold {a} cups of tea in the morning and {b} in the afternoon. How many cups in all?",
     "They sold {r} cups in all."),
    ("subtract", "{name} needs {a} points to win and has {b}. How many more points are needed?",
     "{name} needs {r} more points."),
    ("multiply", "There are {a} rows of chairs with {b} chairs in each row. How many chairs are there?",
     "There are {r} chairs."),
    ("divide", "{a} students are split into teams of {b}. How many teams are there?", "There are {r} teams."),
    ("percent", "{name} scored {a}% on a test with {b} questions. How many questions were right?",
     "{r} questions were right."),
    ("add", "My bill was ${a} and the tip is ${b}. What do I pay altogether?", "You pay ${r} altogether."),
    ("subtract", "A book has {a} pages and I've read {b}. How many pages do I have left?",
     "You have {r} pages left."),
    ("multiply", "A car uses {b} liters of fuel a day. How much does it use in {a} days?",
     "It uses {r} liters."),
    ("divide", "We drove {a} km in {b} hours. What was our average speed in km per hour?",
     "The average speed was {r} km per hour."),
    ("subtract", "I was born in {b} and it is {a} now. How old am I?", "You are {r} years old."),
    ("add", "{name} walked {a} steps in the morning and {b} in the evening. How many steps in total?",
     "That is {r} steps in total."),
    ("multiply", "One box holds {a} {thing}. How many {thing} are in {b} boxes?", "There are {r} {thing}."),
    ("divide", "{name} has {a} {thing} to put into bags of {b}. How many bags are needed?", "That is {r} bags."),
    ("subtract", "A pack had {a} {thing} and {b} are gone. How many are left in the pack?",
     "{r} {thing} are left in the pack."),
]
ANSWER = "The answer is {r}."
# Follow-ups about the result of the turn before: (calculator expression, question); {r} is that result
FOLLOW_UPS = [
    ("{r} + {b}", "And what is that plus {b}?"), ("{r} * {b}", "Now multiply that by {b}."),
    ("{r} - {b}", "What if you take away {b}?"), ("{r} / 2", "And half of that?"),
    ("{r} + {b}", "Add {b} to that."), ("{r} * 2", "Double it."), ("{r} / {b}", "Now divide that by {b}."),
    ("{r} - {b}", "and minus {b}?"), ("{r} * {b}", "What's that times {b}?"), ("{r} + {b}", "plus {b}?"),
    ("{r} - {b}", "Subtract {b} from the answer."), ("{r} * {b}", "and if I multiply it by {b}?"),
    ("{r} / {b}", "Divide the result by {b}."), ("{r} + {b}", "What do I get if I add {b} to it?"),
    ("{r} ** 2", "What's that squared?"), ("{r} * 3", "And three times that?"),
    ("{r} - {b}", "Now take {b} away from it."), ("{r} + {b}", "and that plus {b}"),
    ("{r} * {b}", "Multiply the answer by {b}."), ("{r} / {b}", "what is that divided by {b}?"),
    ("{r} * {b}", "OK, and times {b}?"), ("{r} - {b}", "What's left if I subtract {b}?"),
    ("{r} + {b}", "Then add {b}."), ("{r} * 10", "And ten times that?"),
]
EVAL_SHARE = 10  # one question in 10 is an eval question


def is_eval_question(question: str) -> bool:
    return zlib.crc32(question.encode()) % EVAL_SHARE == 0


def operands(operation: str, rng: random.Random) -> tuple[int, int]:
    """Numbers of the sizes people ask about: mostly small, sometimes in the thousands."""
    size = lambda: rng.choice([rng.randint(1, 20), rng.randint(2, 99), rng.randint(2, 99), rng.randint(100, 999),
                               rng.randint(1000, 9999)])
    if operation == "divide":
        b = rng.randint(2, 20) if rng.random() < 0.8 else rng.randint(21, 99)
        return (b * rng.randint(2, 60) if rng.random() < 0.85 else size()), b  # mostly even divisions
    if operation == "percent":
        return rng.choice([5, 10, 15, 20, 25, 30, 40, 50, 75, rng.randint(1, 99)]), rng.choice([20, 40, 80, 200, size()])
    if operation == "power":
        return rng.randint(2, 12), rng.randint(2, 4)
    if operation == "square":
        return rng.randint(2, 99), 2
    if operation == "multiply":
        return size(), rng.choice([rng.randint(2, 12), rng.randint(2, 99)])
    a, b = size(), size()
    return (max(a, b), min(a, b)) if operation == "subtract" and rng.random() < 0.8 else (a, b)


def say_number(n: int, rng: random.Random, words_ok: bool = True) -> str:
    """As people write it: digits, digits with commas, or words (for numbers up to a hundred)."""
    if words_ok and n <= 100 and rng.random() < 0.25:
        return number_words(n)
    return f"{n:,}" if n >= 1000 and rng.random() < 0.2 else str(n)


def expression_chain(rng: random.Random) -> str:
    """Symbols with two operators and maybe parentheses, asked as they are: "(12 + 8) / 4"."""
    a, b, c = (rng.randint(1, 99) for _ in range(3))
    op1, op2 = rng.choice("+-*"), rng.choice("+-*/")
    if op2 == "/":
        c = rng.randint(2, 9)
    return f"({a} {op1} {b}) {op2} {c}" if rng.random() < 0.5 else f"{a} {op1} {b} {op2} {c}"


def draw(split: str, rng: random.Random) -> tuple[str, str, str, str]:
    """(template, question, calculator expression, answer sentence with {r}) of one random problem."""
    kind = rng.choices(["frame", "chain", "command", "word problem"], weights=[6, 1, 1.5, 2])[0]
    if kind == "chain":
        frame = chatty(rng.choice(held_out(FRAMES, split)), rng, split)
        expression = expression_chain(rng)
        return frame, frame.format(x=expression), expression, ANSWER
    if kind == "word problem":
        operation, template, sentence = rng.choice(held_out(WORD_PROBLEMS, split))
        template = chatty(template, rng, split)
        a, b = operands(operation, rng)
        values = dict(name=rng.choice(NAMES), thing=rng.choice(THINGS), a=say_number(a, rng, False),
                      b=say_number(b, rng, False))
        if "born in" in template:
            a, b = rng.randint(2000, 2030), rng.randint(1940, 1999)
            values.update(a=a, b=b)
        return (template, template.format(**values), OPERATIONS[operation][0].format(a=a, b=b),
                sentence.replace("{r}", "{{r}}").format(**values))
    if kind == "command":
        operation, template = rng.choice(held_out(COMMANDS, split))
        template = chatty(template, rng, split)
        a, b = operands(operation, rng)
        return (template, template.format(a=say_number(a, rng), b=say_number(b, rng)),
                OPERATIONS[operation][0].format(a=a, b=b), ANSWER)
    frame = chatty(rng.choice(held_out(FRAMES, split)), rng, split)
    operation = rng.choice(list(OPERATIONS))
    expression, sayings = OPERATIONS[operation]
    a, b = operands(operation, rng)
    said = rng.choice(sayings).format(a=say_number(a, rng), b=say_number(b, rng))
    return frame, frame.format(x=said), expression.format(a=a, b=b), ANSWER


class ArithmeticWithTool(GeneratedTask):
    name = "arithmetic"
    source = "generated by picochat/tasks/arithmetic.py"
    license = "MIT (picochat)"

    SIZES = {"train": 10_000, "eval": 500}

    def make(self, index: int) -> dict:
        for attempt in itertools.count():  # draw until the question is one of this split's
            rng = random.Random(f"{self.split}-{index}-{attempt}")
            template, question, expression, sentence = draw(self.split, rng)
            question = casual(question, rng)
            if is_eval_question(question) == (self.split == "eval"):
                break
        result = calculate(expression)  # the tool the model will call computes the reference too
        answer = tool_answer(expression, result, sentence.format(r=result))
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                "answer": result, "template": template}

    def score(self, example: dict, answer: str) -> bool:
        return final_number(answer) == final_number(example["answer"])


class ArithmeticFollowUp(ArithmeticWithTool):
    """Two turns: an arithmetic question of the split, then one about its result ("and what is that plus
    100?"), which the model finds in its own earlier calculator output, as the server and the web page send
    it back. The follow-ups are held out like the frames, so an eval conversation ends in a wording never
    trained on."""
    name = "arithmetic_follow_up"
    SIZES = {"train": 2_000, "eval": 200}

    def make(self, index: int) -> dict:
        rng = random.Random(f"follow_up-{self.split}-{index}")
        first = super().make(rng.randrange(ArithmeticWithTool.SIZES[self.split]))
        while not first["answer"].lstrip("-").isdigit() or len(first["answer"]) > 6:  # whole, not huge
            first = super().make(rng.randrange(ArithmeticWithTool.SIZES[self.split]))
        expression, template = rng.choice(held_out(FOLLOW_UPS, self.split))
        b = rng.choice([rng.randint(2, 12), rng.randint(2, 99), rng.randint(2, 99), rng.randint(100, 999), 100])
        expression = expression.format(r=first["answer"], b=b)
        question = casual(template.format(b=say_number(b, rng)), rng)
        result = calculate(expression)
        answer = tool_answer(expression, result, ANSWER.format(r=result))
        messages = first["messages"] + [{"role": "user", "content": question},
                                        {"role": "assistant", "content": answer}]
        return {"messages": messages, "answer": result, "template": template}
