"""The config-derived CLI: flag precedence, one-line errors, `picochat data prepare` offline, atomic files."""

from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
from dataclasses import dataclass, fields

import pytest

from picochat import cli
from picochat.common import atomic_path, atomic_write_text
from picochat.config import add_arguments, build, describe, option
from picochat.data import prepare
from picochat.data.shards import (MANIFEST, Document, corpus_dir, iter_texts, list_shards, read_manifest,
                                   write_corpus)


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


def error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("picochat: error: ")
    return lines[0]


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


@pytest.mark.parametrize("argv", [["frobnicate"], ["tokenizer"], ["tokenizer", "bake"], ["data", "--force"]])
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


def test_bad_prepare_flag(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PICOCHAT_HOME", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["data", "prepare", "--num-shards", "1"])
    assert exit_info.value.code == 2
    assert "--num-shards" in error_line(capsys)


# ---- `picochat data prepare` without the network -----------------------------------------------------

@pytest.fixture
def offline(monkeypatch, tmp_path, corpus_documents):
    """PICOCHAT_HOME in tmp, a fake offline builder that records its calls, and no network at all."""
    calls = []

    def fake_build(out_dir, cache_dir, max_bytes=None, log=print):
        calls.append({"out_dir": out_dir, "cache_dir": cache_dir, "max_bytes": max_bytes})
        return write_corpus(corpus_documents[:60], out_dir, shard_bytes=5000, description={"source": "offline"})

    def no_network(*args, **kwargs):
        raise AssertionError("the tests must not touch the network")

    monkeypatch.setenv("PICOCHAT_HOME", str(tmp_path))
    monkeypatch.setattr(prepare, "build_offline_corpus", fake_build)
    monkeypatch.setattr(prepare, "download_shards", no_network)
    monkeypatch.setattr(prepare, "network_reachable", no_network)
    return calls


def test_prepare_offline_writes_the_corpus(offline, tmp_path, capsys):
    cli.main(["data", "prepare", "--source", "offline"])
    directory = corpus_dir(tmp_path)
    manifest = read_manifest(directory)
    shards = list_shards(directory)
    assert len(offline) == 1
    assert offline[0]["out_dir"] == directory and offline[0]["max_bytes"] is None
    assert offline[0]["cache_dir"] == tmp_path / "data" / "packages"
    assert manifest["documents"] == 60 and len(shards) == len(manifest["shards"]) >= 3
    assert (f"data: offline corpus in {directory}: {len(shards)} shards, 60 documents, "
            f"{manifest['bytes']:,} bytes of text") in capsys.readouterr().out


@pytest.mark.parametrize("source", ["offline", "auto"])
def test_prepare_again_does_nothing(offline, tmp_path, capsys, source):
    cli.main(["data", "prepare", "--source", "offline"])
    before = {p: p.stat().st_mtime_ns for p in corpus_dir(tmp_path).iterdir()}
    capsys.readouterr()
    cli.main(["data", "prepare", "--source", source])
    out = capsys.readouterr().out
    assert "already" in out and "--force" in out
    assert len(offline) == 1
    assert {p: p.stat().st_mtime_ns for p in corpus_dir(tmp_path).iterdir()} == before


@pytest.mark.parametrize("force", [["--force", "true"], ["--force"]])
def test_prepare_force_rebuilds(offline, tmp_path, capsys, force):
    cli.main(["data", "prepare", "--source", "offline"])
    cli.main(["data", "prepare", "--source", "offline", *force, "--max-bytes", "5000"])
    assert len(offline) == 2 and offline[1]["max_bytes"] == 5000
    assert "already" not in capsys.readouterr().out
    assert read_manifest(corpus_dir(tmp_path))["documents"] == 60


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_prepare_repairs_a_damaged_corpus(offline, tmp_path, capsys, damage):
    cli.main(["data", "prepare", "--source", "offline"])
    directory = corpus_dir(tmp_path)
    victim = list_shards(directory)[1]
    if damage == "delete":
        victim.unlink()
    else:
        victim.write_bytes(victim.read_bytes()[:100])
    capsys.readouterr()
    cli.main(["data", "prepare"])  # auto: keeps the offline source and never probes the network
    out = capsys.readouterr().out
    assert f"1 shard(s) missing or damaged ({victim.name}); repairing the offline corpus" in out
    assert len(offline) == 2
    assert sum(1 for _ in iter_texts(list_shards(directory))) == 60


def test_prepare_other_source_clears_the_old_corpus_first(offline, tmp_path, monkeypatch):
    cli.main(["data", "prepare", "--source", "offline"])
    directory = corpus_dir(tmp_path)
    downloaded = [Document(f"Downloaded page {i}.", "fake", "CC0") for i in range(10)]
    seen = []

    def fake_download(indices, out_dir, base_url, workers=4):
        seen.append(sorted(p.name for p in out_dir.iterdir() if p.name.startswith("shard_") or p.name == MANIFEST))
        write_corpus(downloaded, out_dir, description={"source": "fineweb-edu"})

    monkeypatch.setattr(prepare, "download_shards", fake_download)
    cli.main(["data", "prepare", "--source", "fineweb", "--num-shards", "3"])
    assert seen == [[]]  # no offline shard was left to mix with the downloaded ones
    assert read_manifest(directory)["source"] == "fineweb-edu"
    assert sorted(iter_texts(list_shards(directory))) == sorted(d.text for d in downloaded)
    assert len(offline) == 1


def test_prepare_auto_falls_back_to_offline(offline, tmp_path, monkeypatch, capsys):
    probed = []
    monkeypatch.setattr(prepare, "network_reachable", lambda url: probed.append(url) or False)
    cli.main(["data", "prepare"])
    out = capsys.readouterr().out
    assert probed == [prepare.FINEWEB_URL]
    assert "unreachable" in out and "building the offline corpus instead" in out
    assert "data: offline corpus in" in out
    assert len(offline) == 1
    assert len(list_shards(corpus_dir(tmp_path))) >= 2


# ---- atomic files ------------------------------------------------------------------------------------

def test_atomic_path_failure_leaves_nothing(tmp_path):
    final = tmp_path / "sub" / "artifact.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            assert tmp.parent == final.parent and tmp.name.startswith(".artifact.bin.")
            tmp.write_bytes(b"half of it")
            raise RuntimeError("crash mid-write")
    assert not final.exists()
    assert list(final.parent.iterdir()) == []


def test_atomic_path_failure_keeps_the_old_file(tmp_path):
    final = tmp_path / "artifact.txt"
    final.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(final) as tmp:
            tmp.write_text("new but unfinished")
            raise KeyboardInterrupt
    assert final.read_text() == "old"
    assert list(tmp_path.iterdir()) == [final]


def test_atomic_path_success(tmp_path):
    final = tmp_path / "deep" / "er" / "artifact.txt"
    with atomic_path(final) as tmp:
        tmp.write_text("done")
        assert not final.exists()  # nothing shows until the block finishes
    assert final.read_text() == "done"
    assert stat.S_IMODE(final.stat().st_mode) == 0o644
    assert list(final.parent.iterdir()) == [final]
    atomic_write_text(final, "replaced")
    assert final.read_text() == "replaced" and list(final.parent.iterdir()) == [final]
