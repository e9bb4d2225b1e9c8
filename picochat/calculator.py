"""The calculator tool the model may call: a small, safe evaluator of arithmetic and a few string operations.

When the assistant writes <|python_start|> expression <|python_end|>, the engine calls calculate() and
forces <|output_start|> result <|output_end|> into the sequence. The expression is parsed with `ast` and
walked by hand: numbers, strings, + - * / // % ** and parentheses, unary + and -, a few string methods
("strawberry".count("r"), "-".join("abc")), len("text"), and indexing or slicing a string with integers
("text"[-1], "text"[::-1]). No names but len, no other calls, attributes or subscripts, no eval/exec.
Sizes are bounded before anything big is computed, so hostile input fails fast with an error string.

    calculate("12 * (3 + 4)")        # "84"
    calculate("'banana'.count('a')") # "3"
    calculate("'strawberry'[::-1]")  # "yrrebwarts"
"""

from __future__ import annotations

import ast
import math
import operator
import time

MAX_CHARS = 500          # of the expression
MAX_DEPTH = 40           # of the syntax tree: deeper nesting is refused before it is walked
MAX_INT_BITS = 4_000     # ~1,200 decimal digits: bigger intermediate or final integers are refused
MAX_STRING = 10_000      # characters of any intermediate or final string
TIME_LIMIT = 0.05        # seconds: checked at every node, a backstop behind the size bounds

BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
          ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
# str methods that only read their string: (minimum, maximum) number of arguments
STRING_METHODS = {"count": (1, 1), "find": (1, 1), "startswith": (1, 1), "endswith": (1, 1),
                  "upper": (0, 0), "lower": (0, 0), "strip": (0, 0), "replace": (2, 2), "join": (1, 1)}
# the length of what a method that grows its string would build, so it is refused before it is built
GROWN_LENGTH = {"replace": lambda text, old, new: len(text) + (len(text) + 1) * len(new),
                "join": lambda separator, items: len(items) + len(separator) * max(len(items) - 1, 0)}


class CalculatorError(ValueError):
    pass


def calculate(expression: str) -> str:
    """The value of `expression` as text, or "error: ..." when it is not allowed or fails. Never raises."""
    try:
        if len(expression) > MAX_CHARS:
            raise CalculatorError(f"expression longer than {MAX_CHARS} characters")
        tree = ast.parse(expression.strip(), mode="eval")
        check_depth(tree)
        return format_value(evaluate(tree.body, time.monotonic() + TIME_LIMIT))
    except (CalculatorError, SyntaxError, ArithmeticError, ValueError, TypeError, IndexError,
            RecursionError, MemoryError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        return f"error: {message}"


def check_depth(tree: ast.AST) -> None:
    """Refuse deep nesting up front: walking it would recurse that deep."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise CalculatorError(f"expression nested deeper than {MAX_DEPTH}")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def evaluate(node: ast.AST, deadline: float):
    if time.monotonic() > deadline:
        raise CalculatorError("took too long")
    if isinstance(node, ast.Constant) and type(node.value) in (int, float, str):
        return check_size(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        return UNARY[type(node.op)](number(evaluate(node.operand, deadline)))
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        left, right = evaluate(node.left, deadline), evaluate(node.right, deadline)
        check_operands(type(node.op), left, right)
        return check_size(BINARY[type(node.op)](left, right))
    if isinstance(node, ast.Subscript):
        return subscript(node, deadline)
    if isinstance(node, ast.Call):
        return call(node, deadline)
    raise CalculatorError(f"{type(node).__name__} is not allowed")


def subscript(node: ast.Subscript, deadline: float) -> str:
    """Only "text"[index] and "text"[start:stop:step], with integers; Python's own errors for the rest."""
    text = evaluate(node.value, deadline)
    if not isinstance(text, str):
        raise CalculatorError("only strings can be indexed")
    if isinstance(node.slice, ast.Slice):
        parts = (node.slice.lower, node.slice.upper, node.slice.step)
        return text[slice(*(None if part is None else integer(evaluate(part, deadline)) for part in parts))]
    return text[integer(evaluate(node.slice, deadline))]


def call(node: ast.Call, deadline: float):
    """Only len("text"), or "text".method(args) with a method from STRING_METHODS and string arguments."""
    func = node.func
    if isinstance(func, ast.Name) and func.id == "len" and not node.keywords:
        text = evaluate(node.args[0], deadline) if len(node.args) == 1 else None
        if not isinstance(text, str):
            raise CalculatorError("len() takes one string")
        return len(text)
    if not isinstance(func, ast.Attribute) or func.attr not in STRING_METHODS or node.keywords:
        raise CalculatorError("only string methods (" + ", ".join(STRING_METHODS) + ") and len() work")
    target = evaluate(func.value, deadline)
    if not isinstance(target, str):
        raise CalculatorError(f".{func.attr}() needs a string")
    low, high = STRING_METHODS[func.attr]
    if not low <= len(node.args) <= high:
        raise CalculatorError(f".{func.attr}() takes {low} argument(s)")
    args = [evaluate(arg, deadline) for arg in node.args]
    if not all(isinstance(arg, str) for arg in args):
        raise CalculatorError(f".{func.attr}() takes string arguments")
    if func.attr in GROWN_LENGTH and GROWN_LENGTH[func.attr](target, *args) > MAX_STRING:
        raise CalculatorError(f"string longer than {MAX_STRING} characters")
    return check_size(getattr(target, func.attr)(*args))


def number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CalculatorError("arithmetic needs numbers")
    return value


def integer(value) -> int:
    if type(value) is not int:  # not a float, a string, or a bool ('abc'.startswith('a') is True)
        raise CalculatorError("string indices must be integers")
    return value


def check_operands(op: type, left, right) -> None:
    """Refuse, before computing it, anything whose result could not fit the size bounds."""
    if op is ast.Add and isinstance(left, str) and isinstance(right, str):
        return  # concatenation: the result is checked afterwards, and is at most twice a checked size
    if op is ast.Mult and isinstance(left, str) != isinstance(right, str):
        text, times = (left, right) if isinstance(left, str) else (right, left)
        if not isinstance(times, int) or len(text) * max(times, 0) > MAX_STRING:
            raise CalculatorError(f"string longer than {MAX_STRING} characters")
        return
    number(left), number(right)
    if op is ast.Pow and abs(left) > 1 and right > 0 and right * math.log2(abs(left)) > MAX_INT_BITS:
        raise CalculatorError("result too large")
    if op is ast.Mult and isinstance(left, int) and isinstance(right, int) \
            and left.bit_length() + right.bit_length() > MAX_INT_BITS:
        raise CalculatorError("result too large")


def check_size(value):
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise CalculatorError("result too large")
    if isinstance(value, str) and len(value) > MAX_STRING:
        raise CalculatorError(f"string longer than {MAX_STRING} characters")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("result is not a finite number")
    if isinstance(value, complex):  # (-8) ** 0.5
        raise CalculatorError("result is not a real number")
    return value


def format_value(value) -> str:
    """Integers as they are; floats to 12 significant digits, whole ones without '.0' (6/3 -> 2)."""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.12g}"
    return str(value)
