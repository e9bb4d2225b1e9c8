"""The learner docs stay true to the code: every path, command, flag, function and knob they name exists.

Checked in the six local-CPU docs, README.md and docs/*.md:
- relative paths: markdown links, paths in code under picochat/, scripts/, tests/, docs/ or benchmarks/,
  and root files named alone in a code span (`README.md`) or run by a shell (`bash speedrun.sh`);
- `picochat <command> [<sub>]` in code is a command of picochat.cli.COMMANDS, and each flag after it is
  one of that command's flags (parsers built from the config dataclasses, as cli.py builds them);
  flags in TRAIN_FLAGS="..." are `picochat train` flags; a backticked flag alone is some command's flag;
- `module.function` names (`train.training_loop`, `engine.Engine.generate`) exist in picochat/;
- NAME=value settings given to scripts/local_cpu_train.sh appear in that script (or setup_env.sh, which it
  sources), and any backticked NAME in capitals appears in some script or module.
Fenced blocks marked ```text hold output quoted from a run and are not checked.

    python -m pytest -q tests/test_docs.py
"""

from __future__ import annotations

import ast
import functools
import importlib
import itertools
import re
from pathlib import Path

import pytest

from picochat import cli
from picochat import config as cfg

REPO = Path(__file__).resolve().parents[1]
LEARNER_DOCS = ("START_HERE_LOCAL_CPU.md", "LOCAL_CPU_QUICKSTART.md", "LOCAL_CPU_TRAINING.md",
                "LOCAL_CPU_ANALYSIS_GUIDE.md", "LOCAL_CPU_README.md", "TRAINING_COMPARISON.md")
DOCS = sorted({*LEARNER_DOCS, "README.md", *(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))})
CPU_SCRIPT_FILES = ("scripts/local_cpu_train.sh", "scripts/setup_env.sh")  # the script and what it sources

PATH_ROOTS = "picochat|scripts|tests|docs|benchmarks"
# A repo path: anything under one of the roots; a bare file name (`README.md`, `speedrun.sh`) only as a
# whole code span or as the script a shell runs, since bare names in code are often artifacts (report.md).
ROOTED_PATH = re.compile(rf"(?<![\w./$~-])((?:{PATH_ROOTS})/[\w./{{}},*<>-]*)")
BARE_FILE = re.compile(r"^[\w-]+\.(?:md|sh|slurm|toml)$")
RUN_SCRIPT = re.compile(r"(?:^|\s)(?:bash|sh|sbatch|source|\.)\s+([\w-]+\.(?:sh|slurm))\b")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^[ \t]*```(\w*)[^\n]*\n(.*?)^[ \t]*```", re.S | re.M)  # also fences indented in lists
SPAN = re.compile(r"`([^`\n]+)`")
FLAG = re.compile(r"^--?[A-Za-z][\w-]*")
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9]*_[A-Z0-9_]+$")
ASSIGNMENT = re.compile(r"\b([A-Z][A-Z0-9_]*)=(\"[^\"]*\"|'[^']*'|\S*)")
DOTTED = re.compile(r"^(?:picochat\.)?([a-z_]+(?:\.[A-Za-z_]\w*)+)(?:\(\))?$")
NOT_ATTRIBUTES = {"json", "jsonl", "tiktoken", "pt", "md", "py", "sh", "html", "txt", "parquet", "png"}


# ----------------------------------------------------------------------------------------------------------
# What the code offers

@functools.cache
def command_flags(key: tuple[str, str | None]) -> frozenset[str]:
    """The flags of one command, from a parser built exactly as cli.run_command builds it."""
    module_name, class_names, _, help_text = cli.COMMANDS[key]
    module = importlib.import_module(module_name)
    parser = cli.OneLineErrorParser(prog="picochat", description=help_text)
    for class_name in class_names.split():
        cfg.add_arguments(parser, getattr(module, class_name))
    return frozenset(parser._option_string_actions)  # argparse has no public list of a parser's flags


@functools.cache
def all_flags() -> frozenset[str]:
    return frozenset().union(*(command_flags(key) for key in cli.COMMANDS))


@functools.cache
def cpu_script_text() -> str:
    return "".join((REPO / path).read_text() for path in CPU_SCRIPT_FILES)


@functools.cache
def names_in_code() -> frozenset[str]:
    """Every capitalised word in the scripts and modules: where an environment variable must show up."""
    files = [*REPO.glob("scripts/*"), *REPO.glob("*.sh"), *REPO.glob("picochat/**/*.py")]
    return frozenset(word for path in files if path.is_file()
                     for word in re.findall(r"\b[A-Z][A-Z0-9_]+\b", path.read_text()))


@functools.cache
def module_names(relative: str) -> frozenset[str]:
    """Top-level names of a picochat module, and Class.member for its classes' members."""
    names = set()
    for node in ast.parse((REPO / relative).read_text()).body:
        names.update(defined_names(node))
        if isinstance(node, ast.ClassDef):
            names.update(f"{node.name}.{name}" for member in node.body for name in defined_names(member))
    return frozenset(names)


