"""How a run reports itself: the metrics file (MetricsLog, read_metrics, the wandb mirror), the progress
display (Progress: plain lines off a terminal, a tqdm bar on one) and the stop signals (StopSignal).

    python -m pytest tests/test_progress.py
"""

import io
import json
import os
import signal
import sys
import types

import pytest
import torch

from picochat import progress as progress_module
from picochat.common import UserError
from picochat.runtime import Runtime
from picochat.progress import MetricsLog, Progress, StopSignal, read_metrics

MAIN = Runtime(torch.device("cpu"), torch.float32)
OTHER_RANK = Runtime(torch.device("cpu"), torch.float32, rank=1, world_size=2)


def step_record(step: int, **extra) -> dict:
    return {"step": step, "loss": 3.0 - step / 10, "lr": 0.02, "tok_per_s": 1000, "mfu": 0.1, "eta_s": 5.0,
            **extra}


def eval_record(step: int) -> dict:
    return {"step": step, "val_bpb": 2.0 - step / 100, "eval_seconds": 0.5}


# ---- Progress off a terminal: a plain line every so often --------------------------------------------------

class FakeClock:
    """Stands in for time.monotonic inside picochat.progress; tests move `now` by hand."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(progress_module, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    return fake


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def drive(bar: Progress, clock: FakeClock, steps: range) -> None:
    """One update per step, one second apart, the first one second after the clock's start (time 0)."""
    for seconds, step in enumerate(steps, start=1):
        clock.now = float(seconds)
        bar.update(step, f"loss {step}")


def test_plain_lines_come_at_most_once_per_every_seconds_and_close_prints_the_last_step(clock):
    stream = io.StringIO()
    bar = Progress(100, 0, enabled=True, every_seconds=10, stream=stream)
    drive(bar, clock, range(1, 26))
    assert stream.getvalue().splitlines() == ["step 10/100 loss 10", "step 20/100 loss 20"]
    bar.close()
    assert stream.getvalue().splitlines()[-1] == "step 25/100 loss 25"
    assert "\r" not in stream.getvalue()


def test_plain_lines_wait_every_seconds_from_the_last_line_not_from_the_last_update(clock):
    stream = io.StringIO()
    bar = Progress(None, 0, enabled=True, every_seconds=10, stream=stream)
    clock.now = 9.9
    bar.update(1, "a")
    clock.now = 10.0
    bar.update(2, "b")
    clock.now = 19.9
    bar.update(3, "c")
    assert stream.getvalue().splitlines() == ["step 2 b"]


def test_plain_lines_without_a_total_have_no_slash(clock):
    stream = io.StringIO()
    bar = Progress(None, 0, enabled=True, every_seconds=10, stream=stream)
    drive(bar, clock, range(1, 12))
    bar.close()
    assert stream.getvalue().splitlines() == ["step 10 loss 10", "step 11 loss 11"]


def test_resumed_progress_counts_from_the_initial_step(clock):
    stream = io.StringIO()
    bar = Progress(100, 40, enabled=True, every_seconds=10, stream=stream)
    drive(bar, clock, range(41, 51))
    assert stream.getvalue().splitlines() == ["step 50/100 loss 50"]


def test_disabled_progress_prints_nothing(clock):
    stream = Terminal()  # not even on a terminal
    bar = Progress(100, 0, enabled=False, every_seconds=10, stream=stream)
    drive(bar, clock, range(1, 50))
    bar.close()
    assert bar.bar is None
    assert stream.getvalue() == ""


def test_close_before_any_update_prints_nothing(clock):
    stream = io.StringIO()
    Progress(100, 0, enabled=True, every_seconds=10, stream=stream).close()
    assert stream.getvalue() == ""


# ---- Progress on a terminal: a tqdm bar --------------------------------------------------------------------

def test_progress_on_a_terminal_is_a_tqdm_bar_that_follows_the_step():
    stream = Terminal()
    bar = Progress(10, 2, enabled=True, stream=stream)
    assert bar.bar is not None and bar.bar.n == 2
    bar.update(5, "loss 1.2345")
    assert bar.bar.n == 5
    bar.update(7, "loss 1.0000")
    assert bar.bar.n == 7
    bar.close()
    output = stream.getvalue()
    assert "\r" in output
    assert "7/10" in output and "loss 1.0000" in output
    assert "step 7" not in output  # no plain lines on top of the bar


