"""The entry point `picochat <group> <command>`: command lookup, help, one-line user errors, tracebacks
for bugs.

    python -m pytest tests/test_cli.py
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from picochat import cli
from picochat.stages import STAGES
from picochat.train import TrainConfig
from helpers import error_line


# ---- the entry point ---------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["--help"], ["-h"], []])
def test_help_lists_every_command(argv, capsys):
    cli.main(argv)
    out = capsys.readouterr().out
    assert out.startswith("usage: picochat")
    for command in ("data prepare", "data download", "tokenizer train", "tokenizer eval", "train"):
        assert f"  {command} " in out


def test_command_help_lists_its_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["data", "prepare", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: picochat data prepare")
    assert "--source" in out and "--force" in out and "--max-bytes" in out


def test_train_help_shows_each_stage_preset_after_the_default(capsys):
    """What `--stage base` really runs (rows of 256) is in the help, not only TrainConfig's 512."""
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    base, rl = STAGES["base"]().preset, STAGES["rl"]().preset
    assert f"(default: {TrainConfig.max_seq_len}; base: {base['max_seq_len']})" in text
    assert (f"(default: {TrainConfig.device_batch_size}; base: {base['device_batch_size']}; "
            f"rl: {rl['device_batch_size']})") in text


@pytest.mark.parametrize("argv", [["frobnicate"], ["tokenizer", "bake"], ["data", "--force"]])
def test_unknown_command(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    line = error_line(capsys)
    assert "unknown command" in line and "tokenizer train" in line


@pytest.mark.parametrize("argv, flag", [
    (["train", "--dtype", "float16"], "--dtype"),
    (["train", "--depth", "four"], "--depth"),
    (["data", "prepare", "--sauce", "offline"], "--sauce"),
])
def test_argparse_errors_are_one_line_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    line = error_line(capsys)
    assert flag in line and "--help" in line


def test_unknown_command_from_a_shell(tmp_path):
    env = {**os.environ, "PICOCHAT_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "picochat.cli", "frobnicate"], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("picochat: error: unknown command 'frobnicate'")
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_vocab_size_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PICOCHAT_HOME", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["tokenizer", "train", "--vocab-size", "10"])
    assert exit_info.value.code == 2
    line = error_line(capsys)
    assert "--vocab-size" in line and "10" in line
    assert not list(tmp_path.iterdir())  # nothing was written


def test_bad_train_flag_fails_before_loading_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PICOCHAT_HOME", str(tmp_path))  # no corpus, no tokenizer: validation comes first
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--device-batch-size", "0"])
    assert exit_info.value.code == 2
    assert "--device-batch-size" in error_line(capsys)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv, flag", [
    (["eval", "base", "--max-problems", "-1"], "--max-problems"), (["eval", "chat", "--max-problems", "-5"], "--max-problems"),
    (["eval", "chat", "--batch-size", "0"], "--batch-size"), (["train", "--stage", "rl", "--rl-samples", "0"], "--rl-samples")])
def test_bad_eval_and_rl_numbers_fail_before_loading_anything(argv, flag, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PICOCHAT_HOME", str(tmp_path))  # no checkpoint: the flag is checked first
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert flag in error_line(capsys)
    assert not list(tmp_path.iterdir())


def test_bad_prepare_flag(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PICOCHAT_HOME", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["data", "prepare", "--num-shards", "1"])
    assert exit_info.value.code == 2
    assert "--num-shards" in error_line(capsys)


@pytest.mark.parametrize("group", ["data", "tokenizer"])
@pytest.mark.parametrize("help_flag", [[], ["--help"], ["-h"]])
def test_group_help_lists_the_group_commands(group, help_flag, capsys):
    cli.main([group, *help_flag])
    out = capsys.readouterr().out
    listed = [line.split()[:2] for line in out.splitlines() if line.startswith("  ")]
    assert listed == [[g, c] for g, c in cli.COMMANDS if g == group and c is not None] and listed


@pytest.mark.parametrize("error", [ValueError("internal invariant broken"), KeyError("missing"),
                                   RuntimeError("bug")])
def test_a_bug_keeps_its_traceback(error, monkeypatch):
    """Only a UserError becomes one line; a ValueError from a bug must not look like a user mistake."""
    import picochat.train

    def broken(args):
        raise error
    monkeypatch.setattr(picochat.train, "run", broken)
    with pytest.raises(type(error)):
        cli.main(["train"])


def test_a_user_error_is_one_line(monkeypatch, capsys):
    import picochat.train
    from picochat.common import UserError

    def mistaken(args):
        raise UserError("--depth 0 is not a model")
    monkeypatch.setattr(picochat.train, "run", mistaken)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train"])
    assert exit_info.value.code == 2
    assert error_line(capsys) == "picochat: error: --depth 0 is not a model"