def defined_names(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [target.id for target in node.targets if isinstance(target, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


# ----------------------------------------------------------------------------------------------------------
# What a doc names

def split_doc(text: str) -> tuple[str, list[str]]:
    """(prose, code snippets): fenced blocks (not ```text ones) with `\\` continuations joined, one
    snippet per line, and the inline code spans of the prose."""
    snippets = []
    for language, body in FENCE.findall(text):
        if language != "text":
            snippets += body.replace("\\\n", " ").splitlines()
    prose = FENCE.sub("", text)
    return prose, snippets + SPAN.findall(prose)


def path_problems(prose: str, snippets: list[str], doc_dir: Path) -> list[str]:
    problems = []
    for target in LINK.findall(SPAN.sub("", prose)):
        if not re.match(r"[a-z]+:|#", target) and not (doc_dir / target.split("#")[0]).exists():
            problems.append(f"link to a missing file: {target}")
    for snippet in snippets:
        bare = [snippet.strip()] if BARE_FILE.match(snippet.strip()) else []
        for path in ROOTED_PATH.findall(snippet) + RUN_SCRIPT.findall(snippet) + bare:
            if not all(path_exists(candidate.rstrip(".,:;"), doc_dir) for candidate in expand_braces(path)):
                problems.append(f"missing path: {path}")
    return problems


def expand_braces(path: str) -> list[str]:
    """`picochat/evals/{core,chat}.py` -> both paths."""
    parts = re.split(r"\{([^{}]*)\}", path)
    choices = [part.split(",") if index % 2 else [part] for index, part in enumerate(parts)]
    return ["".join(combination) for combination in itertools.product(*choices)]


def path_exists(path: str, doc_dir: Path) -> bool:
    """A path with a placeholder (`<stage>`, `*`, `...`) only needs the folder before it to exist."""
    literal = re.split(r"<|\*|\.\.\.", path)[0]
    if literal != path:
        literal = literal.rpartition("/")[0]
    base = doc_dir if "/" not in path else REPO  # a bare name is a sibling, like a link
    return (base / literal).exists()


def command_problems(snippets: list[str]) -> list[str]:
    problems = []
    for snippet in snippets:
        for segment in re.split(r"&&|\|\||[;|]|\s#", snippet):
            problems += segment_problems(segment)
    return problems


def segment_problems(segment: str) -> list[str]:
    """Problems in one shell command: its script settings, then a picochat command and its flags."""
    problems = setting_problems(segment)
    rest = picochat_arguments(ASSIGNMENT.sub("", segment).split())
    if not rest or rest[0].startswith("<"):  # not picochat, or `picochat <command> --help`: a placeholder
        return problems
    key = command_key(rest)
    if key is None:
        return problems + [f"no such command: picochat {' '.join(rest[:2])}"]
    flags = command_flags(key) if key[0] else frozenset({"-h", "--help"})
    return problems + [f"picochat {' '.join(filter(None, key))} has no {flag}"
                       for flag in (FLAG.match(word).group() for word in rest if FLAG.match(word))
                       if flag not in flags]


def setting_problems(segment: str) -> list[str]:
    """NAME=value before a command: TRAIN_FLAGS holds train flags; local_cpu_train.sh must know each NAME."""
    problems = []
    for name, value in ASSIGNMENT.findall(segment):
        if name == "TRAIN_FLAGS":
            problems += [f"picochat train has no {flag}" for flag in re.findall(r"--[\w-]+", value)
                         if flag not in command_flags(("train", None))]
        if "local_cpu_train.sh" in segment and not re.search(rf"\b{name}\b", cpu_script_text()):
            problems.append(f"local_cpu_train.sh has no knob {name}")
    return problems


def picochat_arguments(words: list[str]) -> list[str]:
    """The words after `picochat` where the command is picochat (its first word, or `-m picochat.cli`);
    [] otherwise, so prose that mentions picochat in a code span is not taken for a command."""
    words = [word.strip("\"'") for word in words]
    while words and words[0] in ("nohup", "time", "exec"):
        words = words[1:]
    if words[:1] == ["picochat"]:
        rest = words[1:]
    elif "-m" in words and words[words.index("-m") + 1:][:1] == ["picochat.cli"]:
        rest = words[words.index("-m") + 2:]
    else:
        return []
    return [word.rstrip(",.:)") for word in rest]


def command_key(words: list[str]) -> tuple[str, str | None] | None:
    """The COMMANDS key the words name; ("", None) for `picochat --help` or a group alone."""
    groups = {group for group, command in cli.COMMANDS if command}
    if words[0].startswith("-"):
        return "", None
    if (words[0], None) in cli.COMMANDS:
        return words[0], None
    if len(words) > 1 and (words[0], words[1]) in cli.COMMANDS:
        return words[0], words[1]
    if words[0] in groups and (len(words) == 1 or words[1].startswith("-")):
        return "", None
    return None


def name_problems(snippets: list[str]) -> list[str]:
    """Backticked flags alone, environment variables and module.function references."""
    problems = []
    for span in snippets:
        span = span.strip()
        flag = FLAG.match(span)
        if flag and flag.group() not in all_flags():
            problems.append(f"no picochat command has {flag.group()}")
        name = span.split("=")[0]
        if ENV_NAME.match(name) and name not in names_in_code():
            problems.append(f"{name} is not read by any script or module")
        dotted = DOTTED.match(span)
        if dotted:
            problems += reference_problems(dotted.group(1).split("."))
    return problems


def reference_problems(parts: list[str]) -> list[str]:
    """`train.training_loop`, `evals.core.run`, `engine.Engine.generate`: the longest module prefix,
    then the names inside it. Names that are not module references (`done.json`) are ignored."""
    for cut in range(len(parts) - 1, 0, -1):
        folder = Path("picochat", *parts[:cut])
        module = folder / "__init__.py" if (REPO / folder).is_dir() else folder.with_suffix(".py")
        attribute = ".".join(parts[cut:])
        if (REPO / module).is_file():
            if parts[-1] in NOT_ATTRIBUTES or attribute in module_names(str(module)):
                return []
            return [f"{module} has no {attribute}"]
    return []


def problems_in(text: str, doc_dir: Path = REPO) -> list[str]:
    prose, snippets = split_doc(text)
    spans = SPAN.findall(prose)
    return path_problems(prose, snippets, doc_dir) + command_problems(snippets) + name_problems(spans)


# ----------------------------------------------------------------------------------------------------------
# Tests

@pytest.mark.parametrize("doc", DOCS)
def test_doc_names_only_what_exists(doc):
    path = REPO / doc
    assert path.is_file(), f"{doc} is missing"
    assert problems_in(path.read_text(), path.parent) == []


@pytest.mark.parametrize("text, problem", [
    ("```bash\npicochat train --stage base --no-such-flag 3\n```", "picochat train has no --no-such-flag"),
    ("Run `picochat eval chat --max-problem 5`.", "picochat eval chat has no --max-problem"),
    ("Run `picochat trian --depth 4`.", "no such command: picochat trian --depth"),
    ("Run `picochat data fetch`.", "no such command: picochat data fetch"),
    ("`TRAIN_FLAGS=\"--device-batch-size 8 --batch 2\" bash scripts/local_cpu_train.sh`",
     "picochat train has no --batch"),
    ("```bash\nLEARNING_SPEED=2 bash scripts/local_cpu_train.sh\n```", "local_cpu_train.sh has no knob LEARNING_SPEED"),
    ("Set `LEARNING_SPEED`.", "LEARNING_SPEED is not read by any script or module"),
    ("Pass `--warp-speed`.", "no picochat command has --warp-speed"),
    ("See [the guide](docs/NO_SUCH_GUIDE.md).", "link to a missing file: docs/NO_SUCH_GUIDE.md"),
    ("Read `picochat/no_such_module.py`.", "missing path: picochat/no_such_module.py"),
    ("Read `picochat/evals/{core,nope}.py`.", "missing path: picochat/evals/{core,nope}.py"),
    ("```bash\nbash scripts/no_such_script.sh\n```", "missing path: scripts/no_such_script.sh"),
    ("```bash\nbash no_such_run.sh --dry-run\n```", "missing path: no_such_run.sh"),
    ("Read `NO_SUCH_GUIDE.md`.", "missing path: NO_SUCH_GUIDE.md"),
    ("The loop is `train.training_loops`.", "picochat/train.py has no training_loops"),
    ("Generation is `engine.Engine.generator`.", "picochat/engine.py has no Engine.generator"),
])
def test_a_wrong_name_is_reported(text, problem):
    assert problem in problems_in(text)


def test_right_names_pass():
    text = """See [the evals](docs/EVALS_AND_DATA.md) and `picochat/evals/{core,chat}.py`.
```bash
TRAIN_FLAGS="--device-batch-size 8" BASE_MINUTES=4 bash scripts/local_cpu_train.sh
torchrun --standalone --nproc_per_node=2 -m picochat.cli train --depth 20 \\
    --device-batch-size 32   # more after the continuation
picochat chat -p "Why is the sky blue?" --temperature 0 && picochat --help
picochat data --help
```
```text
== [0m00s] picochat local CPU pipeline: output is not checked --nope
```
The model said `I am picochat, a small chat model trained with the picochat code, on one computer.`
```
  report.py   writes report.md, an artifact, not a file of the repository
```
Read `train.training_loop`, `engine.Engine.generate`, `evals.core.run`, `done.json`, `$PICOCHAT_HOME/x.md`,
`checkpoints/<stage>/metrics.jsonl`, `picochat/tasks/<name>.py`, `--eval-tokens`, `PICOCHAT_HOME`.
"""
    assert problems_in(text) == []