# ---- MetricsLog and read_metrics ---------------------------------------------------------------------------

def lines_of(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_are_appended_as_json_lines_and_read_back(tmp_path):
    path = tmp_path / "base" / "metrics.jsonl"  # the folder need not exist yet
    log = MetricsLog(path, MAIN, resume_step=0)
    records = [eval_record(0), step_record(1), step_record(2), eval_record(2)]
    for record in records:
        log.log(record)
    log.close()
    assert lines_of(path) == records
    assert read_metrics(path) == records


def test_read_metrics_filters_steps_and_evals(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path, MAIN, resume_step=0)
    for record in [eval_record(0), step_record(1), step_record(2), eval_record(2)]:
        log.log(record)
    assert [r["step"] for r in read_metrics(path, "step")] == [1, 2]
    assert all("loss" in r for r in read_metrics(path, "step"))
    assert [r["step"] for r in read_metrics(path, "eval")] == [0, 2]
    assert all("val_bpb" in r for r in read_metrics(path, "eval"))


def test_read_metrics_of_a_missing_file_is_empty(tmp_path):
    assert read_metrics(tmp_path / "nothing.jsonl") == []


def test_resume_drops_records_past_the_checkpoint_and_keeps_earlier_ones(tmp_path):
    path = tmp_path / "metrics.jsonl"
    first = MetricsLog(path, MAIN, resume_step=0)
    for record in [eval_record(0), *(step_record(s) for s in range(1, 6)), eval_record(4)]:
        first.log(record)
    resumed = MetricsLog(path, MAIN, resume_step=3)
    assert read_metrics(path) == [eval_record(0), step_record(1), step_record(2), step_record(3)]
    resumed.log(step_record(4))
    assert [r["step"] for r in read_metrics(path, "step")] == [1, 2, 3, 4]


def test_resume_step_zero_starts_an_empty_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(step_record(1)) + "\n" + json.dumps(step_record(2)) + "\n")
    MetricsLog(path, MAIN, resume_step=0)
    assert path.read_text() == ""


def test_a_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path, MAIN, resume_step=0)
    log.log(step_record(1))
    log.log(step_record(2))
    with open(path, "a") as f:
        f.write(json.dumps(step_record(3))[:17])  # kill -9 in the middle of the third write
    assert read_metrics(path) == [step_record(1), step_record(2)]


def test_resume_after_a_torn_line_keeps_the_next_record_readable(tmp_path):
    path = tmp_path / "metrics.jsonl"
    MetricsLog(path, MAIN, resume_step=0).log(step_record(1))
    with open(path, "a") as f:
        f.write('{"step": 2, "lo')
    resumed = MetricsLog(path, MAIN, resume_step=1)
    resumed.log(step_record(2))  # must not be glued onto the torn half line
    assert read_metrics(path) == [step_record(1), step_record(2)]


def test_a_non_main_rank_writes_nothing(tmp_path):
    fresh, existing = tmp_path / "fresh.jsonl", tmp_path / "existing.jsonl"
    existing.write_text(json.dumps(step_record(1)) + "\n" + json.dumps(step_record(2)) + "\n")
    before = existing.read_text()
    for path in (fresh, existing):
        log = MetricsLog(path, OTHER_RANK, resume_step=0)
        log.log(step_record(3))
        log.close()
    assert not fresh.exists()
    assert existing.read_text() == before  # rank 0 owns the file: not truncated, not appended to
    assert log.max_mfu == 0.0 and log.summary() == ""


