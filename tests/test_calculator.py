"""The calculator tool: what it computes, and how it refuses hostile input quickly without raising.

    python -m pytest tests/test_calculator.py
"""

import time

import pytest

from picochat.calculator import calculate


@pytest.mark.parametrize("expression, expected", [
    ("12 * (3 + 4)", "84"), ("7 / 2", "3.5"), ("6 / 3", "2"), ("-5 // 2", "-3"), ("17 % 5", "2"),
    ("2 ** 10", "1024"), ("0.1 + 0.2", "0.3"), ("+3 - -4", "7"), ("'strawberry'.count('r')", "3"),
    ("'Hello'.lower()", "hello"), ("'ab' * 3", "ababab"), ("'a' + 'b'", "ab"), ("  1 + 1  ", "2"),
    ("'strawberry'[2]", "r"), ("'strawberry'[-1]", "y"), ("'strawberry'[::-1]", "yrrebwarts"), ("'hello'[1:3]", "el"),
    ("'hello'[:]", "hello"), ("'hello'[len('hello') - 2]", "l"), ("'-'.join('strawberry')", "s-t-r-a-w-b-e-r-r-y"),
    ("''.join('')", ""), ("len('strawberry')", "10"), ("len('')", "0"), ("'abc'[5:]", ""),
])
def test_arithmetic_and_string_methods(expression, expected):
    assert calculate(expression) == expected


@pytest.mark.parametrize("expression", [
    "9**9**9", "10**100000", "2.0**5000", "(" * 300 + "1" + ")" * 300, "1+" * 200 + "1", "-" * 100 + "1",
    "'a' * 10**9", "'x' * 10000 * 10000", "('a'*9000).replace('', 'b'*9000)", "__import__('os').system('ls')",
    "open('/etc/passwd').read()", "().__class__.__bases__", "[1, 2][0]", "x", "lambda: 1", "1/0", "(-8) ** 0.5",
    "1e308 * 10", "'abc'.format()", "True + 1", "f'{1}'", "1 if 1 else 2", "a := 1", "{1: 2}", "x" * 1000, "",
    "'abc'[1.5]", "'abc'[::0]", "'abc'['a']", "'abc'['a'.startswith('a')]", "'abc'[10]", "'abc'[-4]", "'abc'[1, 2]",
    "'abc'[10**1000]", "12[0]", "(1.5)[0:1]", "'abc'[0:1.5]", "len(12)", "len('a', 'b')", "len()", "len(s='a')",
    "len", "len(*'a')", "max('a')", "'-'.join(1)", "'-'.join('a', 'b')", "('x'*9000).join('y'*9000)",
    "'abc'.join", "'abc'.__len__()",
])
def test_hostile_or_bad_input_is_an_error_string_quickly(expression):
    start = time.perf_counter()
    result = calculate(expression)
    assert result.startswith("error: ")
    assert time.perf_counter() - start < 0.1


@pytest.mark.parametrize("expression, error", [
    ("'abc'[10]", "string index out of range"), ("'abc'[1.5]", "string indices must be integers"),
    ("'abc'[::0]", "slice step cannot be zero"), ("12[0]", "only strings can be indexed"),
    ("len(12)", "len() takes one string"), ("('x'*9000).join('y'*9000)", "string longer than 10000 characters"),
])
def test_string_errors_say_what_went_wrong(expression, error):
    assert calculate(expression) == f"error: {error}"
