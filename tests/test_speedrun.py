"""`speedrun.sh` (the GPU recipe) and `scripts/prepare_data.sh`, checked without a GPU: the dry run prints every
stage's command with its resolved settings, fewer GPUs make up the same total batch with gradient
accumulation (as train.py computes it), every printed `picochat` command and flag exists, bad input is one
line and exit 2, --help lists every knob the scripts read, finished stages are skipped and interrupted ones
resumed, and the task warm-up that prepare_data.sh runs works offline once the wheels are cached. The slow
test runs the whole recipe for real with SPEEDRUN_SMOKE=1: toy sizes, 2 CPU processes, no network.

    python -m pytest tests/test_speedrun.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers import flags_dict
from picochat.config import build
from picochat.train import TrainConfig, gradient_accumulation_steps, resolve_configs

ROOT = Path(__file__).parents[1]
SPEEDRUN = ROOT / "speedrun.sh"
PREPARE = ROOT / "scripts" / "prepare_data.sh"
RECIPE = ROOT / "scripts" / "recipe.sh"  # what the launch recipes share: speedrun.sh sources it


def knobs_read_by(script: Path) -> set[str]:
    """Environment variables the script (and scripts/recipe.sh, where it sources it) reads with a default:
    ${NAME:-...}, or recipe.sh's `defaults NAME=VALUE ...`."""
    text = script.read_text() + (RECIPE.read_text() if "scripts/recipe.sh" in script.read_text() else "")
    defaulted = re.findall(r"^\s*defaults ((?:.*\\\n)*.*)$", text, re.MULTILINE)
    return (set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):-", text)) - {"HOME"}) | set(
        re.findall(r"\b([A-Z][A-Z0-9_]*)=", " ".join(defaulted)))