def test_max_mfu_is_the_largest_mfu_logged(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl", MAIN, resume_step=0)
    assert log.max_mfu == 0.0
    for step, mfu in enumerate([0.3, 0.52, 0.4], start=1):
        log.log(step_record(step, mfu=mfu))
    log.log(eval_record(3))  # no mfu: leaves it alone
    assert log.max_mfu == 0.52


def test_summary_describes_the_last_step_and_survives_an_eval(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl", MAIN, resume_step=0)
    assert log.summary() == ""
    log.log(eval_record(0))
    assert log.summary() == ""  # an eval alone has no loss to show
    log.log({"step": 1, "loss": 2.5, "lr": 0.02, "tok_per_s": 12345, "mfu": 0.41, "eta_s": 89.6})
    expected = "loss 2.5000 lr 0.020 12,345 tok/s mfu 41.0% eta 90s"
    assert log.summary() == expected
    log.log(eval_record(1))
    assert log.summary() == expected
    assert log.last["val_bpb"] == eval_record(1)["val_bpb"]


# ---- the wandb mirror --------------------------------------------------------------------------------------

class FakeWandb(types.ModuleType):
    """Records init() arguments and the run's log()/finish() calls."""

    def __init__(self):
        super().__init__("wandb")
        self.inits, self.logged, self.finished = [], [], 0

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return types.SimpleNamespace(log=lambda record, step: self.logged.append((record, step)),
                                     finish=self.finish)

    def finish(self):
        self.finished += 1


@pytest.fixture
def fake_wandb(monkeypatch) -> FakeWandb:
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    return fake


def test_wandb_run_is_started_with_the_project_and_run_name(tmp_path, fake_wandb):
    MetricsLog(tmp_path / "metrics.jsonl", MAIN, resume_step=0, wandb_run_config={"run_name": "x", "depth": 4})
    assert fake_wandb.inits == [{"project": "picochat", "name": "x", "config": {"depth": 4}}]


def test_wandb_gets_every_record_at_its_step_and_finish_once(tmp_path, fake_wandb):
    log = MetricsLog(tmp_path / "metrics.jsonl", MAIN, resume_step=0, wandb_run_config={"run_name": "x"})
    records = [eval_record(0), step_record(1), step_record(2), eval_record(2)]
    for record in records:
        log.log(record)
    assert fake_wandb.logged == [(record, record["step"]) for record in records]
    log.close()
    log.close()
    assert fake_wandb.finished == 1


def test_no_wandb_run_without_a_config_or_off_the_main_rank(tmp_path, fake_wandb):
    MetricsLog(tmp_path / "a.jsonl", MAIN, resume_step=0).log(step_record(1))
    other = MetricsLog(tmp_path / "b.jsonl", OTHER_RANK, resume_step=0, wandb_run_config={"run_name": "x"})
    other.log(step_record(1))
    other.close()
    assert fake_wandb.inits == [] and fake_wandb.logged == [] and fake_wandb.finished == 0


def test_wandb_without_the_package_is_a_user_error_saying_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail
    with pytest.raises(UserError, match="pip install"):
        MetricsLog(tmp_path / "metrics.jsonl", MAIN, resume_step=0, wandb_run_config={"run_name": "x"})


# ---- StopSignal --------------------------------------------------------------------------------------------

@pytest.fixture
def saved_handlers():
    """The handlers before the test, put back afterwards even if the test fails."""
    before = {signum: signal.getsignal(signum) for signum in StopSignal.SIGNALS}
    try:
        yield before
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM])
def test_sigusr1_and_sigterm_request_a_stop_without_exiting(saved_handlers, signum):
    stop = StopSignal()
    assert not stop.requested
    os.kill(os.getpid(), signum)
    assert stop.requested  # and we are still here


def test_restore_puts_the_previous_handlers_back(saved_handlers):
    stop = StopSignal()
    for signum in StopSignal.SIGNALS:
        assert signal.getsignal(signum) == stop._handle
    stop.restore()
    assert {signum: signal.getsignal(signum) for signum in StopSignal.SIGNALS} == saved_handlers


def test_first_ctrl_c_requests_a_stop_and_the_second_reaches_the_previous_handler(saved_handlers, capsys,
                                                                                 monkeypatch):
    monkeypatch.delenv("RANK", raising=False)  # print0 prints on rank 0
    previous_calls = []
    signal.signal(signal.SIGINT, lambda signum, frame: previous_calls.append(signum))
    stop = StopSignal()
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.requested and previous_calls == []
    assert "Ctrl-C" in capsys.readouterr().out
    os.kill(os.getpid(), signal.SIGINT)
    assert previous_calls == [signal.SIGINT]


def test_close_does_not_repeat_a_line_just_printed(clock):
    stream = io.StringIO()
    bar = Progress(10, 0, enabled=True, every_seconds=1.0, stream=stream)
    clock.now += 1.0
    bar.update(3, "x")
    bar.close()
    assert stream.getvalue() == "step 3/10 x\n"
