"""The config system: dataclass fields become typed flags; defaults <- preset <- flags; validation.

    python -m pytest tests/test_config.py
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

import pytest

from picochat.config import add_arguments, build, describe, option


@dataclass
class Toy:
    size: int = option(4, "how big")
    rate: float = option(0.5, "how fast")
    name: str = option("a", "which one", choices=("a", "b", "c"))
    flag: bool = option(True, "a switch")
    resume: str = option("", "resume from PATH, or the newest", const="latest")
    limit: int | None = option(None, "optional cap")

    def __post_init__(self):
        if self.size < 1:
            raise ValueError(f"--size must be >= 1, got {self.size}")


def parse(argv: list[str], *classes) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="toy")
    for cls in classes or (Toy,):
        add_arguments(parser, cls)
    return parser.parse_args(argv)


# ---- config ------------------------------------------------------------------------------------------

def test_defaults():
    assert build(Toy, parse([])) == Toy()
    assert vars(parse([])) == {}  # unset flags stay absent, so they cannot mask a preset
    assert build(Toy) == Toy()


def test_preset_overrides_defaults_and_flags_override_preset():
    preset = {"size": 8, "rate": 0.25, "not_a_field": 1}  # other config parts' keys are ignored
    assert build(Toy, parse([]), preset=preset) == Toy(size=8, rate=0.25)
    assert build(Toy, parse(["--size", "16"]), preset=preset) == Toy(size=16, rate=0.25)
    assert build(Toy, {"size": 2}, preset=preset) == Toy(size=2, rate=0.25)
    assert build(Toy, parse(["--size", "4"]), preset=preset).size == 4  # a flag equal to the default still wins


def test_flags_are_typed():
    config = build(Toy, parse(["--size", "7", "--rate", "1e-3", "--name", "c", "--limit", "9"]))
    assert (config.size, config.rate, config.name, config.limit) == (7, 1e-3, "c", 9)
    assert type(config.size) is int and type(config.rate) is float and type(config.limit) is int


@pytest.mark.parametrize("text, value", [("true", True), ("1", True), ("yes", True), ("ON", True),
                                         ("false", False), ("0", False), ("no", False), ("Off", False)])
def test_bool_flags(text, value):
    assert build(Toy, parse(["--flag", text])).flag is value


@pytest.mark.parametrize("argv", [["--flag", "maybe"], ["--name", "z"], ["--size", "many"], ["--nope", "1"]])
def test_bad_flag_values_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_bare_bool_flag_means_true():
    assert build(Toy, parse(["--flag", "false", "--flag"])).flag is True


def test_const_flag():
    assert build(Toy, parse(["--resume"])).resume == "latest"
    assert build(Toy, parse(["--resume", "ckpt/step_10"])).resume == "ckpt/step_10"
    assert build(Toy, parse([])).resume == ""


def test_train_resume_flag_given_bare_means_latest():
    from picochat.optim import OptimConfig
    from picochat.train import TrainConfig
    args = parse(["--resume", "--depth", "2", "--matrix-lr", "0.05"], TrainConfig, OptimConfig)
    train, optim = build(TrainConfig, args), build(OptimConfig, args)
    assert (train.resume, train.depth, optim.matrix_lr) == ("latest", 2, 0.05)
    assert optim.embedding_lr == OptimConfig().embedding_lr


def test_validation_names_the_flag():
    with pytest.raises(ValueError, match="--size"):
        build(Toy, parse(["--size", "0"]))
    with pytest.raises(ValueError, match="--size"):
        build(Toy, {}, preset={"size": -1})


def test_help_shows_each_flag_with_its_default():
    parser = argparse.ArgumentParser(prog="toy")
    add_arguments(parser, Toy)
    text = " ".join(parser.format_help().split())
    for field in fields(Toy):
        assert "--" + field.name.replace("_", "-") in text
    assert "how big (default: 4)" in text and "{a,b,c}" in text


def test_describe_lists_every_field():
    config = Toy(size=11, name="b", resume="latest")
    lines = describe(config).splitlines()
    assert len(lines) == len(fields(Toy))
    values = {line.split("=")[0].strip(): line.split("=", 1)[1].strip() for line in lines}
    assert values == {"size": "11", "rate": "0.5", "name": "b", "flag": "True", "resume": "latest",
                      "limit": "None"}
    assert len({line.index("=") for line in lines}) == 1  # aligned