def fake_nvidia_smi(directory: Path, gpus: int) -> Path:
    """A bin folder whose nvidia-smi lists `gpus` GPUs (none: it fails, as it does without a driver)."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = "".join(f'echo "GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i})"\n' for i in range(gpus))
    body = f'[ "$1" = -L ] || exit 9\n{lines}' if gpus else "exit 9\n"
    script = directory / "nvidia-smi"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return directory


def run_script(script: Path, *args: str, home: Path, tmp_path: Path, gpus: int = 0, timeout: float = 60,
               **env: str) -> subprocess.CompletedProcess:
    """bash SCRIPT args, with PICOCHAT_HOME=home, none of the user's knobs, and a fake nvidia-smi."""
    clean = {k: v for k, v in os.environ.items() if k not in knobs_read_by(SPEEDRUN) | knobs_read_by(PREPARE)}
    bin_dir = fake_nvidia_smi(tmp_path / f"bin-{gpus}", gpus)
    full_env = {**clean, "PICOCHAT_HOME": str(home), "PATH": f"{bin_dir}{os.pathsep}{clean['PATH']}", **env}
    return subprocess.run(["bash", str(script), *args], env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def dry_run(tmp_path: Path, *args: str, home: Path | None = None, gpus: int = 0, **env: str) -> str:
    result = run_script(SPEEDRUN, "--dry-run", *args, home=home or tmp_path / "home", tmp_path=tmp_path,
                        gpus=gpus, **env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def commands(output: str) -> list[list[str]]:
    """The printed commands ("+ ..." lines), split into words."""
    return [line[2:].split() for line in output.splitlines() if line.startswith("+ ")]


def picochat_argv(words: list[str]) -> list[str] | None:
    """The arguments of `picochat ...` or `torchrun ... -m picochat.cli ...`; None for other commands."""
    if words[0] == "picochat":
        return words[1:]
    if words[0] == "torchrun" and "picochat.cli" in words:
        return words[words.index("picochat.cli") + 1:]
    return None


def train_command(output: str, stage: str) -> list[str]:
    found = [words for words in commands(output) if words[0] == "torchrun" and "--stage" in words
             and words[words.index("--stage") + 1] == stage]
    assert len(found) == 1, output
    return found[0]


def batch_settings(output: str) -> dict[str, dict[str, int]]:
    """{"base": {"device_batch_size": 32, ..., "grad_accum": 1, ...}, ...} from the "<stage> batch:" lines."""
    settings = {}
    for stage, values in re.findall(r"^(\w+) batch: (.*)$", output, re.MULTILINE):
        settings[stage] = {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", values)}
    return settings


# ---- the dry run ---------------------------------------------------------------------------------------

def test_dry_run_prints_every_stage_and_runs_nothing(tmp_path):
    home = tmp_path / "home"
    out = dry_run(tmp_path, home=home)
    assert re.search(r"^settings: gpus=8 \(assumed: no GPU", out, re.MULTILINE)  # no GPU here: 8 assumed
    assert "depth=20" in out and "vocab_size=65536" in out and "num_shards=240" in out
    argvs = [argv for argv in map(picochat_argv, commands(out)) if argv]
    printed = [" ".join(argv) for argv in argvs]
    for expected in ("data prepare --source fineweb --num-shards 240", "tokenizer train --vocab-size 65536",
                     "train --stage base --depth 20", "eval base --source base", "train --stage mid",
                     "train --stage sft", "eval chat --source sft", "report"):
        assert any(command.startswith(expected) for command in printed), (expected, printed)
    base = train_command(out, "base")
    assert "--nproc_per_node=8" in base and "--max-seq-len" in base and "--total-batch-size" in base
    assert "--tie-embeddings false" in " ".join(base)  # nanochat's d20 shape, not the CPU model's tied default
    assert train_command(out, "rl") and any(command.startswith("eval chat --source rl") for command in printed)
    assert not home.exists()  # nothing ran: no home, no downloads


def test_fewer_gpus_accumulate_gradients_to_the_same_total_batch(tmp_path):
    one, eight = dry_run(tmp_path, "--gpus", "1"), dry_run(tmp_path, "--gpus=8")
    settings_one, settings_eight = batch_settings(one), batch_settings(eight)
    assert set(settings_one) == set(settings_eight) == {"base", "mid", "sft"}
    for stage in settings_one:
        a, b = settings_one[stage], settings_eight[stage]
        assert (a["gpus"], b["gpus"]) == (1, 8)
        assert a["total_batch_size"] == b["total_batch_size"]
        assert a["grad_accum"] == 8 * b["grad_accum"]
        for s in (a, b):
            assert s["device_batch_size"] * s["max_seq_len"] * s["gpus"] * s["grad_accum"] == s["total_batch_size"]
    # The printed accumulation is what train.py will use, given the flags the script passes to it.
    for out, settings in ((one, settings_one), (eight, settings_eight)):
        for stage, printed in settings.items():
            words = train_command(out, stage)
            assert f"--nproc_per_node={printed['gpus']}" in words
            config = build(TrainConfig, flags_dict(*picochat_argv(words)[1:]))
            assert gradient_accumulation_steps(config, printed["gpus"]) == printed["grad_accum"]


def test_gpus_are_detected_with_nvidia_smi(tmp_path):
    out = dry_run(tmp_path, gpus=2)
    assert re.search(r"^settings: gpus=2 \(all that nvidia-smi lists\)", out, re.MULTILINE)
    assert all(s["gpus"] == 2 and s["grad_accum"] == 4 for s in batch_settings(out).values())
    assert "--nproc_per_node=2" in train_command(out, "base")
    out = dry_run(tmp_path, gpus=2, NGPU="1")
    assert all(s["gpus"] == 1 for s in batch_settings(out).values())


def test_rl_runs_by_default_and_run_rl_0_skips_it(tmp_path):
    out = dry_run(tmp_path, RUN_RL="0")
    assert "rl: off (RUN_RL=0)" in out and "--source rl" not in out and "--stage rl" not in out


def stage_config(output: str, stage: str) -> SimpleNamespace:
    """The settings `picochat train` resolves (stage preset, then flags) from the dry run's command for `stage`:
    TrainConfig's and the stage's own (RL's RLConfig)."""
    flags = flags_dict(*picochat_argv(train_command(output, stage))[1:])
    config, _, resolved = resolve_configs(stage, flags, None)
    own = asdict(resolved.settings) if resolved.settings is not None else {}
    return SimpleNamespace(**asdict(config), **own)


def test_every_stage_has_an_explicit_length(tmp_path):
    """RL is given its steps and a sequence length that holds a prompt and its sampled answer, not left to
    20 tokens per parameter (~342,000 RL steps at d20) at the default 512; BASE_ITERATIONS replaces base's 20
    tokens per parameter."""
    out = dry_run(tmp_path)
    rl = stage_config(out, "rl")
    assert (rl.num_iterations, rl.max_seq_len) == (250, 384) and rl.max_seq_len > rl.rl_max_tokens
    assert (rl.device_batch_size, rl.rl_samples) == (8, 4)  # --help's "4 answers to 8 problems per GPU"
    assert stage_config(out, "base").target_param_data_ratio == 20
    assert "--num-iterations" not in train_command(out, "base")
    out = dry_run(tmp_path, RL_ITERATIONS="30", RL_MAX_SEQ_LEN="256", BASE_ITERATIONS="100")
    assert (stage_config(out, "rl").num_iterations, stage_config(out, "rl").max_seq_len) == (30, 256)
    assert stage_config(out, "base").num_iterations == 100 and "--target-param-data-ratio" not in out
    assert "steps: base 100, mid 500, sft 300, rl 30 (max_seq_len=256)" in out


def test_smoke_setting_runs_the_same_commands_on_cpu_processes(tmp_path):
    """SPEEDRUN_SMOKE=1 without a GPU: the recipe's commands with toy values, 2 torchrun processes on the CPU,
    the offline corpus and no chat data download; the user's knobs still win."""
    smoke, real = dry_run(tmp_path, SPEEDRUN_SMOKE="1"), dry_run(tmp_path)
    flag_names = lambda words: [word.split("=")[0] for word in words if word.startswith("--")]
    for stage in ("base", "mid", "sft", "rl"):
        words = train_command(smoke, stage)
        assert "--nproc_per_node=2" in words and words[words.index("--device") + 1] == "cpu"
        extra = ["--compile", "--rl-max-tokens", "--rl-eval-problems"]  # the smoke's TRAIN_FLAGS
        expected = flag_names(train_command(real, stage))
        if stage == "base":  # BASE_ITERATIONS: a step count instead of 20 tokens per parameter
            expected[expected.index("--target-param-data-ratio")] = "--num-iterations"
        assert flag_names(words) == expected + extra, stage
    evals = [words for words in commands(smoke) if words[:2] == ["picochat", "eval"]]
    assert len(evals) == 4 and all(words[words.index("--device") + 1] == "cpu" for words in evals)
    assert "+ picochat data prepare --source offline" in smoke and "chat data: skipped (CHAT_DATA=0)" in smoke
    assert "sees the GPUs" not in smoke and "gpus=2 (CPU processes" in smoke
    assert "depth=1" in smoke and "steps: base 10, mid 4, sft 4, rl 2" in smoke
    assert "depth=2" in dry_run(tmp_path, SPEEDRUN_SMOKE="1", DEPTH="2")


def test_wandb_run_turns_on_wandb_in_every_stage(tmp_path):
    out = dry_run(tmp_path, WANDB_RUN="d20-test")
    for stage in ("base", "mid", "sft"):
        assert "--wandb" in train_command(out, stage)
    assert "--wandb" not in train_command(dry_run(tmp_path, WANDB_RUN="dummy"), "base")


def test_every_printed_picochat_command_and_flag_exists(tmp_path):
    """Runs `picochat <command> --help` for each command the dry run prints (with every optional part on) and
    checks each flag, and each value of a flag with choices: a renamed flag breaks this test, not a GPU run."""
    home = tmp_path / "home"
    (home / "data" / "base").mkdir(parents=True)  # a smaller FineWeb corpus: the `data download` path
    (home / "data" / "base" / "manifest.json").write_text('{"source": "fineweb-edu", "shards": [{}, {}]}')
    out = dry_run(tmp_path, home=home, WANDB_RUN="check", TRAIN_FLAGS="--compile false")
    usage = subprocess.run([sys.executable, "-m", "picochat.cli", "--help"], capture_output=True, text=True).stdout
    invocations = []
    for argv in filter(None, map(picochat_argv, commands(out))):
        words = tuple(word for word in argv[:2] if not word.startswith("-"))
        if words == ("report",) and "  report " not in usage:
            continue  # `picochat report` lands soon; until then speedrun.sh skips it at run time
        invocations.append((words, argv[len(words):]))
    helps = {words: subprocess.Popen([sys.executable, "-m", "picochat.cli", *words, "--help"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for words in dict.fromkeys(words for words, _ in invocations)}  # all at once: each imports torch
    help_texts = {}
    for words, process in helps.items():
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, (words, stderr)
        help_texts[words] = stdout
    checked = 0
    for words, flags in invocations:
        known = set(re.findall(r"(?<![\w-])(--[a-z0-9][\w-]*)", help_texts[words]))
        for index, flag in enumerate(flags):
            if not flag.startswith("--"):
                continue
            assert flag in known, f"picochat {' '.join(words)} has no {flag}"
            choices = re.search(rf"{re.escape(flag)} \{{([^}}]*)\}}", help_texts[words])
            if choices:
                assert flags[index + 1] in choices.group(1).split(","), (words, flag, flags[index + 1])
            checked += 1
    assert {("data", "download"), ("tokenizer", "train"), ("train",), ("eval", "chat")} <= set(help_texts)
    assert checked > 30


# ---- bad input and help --------------------------------------------------------------------------------

@pytest.mark.parametrize("args, env, message", [
    (["--dry-run", "--fast"], {}, "unknown option '--fast'"),
    (["--dry-run", "--gpus"], {}, "--gpus needs a number"),
    (["--dry-run", "--gpus", "two"], {}, "positive whole number, got 'two'"),
    (["--dry-run", "--gpus", "3"], {}, "base: --total-batch-size 524288 must be a multiple of"),  # not 3 ways
    (["--dry-run"], {"DEPTH": "20.5"}, "base: argument --depth: invalid int value: '20.5'"),
    (["--dry-run"], {"EVAL_PROBLEMS": "-1"}, "picochat eval chat: --max-problems must be >= 0, got -1"),
    (["--dry-run"], {"SFT_TOTAL_BATCH_SIZE": "4096"}, "sft: --total-batch-size 4096 must be a multiple of"),
    (["--dry-run"], {"RL_ITERATIONS": "0"}, "rl: --stage rl needs a length"),
    (["--dry-run"], {"BASE_ITERATIONS": "lots"}, "base: argument --num-iterations: invalid int value: 'lots'"),
    (["--dry-run"], {"SPEEDRUN_SMOKE": "yes"}, "SPEEDRUN_SMOKE must be 0 or 1"),
    ([], {}, "no NVIDIA GPU here"),                                        # a real run needs a GPU
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, env, message):
    result = run_script(SPEEDRUN, *args, home=tmp_path / "home", tmp_path=tmp_path, **env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""  # refused before anything is printed or run
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("speedrun.sh: error: ") and message in lines[0], lines


def test_more_gpus_than_the_machine_has_is_refused(tmp_path):
    result = run_script(SPEEDRUN, "--gpus", "4", home=tmp_path / "home", tmp_path=tmp_path, gpus=2)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == "speedrun.sh: error: --gpus / NGPU is 4 but nvidia-smi lists only 2 GPU(s)"


def test_prepare_data_rejects_bad_input(tmp_path):
    for args, env in ((["--now"], {}), (["--dry-run"], {"NUM_SHARDS": "1"}), (["--dry-run"], {"CHAT_DATA": "yes"}),
                      (["--dry-run"], {"DATA_SOURCE": "hub"})):
        result = run_script(PREPARE, *args, home=tmp_path / "home", tmp_path=tmp_path, **env)
        assert result.returncode == 2 and result.stdout == ""
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("prepare_data.sh: error: ")


@pytest.mark.parametrize("script", [SPEEDRUN, PREPARE])
def test_help_lists_every_knob_the_script_reads(tmp_path, script):
    result = run_script(script, "--help", home=tmp_path / "home", tmp_path=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("usage: ")
    knobs = knobs_read_by(script) | {"HF_ENDPOINT", "HF_TOKEN"}
    if script == SPEEDRUN:
        knobs |= {"DEPTH", "NUM_SHARDS", "NGPU", "DEVICE_BATCH_SIZE", "PICOCHAT_HOME", "WANDB_RUN", "RUN_RL",
                  "FORCE_BASE", "FORCE_MID", "FORCE_SFT"}
    missing = [knob for knob in sorted(knobs) if not re.search(rf"\b{knob}\b", result.stdout)]
    assert not missing, missing


# ---- idempotence: what a re-run skips, resumes or starts ----------------------------------------------

def touch(path: Path, age_seconds: float, text: str = "{}") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    stamp = time.time() - age_seconds
    os.utime(path, (stamp, stamp))


def test_rerun_decisions_are_picochats(tmp_path):
    """Whether a stage or an eval is done, interrupted or stale is decided by picochat's --if-needed (tested
    in tests/test_train.py and tests/test_rerun.py); the recipe passes it, and FORCE_<STAGE>=1 or
    FORCE_EVAL=1 leave it out."""
    def evals(out: str) -> list[list[str]]:
        return [words for words in commands(out) if words[:2] == ["picochat", "eval"]]

    out = dry_run(tmp_path)
    assert all("--if-needed" in train_command(out, stage) for stage in ("base", "mid", "sft", "rl"))
    assert len(evals(out)) == 4 and all("--if-needed" in words for words in evals(out))
    out = dry_run(tmp_path, FORCE_MID="1", FORCE_EVAL="1")
    assert "--if-needed" not in train_command(out, "mid") and "--if-needed" in train_command(out, "sft")
    assert not any("--if-needed" in words for words in evals(out))


def test_prepare_data_reuses_what_is_there(tmp_path):
    home = tmp_path / "home"
    corpus = home / "data" / "base"
    touch(corpus / "shard_00000.parquet", 600)
    touch(corpus / "manifest.json", 600, '{"source": "fineweb-edu", "shards": [{}, {}, {}]}')
    touch(home / "tokenizer" / "tokenizer.json", 500, '{"vocab_size": 65536}')
    touch(home / "tokenizer" / "eval.json", 400)
    result = run_script(PREPARE, "--dry-run", home=home, tmp_path=tmp_path, NUM_SHARDS="8")
    out = result.stdout
    assert result.returncode == 0, result.stderr
    assert "+ picochat data download --num-shards 8" in out  # 3 shards on disk: only the rest are fetched
    assert "tokenizer: vocab 65536 already trained" in out and "tokenizer: already evaluated" in out

    result = run_script(PREPARE, "--dry-run", home=home, tmp_path=tmp_path, NUM_SHARDS="3", VOCAB_SIZE="32768")
    assert "+ picochat data prepare --source fineweb --num-shards 3" in result.stdout
    assert "+ picochat tokenizer train --vocab-size 32768" in result.stdout  # another vocabulary: train again


def warm_up_snippet() -> str:
    """The Python that prepare_data.sh feeds to `python -` to build every task once."""
    match = re.search(r"<<'PY'\n(.*?)\nPY\n", PREPARE.read_text(), re.DOTALL)
    assert match, "prepare_data.sh has no <<'PY' block"
    return match.group(1)


def test_task_warm_up_builds_every_task_from_cached_wheels_offline(fresh_home, tmp_path):
    maths_cache = fresh_home / "data" / "mathematics"
    shutil.rmtree(maths_cache)  # generated again by the warm-up, from the cached wheel
    env = {**os.environ, "PIP_NO_INDEX": "1", "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    result = subprocess.run([sys.executable, "-", str(fresh_home)], input=warm_up_snippet(), env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^train: .*chitchat \d", result.stdout, re.MULTILINE)
    assert re.search(r"^evals: .*gsm8k \d.*humaneval \d", result.stdout, re.MULTILINE)
    assert re.search(r"^CORE: hellaswag \d", result.stdout, re.MULTILINE)
    assert list(maths_cache.glob("problems-*.jsonl"))


# ---- the smoke run: every stage for real, at toy size ---------------------------------------------------

def step_seconds(output: str) -> dict[str, int]:
    """Wall seconds of each "== [XhYYmZZs] name" step of speedrun.sh, up to the next one."""
    stamps = [(name, 3600 * int(h) + 60 * int(m) + int(s))
              for h, m, s, name in re.findall(r"^== \[(\d+)h(\d+)m(\d+)s\] (.*)$", output, re.MULTILINE)]
    return {name: end - start for (name, start), (_, end) in zip(stamps, stamps[1:])}


@pytest.mark.slow
def test_smoke_runs_every_stage_under_torchrun_on_cpu(fresh_home, tmp_path):
    """SPEEDRUN_SMOKE=1: the recipe's own commands, toy-sized, under torchrun with 2 CPU processes, from
    data to report, offline: the tiny corpus and the fake packages. Each stage stops at its step count, each
    eval and the report are written, and the report shows every stage."""
    # Every host but PyPI's is unreachable: setup_env.sh may reinstall picochat when pyproject.toml changed.
    blocked = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
               "NO_PROXY": "pypi.org,files.pythonhosted.org"}
    result = run_script(SPEEDRUN, home=fresh_home, tmp_path=tmp_path, timeout=600, SPEEDRUN_SMOKE="1", **blocked)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    print("smoke wall seconds per step:", step_seconds(result.stdout))
    assert "data: corpus already in" in out and "chat data: skipped (CHAT_DATA=0)" in out
    assert len(re.findall(r"^stage \w+ on cpu .*, 2 process\(es\)", out, re.MULTILINE)) == 4, out
    steps = {"base": 10, "mid": 4, "sft": 4, "rl": 2}  # the smoke's BASE/MID/SFT/RL_ITERATIONS
    for stage, count in steps.items():
        assert json.loads((fresh_home / "checkpoints" / stage / "done.json").read_text())["step"] == count
    evals = fresh_home / "evals"
    assert json.loads((evals / "base_core.json").read_text())["stage"] == "base"
    for stage in ("mid", "sft", "rl"):
        results = json.loads((evals / f"{stage}_chat.json").read_text())["results"]
        assert results and all(r["problems"] == 2 for r in results), stage
    report = (fresh_home / "report" / "report.md").read_text()
    assert all(f"| {stage} | done |" in report for stage in steps), report
