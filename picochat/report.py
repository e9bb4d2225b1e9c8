"""`picochat report`: the run's report card, report.md with PNG plots, built only from files the stages wrote.

Nothing is re-run. The corpus manifest, the tokenizer's files, each stage's done.json, metrics.jsonl and
newest checkpoint (its settings only, memory-mapped), and the evals' JSON become one Markdown page in
$PICOCHAT_HOME/report/, with the plots beside it. A stage that did not run says "not run"; a file that
cannot be read is named in one line and the rest of the report is still written.

    picochat report --gpu-hour-price 2.5
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from picochat.checkpoint import checkpoint_dir, list_checkpoints, load_checkpoint
from picochat.common import UserError, atomic_path, atomic_write_text, picochat_home
from picochat.config import build, option, require_at_least
from picochat.stages import STAGES

COLORS = {"base": "tab:blue", "mid": "tab:orange", "sft": "tab:green", "rl": "tab:red"}
# evals/<stage>_<kind>.json -> (label in the table, key of its summary score, the score's name)
EVAL_KINDS = {"core": ("CORE", "core", "CORE"), "chat": ("chat", "chatcore", "ChatCORE")}
PLOT_CAPTIONS = {"loss": "train loss and val bpb", "lr": "LR schedule", "speed": "throughput and MFU",
                 "evals": "eval accuracy per task and stage"}


@dataclass
class ReportConfig:
    home: str = option("", "artifact root (default: $PICOCHAT_HOME or ~/.cache/picochat)")
    gpu_hour_price: float = option(3.0, "assumed USD per GPU-hour, for the cost estimate of GPU stages")

    def __post_init__(self):
        require_at_least(self, 0, ("gpu_hour_price",))


def run(args) -> Path:
    config = build(ReportConfig, args)
    home = picochat_home(config.home or None)
    out_dir = home / "report"
    files = Files(home)
    stages = [read_stage(files, name) for name in STAGES]
    plots = make_plots(stages, out_dir)
    sections = [system_section(), data_section(files), tokenizer_section(files),
                stages_section(stages, config.gpu_hour_price, plots), evals_section(stages, plots),
                wall_time_section(stages, files)]
    text = "\n\n".join([header(home, stages, files.problems), *sections]) + "\n"
    path = out_dir / "report.md"
    atomic_write_text(path, text)
    for problem in files.problems:
        print(f"warning: {problem}")
    print(f"report: {path} ({len(plots)} plots)")
    return path


# ----------------------------------------------------------------------------------------------------------
# Reading the artifacts: a missing file is None (or empty), an unreadable one also leaves a problem line

class Files:
    def __init__(self, home: Path):
        self.home, self.problems, self.read = home, [], {}

    def problem(self, relative: str, what: str) -> None:
        self.problems.append(f"{relative}: {what}; left out of this report")

    def json(self, relative: str) -> dict | None:
        """Read once: a second section asking for the same file must not report its problem twice."""
        if relative not in self.read:
            self.read[relative] = self._read_json(relative)
        return self.read[relative]

    def _read_json(self, relative: str) -> dict | None:
        path = self.home / relative
        if not path.exists():
            return None
        try:
            value = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            self.problem(relative, f"unreadable ({error})")
            return None
        if not isinstance(value, dict):
            self.problem(relative, "not a JSON object")
            return None
        return value

    def absent(self, relative: str, what_to_do: str) -> str:
        """Why a file's section is empty: missing (and what makes it), or unreadable (named at the top)."""
        if (self.home / relative).exists():
            return "Unreadable: see the files named at the top."
        return f"No {relative}: {what_to_do}."

    def jsonl(self, relative: str) -> list[dict]:
        path = self.home / relative
        if not path.exists():
            return []
        rows, bad = [], 0
        for line in path.read_text(errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if isinstance(row, dict):
                rows.append(row)
            else:
                bad += 1
        if bad:  # a kill -9 mid-write tears the last line; anything more is damage
            self.problems.append(f"{relative}: {bad} unreadable line(s) skipped")
        return rows

    def checkpoint_settings(self, stage: str, done: dict | None) -> dict | None:
        """Settings of the stage's final checkpoint (or its newest): memory-mapped, so no weights are read."""
        directory = checkpoint_dir(self.home, stage)
        paths = list_checkpoints(directory)
        if not paths:
            return None
        final = directory / f"step_{done['step']:06d}.pt" if done and isinstance(done.get("step"), int) else None
        path = final if final in paths else paths[-1]
        try:
            checkpoint = load_checkpoint(path, mmap=True)
        except UserError as error:
            self.problems.append(f"{error}; its settings are left out of this report")
            return None
        rng = checkpoint.get("rng") or {}
        config = checkpoint.get("config") or {}
        device = "cuda" if rng.get("cuda") is not None else config.get("device", "cpu").replace("auto", "cpu")
        return {"config": config, "optim_config": checkpoint.get("optim_config") or {},
                "model": checkpoint["model_config"], "world_size": len(checkpoint.get("loaders") or [None]),
                "params": sum(tensor.numel() for tensor in checkpoint["model"].values()), "device": device}


@dataclass
class StageRun:
    name: str
    done: dict | None = None                               # done.json: the finished run's final state
    steps: list[dict] = field(default_factory=list)        # metrics rows of optimizer steps
    val: list[dict] = field(default_factory=list)          # metrics rows of val bpb evaluations
    settings: dict | None = None                           # from its checkpoint (Files.checkpoint_settings)
    evals: dict[str, dict] = field(default_factory=dict)   # "core" / "chat" -> evals/<stage>_<kind>.json

    @property
    def status(self) -> str:
        if self.done is not None:
            return "done"
        if self.steps:
            return f"interrupted at step {self.steps[-1]['step']}"
        return "not run"

    @property
    def final(self) -> dict:
        """The last step's values, overridden by done.json where the run finished."""
        return {**(self.steps[-1] if self.steps else {}), **(self.done or {})}

    @property
    def val_bpb(self) -> float | None:
        value = self.final.get("val_bpb")
        return value if is_number(value) else (self.val[-1]["val_bpb"] if self.val else None)

    def median(self, key: str) -> float | None:
        values = [row[key] for row in self.steps if is_number(row.get(key))]
        return statistics.median(values) if values else None

    def seconds(self) -> dict[str, float]:
        """Measured seconds: training steps, val bpb evals during training, task evals afterwards."""
        training = self.final.get("train_seconds")
        return {"training": training if is_number(training) else 0.0,
                "val": sum(row["eval_seconds"] for row in self.val if is_number(row.get("eval_seconds"))),
                "evals": sum(result["seconds"] for kind in self.evals for result in eval_results(self.evals[kind])
                             if is_number(result.get("seconds")))}


def read_stage(files: Files, name: str) -> StageRun:
    folder = f"checkpoints/{name}"
    rows = files.jsonl(f"{folder}/metrics.jsonl")
    done = files.json(f"{folder}/done.json")
    evals = {kind: files.json(f"evals/{name}_{kind}.json") for kind in EVAL_KINDS}
    return StageRun(name, done,
                    steps=[r for r in rows if is_number(r.get("step")) and is_number(r.get("loss"))],
                    val=[r for r in rows if is_number(r.get("step")) and is_number(r.get("val_bpb"))],
                    settings=files.checkpoint_settings(name, done),
                    evals={kind: value for kind, value in evals.items() if value is not None})


def eval_results(report: dict | None) -> list[dict]:
    """The per-task results of an evals JSON that have a task name and an accuracy."""
    results = (report or {}).get("results")
    return [r for r in results if isinstance(r, dict) and isinstance(r.get("task"), str)
            and is_number(r.get("accuracy"))] if isinstance(results, list) else []


# ----------------------------------------------------------------------------------------------------------
# Formatting

def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def part(mapping: dict, key: str) -> dict:
    """mapping[key] where it is a JSON object, else {}: a hand-edited file must not crash the report."""
    value = mapping.get(key)
    return value if isinstance(value, dict) else {}


def fmt(value, spec: str) -> str:
    return format(value, spec) if is_number(value) else "-"


def duration(seconds) -> str:
    if not is_number(seconds):
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> str:
    """A Markdown table: the first text_columns left-aligned, the others right-aligned (numbers)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * text_columns + "---:|" * (len(header) - text_columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def images(plots: dict[str, str], names: tuple[str, ...]) -> str:
    """Markdown links to those of the named plots that were drawn."""
    return "\n\n".join(f"![{PLOT_CAPTIONS[name]}]({plots[name]})" for name in names if name in plots)


# ----------------------------------------------------------------------------------------------------------
# Sections

def header(home: Path, stages: list[StageRun], problems: list[str]) -> str:
    lines = ["# picochat report card", "",
             f"Built by `picochat report` on {time.strftime('%Y-%m-%d %H:%M %Z')} from the files in `{home}`; "
             "nothing was re-run.", "",
             "Stages: " + ", ".join(f"{s.name} {s.status}" for s in stages) + "."]
    if all(s.status == "not run" and not s.evals for s in stages):
        lines += ["", "Nothing has run in this home yet: no stage has metrics, a checkpoint or evals. "
                      "Start with `bash scripts/local_cpu_train.sh`."]
    if problems:
        lines += ["", "Files that could not be read:", *(f"- {problem}" for problem in problems)]
    return "\n".join(lines)


def system_section() -> str:
    """The machine that wrote the report (the one that trained, when both are the same)."""
    facts = {"CPU": cpu_model(), "cores": str(os.cpu_count() or "unknown"), "memory": memory_total(),
             "GPU": gpu_names(), "torch": torch.__version__, "python": platform.python_version(),
             "picochat commit": git_commit(Path(__file__).resolve().parent.parent),
             "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    return "## System\n\n" + table(["", "this machine"], [[key, value] for key, value in facts.items()], 2)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux
    return platform.processor() or "unknown"


def memory_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass  # not Linux
    return "unknown"


def gpu_names() -> str:
    if not torch.cuda.is_available():
        return "none"
    names = [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]
    return ", ".join(f"{names.count(name)} x {name}" for name in dict.fromkeys(names))


def git_commit(directory: Path) -> str:
    """The commit of the checkout at `directory`, "+ uncommitted changes" when dirty; "unknown" outside git."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=30)
    try:
        head, status = git("rev-parse", "HEAD"), git("status", "--porcelain")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if head.returncode or status.returncode:
        return "unknown"
    return head.stdout.strip() + (" + uncommitted changes" if status.stdout.strip() else " (clean)")


def data_section(files: Files) -> str:
    manifest = files.json("data/base/manifest.json")
    if manifest is None:
        return "## Data\n\n" + files.absent("data/base/manifest.json", "`picochat data prepare` builds the corpus")
    shards = manifest.get("shards") if isinstance(manifest.get("shards"), list) else []
    size = manifest.get("bytes")
    facts = [["source", str(manifest.get("source", "-"))],
             ["packages", ", ".join(map(str, manifest.get("packages") or [])) or "-"],
             ["documents", fmt(manifest.get("documents"), ",")],
             ["text", f"{size / 1e6:,.1f} MB" if is_number(size) else "-"],
             ["shards", f"{len(shards)} (the last one is the validation split)" if shards else "-"]]
    if manifest.get("base_url"):
        facts.append(["downloaded from", str(manifest["base_url"])])
    text = "## Data\n\n" + table(["", "pretraining corpus"], facts, 2)
    sources = part(manifest, "sources")
    rows = [[name, str(s.get("license", "-")), fmt(s.get("documents"), ","), fmt(s.get("bytes"), ",")]
            for name, s in sources.items() if isinstance(s, dict)]
    return text + ("\n\n" + table(["source", "licence", "documents", "bytes"], rows, 2) if rows else "")


def tokenizer_section(files: Files) -> str:
    meta, evaluation = files.json("tokenizer/tokenizer.json"), files.json("tokenizer/eval.json")
    if meta is None:
        return "## Tokenizer\n\n" + files.absent("tokenizer/tokenizer.json", "`picochat tokenizer train` makes it")
    rows = [["vocabulary", fmt(meta.get("vocab_size"), ",")],
            ["special tokens", str(len(part(meta, "special_tokens")))],
            ["training time", duration(meta.get("train_seconds"))]]
    if evaluation is None:
        note = "\n\n" + files.absent("tokenizer/eval.json", "`picochat tokenizer eval` measures its compression")
        return "## Tokenizer\n\n" + table(["", "BPE"], rows, 2) + note
    rows += [[f"bytes/token on the val split ({name})", fmt(ratio, ".3f")]
             for name, ratio in part(evaluation, "bytes_per_token").items()]
    rows.append(["corpus tokens", fmt(part(evaluation, "corpus").get("tokens"), ",")])
    return "## Tokenizer\n\n" + table(["", "BPE"], rows, 2)


def stages_section(stages: list[StageRun], gpu_hour_price: float, plots: dict[str, str]) -> str:
    rows = []
    for s in stages:
        f, devices = s.final, f"{s.settings['device']} x {s.settings['world_size']}" if s.settings else "-"
        memory = f"{f['peak_rss_mb']:,} MB" if is_number(f.get("peak_rss_mb")) else "-"
        rows.append([s.name, s.status, fmt(f.get("step"), ","), fmt(f.get("tokens"), ","),
                     duration(f.get("train_seconds")), fmt(s.val_bpb, ".4f"), fmt(f.get("pretrain_val_bpb"), ".4f"),
                     fmt(s.median("tok_per_s"), ",.0f"), fmt(s.median("mfu"), ".1%"), memory, devices])
    text = "## Stages\n\n" + table(["stage", "status", "steps", "tokens", "training", "val bpb", "pretraining val bpb",
                                     "tok/s", "MFU", "peak RSS", "device x processes"], rows, 2)
    text += ("\n\ntok/s and MFU are medians over the step rows of metrics.jsonl; MFU is against the matmul peak "
             "of the same dtype (measured at start-up on a CPU, the datasheet's on a known GPU). Each stage's "
             "val bpb is on its own validation data; pretraining val bpb, measured once at the end of each stage, "
             "is on the same val shard of the pretraining corpus for every stage, so a rise after mid-training or "
             "SFT means base skill was lost. RL's tokens are the ones it ran: those it sampled (a forward "
             "pass each) plus the non-padding tokens of its updates, not its batch shape.")
    text += "\n\n" + cost_line(stages, gpu_hour_price) + "\n\n" + settings_text(stages)
    return text + "\n\n" + (images(plots, ("loss", "lr", "speed")) or "No training metrics to plot yet.")


def cost_line(stages: list[StageRun], gpu_hour_price: float) -> str:
    gpu_stages = [s for s in stages if s.settings and s.settings["device"] == "cuda"]
    if not gpu_stages:
        return "No stage ran on a GPU: no cost estimate."
    gpu_hours = sum(s.settings["world_size"] * sum(s.seconds().values()) / 3600 for s in gpu_stages)
    return (f"Estimated GPU cost: ${gpu_hours * gpu_hour_price:,.2f} = {gpu_hours:,.2f} GPU-hours (GPUs x measured "
            f"training and eval time of {', '.join(s.name for s in gpu_stages)}) x ${gpu_hour_price:,.2f} per "
            "GPU-hour, an assumed price (`--gpu-hour-price`); start-up and checkpoint writes are not counted.")


def settings_text(stages: list[StageRun]) -> str:
    """The model and batch of each stage, then its whole resolved config (as the checkpoint saved it)."""
    ran = [s for s in stages if s.settings]
    if not ran:
        return "No stage has a readable checkpoint: its settings are unknown."
    rows, details = [], []
    for s in ran:
        model, config, f = s.settings["model"], s.settings["config"], s.final
        per_step = f["tokens"] / f["step"] if is_number(f.get("tokens")) and f.get("step") else None
        rows.append([s.name, fmt(s.settings["params"], ","), f"{model.get('n_layer')} x {model.get('n_embd')}",
                     f"{model.get('n_head')} ({model.get('n_kv_head')})", fmt(model.get("vocab_size"), ","),
                     fmt(config.get("max_seq_len", model.get("sequence_len")), ","),  # the stage's rows
                     fmt(per_step, ",.0f"), str(config.get("dtype", "-")), run_length(config)])
        settings = {**config, **s.settings["optim_config"]}
        width = max(map(len, settings), default=0)
        lines = "\n".join(f"{name:<{width}} = {value}" for name, value in settings.items())
        details.append(f"<details><summary>{s.name}: resolved config</summary>\n\n```\n{lines}\n```\n</details>")
    return "\n\n".join([table(["stage", "parameters", "layers x width", "heads (kv)", "vocab", "seq len",
                               "tokens/step", "dtype", "length"], rows), *details])


def run_length(config: dict) -> str:
    """What decided how long the stage trained: the first one set wins, as in train.py."""
    if config.get("num_iterations"):
        return f"{config['num_iterations']:,} iterations"
    if config.get("time_budget"):
        return f"{config['time_budget']:g} min budget"
    return f"{config['target_param_data_ratio']:g} tokens/param" if config.get("target_param_data_ratio") else "-"


def evals_section(stages: list[StageRun], plots: dict[str, str]) -> str:
    rows = []
    for kind, (label, score_key, score_name) in EVAL_KINDS.items():
        tasks = list(dict.fromkeys(r["task"] for s in stages for r in eval_results(s.evals.get(kind))))
        scored = set().union(*[s.evals[kind].get(f"{score_key}_tasks", tasks) for s in stages if s.evals.get(kind)])
        for task in [task for task in tasks if task in scored]:
            rows.append([label, task] + [accuracy_cell(s.evals.get(kind), task) for s in stages])
        if tasks:
            rows.append([label, f"**{score_name}**"] + [fmt((s.evals.get(kind) or {}).get(score_key), ".4f")
                                                        for s in stages])
        for task in [task for task in tasks if task not in scored]:  # reported, but not part of the score
            rows.append([label, f"{task} (outside {score_name})"] + [accuracy_cell(s.evals.get(kind), task)
                                                                      for s in stages])
    if not rows:
        return ("## Evals\n\nNo evals yet: `picochat eval base` writes evals/base_core.json, `picochat eval chat` "
                "evals/<stage>_chat.json.")
    header_row = ["eval", "task"] + [s.name.upper() for s in stages]
    text = "## Evals\n\n" + table(header_row, rows, 2)
    text += ("\n\nAccuracy +- its standard error. CORE and ChatCORE are means of accuracies centred against "
             "guessing (0 is chance, 1 is perfect).\n\n" + "\n".join(eval_sources(stages)))
    return text + "\n\n" + images(plots, ("evals",))


def accuracy_cell(report: dict | None, task: str) -> str:
    for result in eval_results(report):
        if result["task"] == task:
            stderr = result.get("stderr")
            return f"{result['accuracy']:.1%}" + (f" +- {stderr:.1%}" if is_number(stderr) else "")
    return "-"


def eval_sources(stages: list[StageRun]) -> list[str]:
    """Where each column came from, and a warning when an eval is older than its stage's final step."""
    lines = []
    for s in stages:
        for kind, report in s.evals.items():
            results = eval_results(report)
            problems = sorted({r["problems"] for r in results if is_number(r.get("problems"))})
            line = (f"- {s.name.upper()} {EVAL_KINDS[kind][0]}: evals/{s.name}_{kind}.json, checkpoint step "
                    f"{report.get('step', '?')}, {'/'.join(map(str, problems)) or '?'} problems per task")
            available = [f"{r['task']} {r['available']:,}" for r in results if is_number(r.get("available"))]
            if available:
                line += f" (of {', '.join(available)})"
            final_step = (s.done or {}).get("step")
            if is_number(final_step) and report.get("step") != final_step:
                line += f" (stale: the stage has since trained to step {final_step})"
            if report.get("sandbox"):
                line += f"; HumanEval's programs ran behind: {report['sandbox']}"
            lines.append(line)
    return lines


def wall_time_section(stages: list[StageRun], files: Files) -> str:
    rows, total = [], 0.0
    meta = files.json("tokenizer/tokenizer.json") or {}
    if is_number(meta.get("train_seconds")):
        rows.append(["tokenizer", duration(meta["train_seconds"]), "-", "-", duration(meta["train_seconds"])])
        total += meta["train_seconds"]
    for s in stages:
        if s.status == "not run" and not s.evals:
            rows.append([s.name, "not run", "-", "-", "-"])
            continue
        parts = s.seconds()
        rows.append([s.name, *(duration(seconds) if seconds else "-" for seconds in parts.values()),
                     duration(sum(parts.values()))])
        total += sum(parts.values())
    rows.append(["**total**", "", "", "", f"**{duration(total)}**" if total else "-"])
    return ("## Wall time\n\n" + table(["", "training steps", "val bpb evals", "task evals", "total"], rows) +
            "\n\nMeasured parts only: data preparation, process start-up, compilation outside the timed steps "
            "and checkpoint writes are not recorded, so the pipeline's real wall time is somewhat longer.")


# ----------------------------------------------------------------------------------------------------------
# Plots: one PNG each, drawn with matplotlib's object API (Agg for PNG; no pyplot, so no global backend)

def make_plots(stages: list[StageRun], out_dir: Path) -> dict[str, str]:
    """Draw what there is data for; returns {plot: file name} of the PNGs written."""
    from matplotlib.figure import Figure  # imported only here: `picochat --help` stays instant

    ran = [s for s in stages if s.steps]
    evaluated = [s for s in stages if any(eval_results(report) for report in s.evals.values())]
    drawers = {"loss": (plot_loss, ran), "lr": (plot_lr, ran), "speed": (plot_speed, ran),
               "evals": (plot_evals, evaluated)}
    written = {}
    for name, (draw, subjects) in drawers.items():
        if not subjects:
            continue
        figure = Figure(figsize=(11, 4.2), layout="constrained")
        draw(figure, subjects)
        with atomic_path(out_dir / f"{name}.png") as tmp:
            figure.savefig(tmp, format="png", dpi=110)
        written[name] = f"{name}.png"
    return written


def smooth(values: list[float], beta: float = 0.9) -> list[float]:
    """Exponential moving average with bias correction, as nanochat smooths its logged loss."""
    average, out = 0.0, []
    for index, value in enumerate(values, start=1):
        average = beta * average + (1 - beta) * value
        out.append(average / (1 - beta ** index))
    return out


def plot_loss(figure, stages: list[StageRun]) -> None:
    """Train loss and val bpb against tokens seen, each stage starting where the one before it ended."""
    loss_axes, bpb_axes = figure.subplots(1, 2)
    offset = 0
    for s in stages:
        steps = [r for r in s.steps if is_number(r.get("tokens"))]
        tokens = [offset + r["tokens"] for r in steps]
        losses = [r["loss"] for r in steps]
        loss_axes.plot(tokens, losses, color=COLORS[s.name], alpha=0.25, linewidth=0.8)
        loss_axes.plot(tokens, smooth(losses), color=COLORS[s.name], label=s.name)
        val = [r for r in s.val if is_number(r.get("tokens"))]
        bpb_axes.plot([offset + r["tokens"] for r in val], [r["val_bpb"] for r in val], "o-",
                      color=COLORS[s.name], label=s.name)
        offset = max(tokens + [offset])
    loss_axes.set(title="train loss (faint: per step; line: smoothed)", xlabel="tokens seen", ylabel="loss")
    bpb_axes.set(title="val bits per byte (each stage's own val data)", xlabel="tokens seen", ylabel="bpb")
    for axes in (loss_axes, bpb_axes):
        axes.legend()
        axes.grid(alpha=0.3)


def plot_lr(figure, stages: list[StageRun]) -> None:
    axes = figure.subplots()
    for s in stages:
        rows = [r for r in s.steps if is_number(r.get("lr"))]
        axes.plot([r["step"] for r in rows], [r["lr"] for r in rows], color=COLORS[s.name], label=s.name)
    axes.set(title="LR schedule (multiplier of each parameter group's base LR)", xlabel="step",
             ylabel="LR multiplier")
    axes.legend()
    axes.grid(alpha=0.3)


def plot_speed(figure, stages: list[StageRun]) -> None:
    speed_axes, mfu_axes = figure.subplots(1, 2)
    for s in stages:
        for axes, key, scale in ((speed_axes, "tok_per_s", 1), (mfu_axes, "mfu", 100)):
            rows = [r for r in s.steps if is_number(r.get(key))]
            axes.plot([r["step"] for r in rows], [r[key] * scale for r in rows], color=COLORS[s.name],
                      linewidth=0.8, label=s.name)
    speed_axes.set(title="throughput", xlabel="step", ylabel="tokens/s")
    mfu_axes.set(title="MFU (against the same run's matmul peak)", xlabel="step", ylabel="MFU %")
    for axes in (speed_axes, mfu_axes):
        axes.set_ylim(bottom=0)
        axes.legend()
        axes.grid(alpha=0.3)


def plot_evals(figure, stages: list[StageRun]) -> None:
    """Accuracy per task, a bar per stage, with the standard error as an error bar; CORE and chat apart."""
    kinds = [kind for kind in EVAL_KINDS if any(eval_results(s.evals.get(kind)) for s in stages)]
    for axes, kind in zip(figure.subplots(1, len(kinds), squeeze=False)[0], kinds):
        label, score_key, score_name = EVAL_KINDS[kind]
        shown = [s for s in stages if eval_results(s.evals.get(kind))]
        tasks = list(dict.fromkeys(r["task"] for s in shown for r in eval_results(s.evals[kind])))
        width = 0.8 / len(shown)
        for index, s in enumerate(shown):
            results = {r["task"]: r for r in eval_results(s.evals[kind])}
            shift = (index - (len(shown) - 1) / 2) * width  # bars of one task side by side around its tick
            positions = [number + shift for number, task in enumerate(tasks) if task in results]
            present = [results[task] for task in tasks if task in results]
            errors = [r["stderr"] if is_number(r.get("stderr")) else 0 for r in present]
            score = s.evals[kind].get(score_key)
            axes.bar(positions, [r["accuracy"] for r in present], width, yerr=errors, capsize=2,
                     color=COLORS[s.name], label=f"{s.name} ({score_name} {fmt(score, '.3f')})")
        chance = {r["task"]: r["random_baseline"] for s in reversed(shown) for r in eval_results(s.evals[kind])
                  if is_number(r.get("random_baseline")) and r["random_baseline"] > 0}
        axes.hlines(list(chance.values()), [tasks.index(task) - 0.45 for task in chance],
                    [tasks.index(task) + 0.45 for task in chance], colors="black", linestyles="dashed",
                    linewidth=1, label="chance")
        axes.set_xticks(range(len(tasks)), tasks, rotation=35, ha="right")
        axes.set(title=f"{label} tasks: accuracy +- stderr", ylabel="accuracy", ylim=(0, 1))
        axes.legend()
        axes.grid(axis="y", alpha=0.3)
