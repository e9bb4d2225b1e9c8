"""`picochat <group> <command> [--flags]`: the one entry point the scripts call.

Each command is a (config dataclass, run function) pair in its own module, imported only when used, so
`picochat --help` is instant. Flags come from the dataclass (picochat/config.py). Bad input prints one
line and exits 2 (a UserError); any other exception is a bug in picochat and keeps its traceback.

    picochat data prepare --source offline
    picochat tokenizer train --vocab-size 4096
    picochat train --stage base --depth 3
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Callable

from picochat import config as cfg
from picochat.common import UserError, fail
from picochat.runtime import end_torchrun_worker

# (group, command) -> (module, config classes, run function, help). `train` has no sub-command.
COMMANDS: dict[tuple[str, str | None], tuple[str, str, str, str]] = {
    ("data", "prepare"): ("picochat.data.prepare", "PrepareConfig", "run",
                          "build the pretraining corpus (FineWeb-Edu download or offline packages)"),
    ("data", "download"): ("picochat.data.download", "DownloadConfig", "run",
                           "download FineWeb-Edu parquet shards from Hugging Face"),
    ("data", "download-chat"): ("picochat.tasks.online", "ChatDownloadConfig", "run",
                                "download SmolTalk, MMLU auxiliary-train and GSM8K-train for mid/SFT"),
    ("tokenizer", "train"): ("picochat.tokenizer_commands", "TokenizerTrainConfig", "train_command",
                             "train the BPE tokenizer on the corpus"),
    ("tokenizer", "eval"): ("picochat.tokenizer_commands", "TokenizerEvalConfig", "eval_command",
                            "compression (bytes/token) on the val shard, vs GPT-2/GPT-4 when available"),
    ("train", None): ("picochat.train", "TrainConfig OptimConfig RLConfig", "run",
                      "train a model: --stage base (mid and sft follow)"),
    ("eval", "base"): ("picochat.evals.core", "BaseEvalConfig LoadConfig RerunConfig", "run",
                       "a base model's val bpb and CORE score (few-shot HellaSwag, PIQA, ARC, ...)"),
    ("eval", "chat"): ("picochat.evals.chat", "ChatEvalConfig LoadConfig RerunConfig", "run",
                       "a chat model on ARC, MMLU, GSM8K, HumanEval, SpellingBee, arithmetic (and follow-ups), "
                       "spelling, identity; ChatCORE"),
    ("report", None): ("picochat.report", "ReportConfig", "run",
                       "report.md with plots, from the stages' and evals' JSON files (re-runs nothing)"),
    ("export", None): ("picochat.hf", "ExportConfig", "export",
                       "a checkpoint as a Hugging Face transformers model directory (--push-to-hub uploads it)"),
    ("import", None): ("picochat.hf", "ImportConfig", "import_model",
                       "a Hugging Face nanochat model directory as a picochat checkpoint"),
    ("chat", None): ("picochat.chat_cli", "ChatConfig LoadConfig", "run", "talk to a trained model in the terminal"),
    ("serve", None): ("picochat.server", "ServeConfig LoadConfig", "run",
                      "the web chat page and an OpenAI-compatible API on 127.0.0.1"),
}


def _usage(group: str | None = None) -> str:
    """All commands, or those of one group (`picochat data --help`)."""
    name = f"picochat {group}" if group else "picochat"
    lines = [f"usage: {name} <command> [--flags]   ({name} <command> --help for its flags)", ""]
    for (command_group, command), (*_, help_text) in COMMANDS.items():
        if group in (None, command_group):
            lines.append(f"  {' '.join(filter(None, (command_group, command))):<20} {help_text}")
    return "\n".join(lines)


def _find_command(argv: list[str]) -> tuple[tuple[str, str | None], list[str]]:
    if (argv[0], None) in COMMANDS:
        return (argv[0], None), argv[1:]
    if len(argv) >= 2 and (argv[0], argv[1]) in COMMANDS:
        return (argv[0], argv[1]), argv[2:]
    known = sorted({" ".join(filter(None, key)) for key in COMMANDS})
    fail(f"unknown command {' '.join(argv[:2])!r}; choose one of: {', '.join(known)}")


def command_parser(argv: list[str]) -> tuple[Callable, argparse.ArgumentParser, list[str], list[type]]:
    """For argv: the command's run function, its flag parser, the arguments after the command's name, and
    its config classes (scripts/check_commands.py checks a recipe's commands with the same parser)."""
    key, rest = _find_command(argv)
    module_name, class_names, function_name, help_text = COMMANDS[key]
    module = importlib.import_module(module_name)
    parser = OneLineErrorParser(prog="picochat " + " ".join(filter(None, key)), description=help_text)
    configs = [getattr(module, name) for name in class_names.split()]  # a command may combine several parts
    presets = getattr(module, "FLAG_PRESETS", None)  # e.g. each stage's, shown in `picochat train --help`
    for config in configs:
        cfg.add_arguments(parser, config, presets)
    return getattr(module, function_name), parser, rest, configs


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, except that a bad flag is one line naming it, not the whole usage block."""

    def error(self, message: str) -> None:
        fail(f"{message} (see `{self.prog} --help`)")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return run_command(argv)
    try:  # a torchrun worker
        run_command(argv)
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    end_torchrun_worker(code)


def run_command(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    groups = {group for group, command in COMMANDS if command is not None}
    if argv[0] in groups and (len(argv) == 1 or argv[1] in ("-h", "--help")):
        print(_usage(argv[0]))
        return
    command, parser, rest, _ = command_parser(argv)
    args = parser.parse_args(rest)
    try:
        command(args)
    except UserError as error:  # anything else is a bug and keeps its traceback
        fail(str(error))
    except KeyboardInterrupt:
        fail("interrupted")


if __name__ == "__main__":
    main()
