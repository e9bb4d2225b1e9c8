"""scripts/speedrun.slurm and scripts/slurm_preflight.sh. The preflight's one-line errors are checked anywhere.
The slow tests start a real two-node Slurm cluster on this machine (Debian's slurm-wlm and munge: munged,
slurmctld and one slurmd per node, all state in a temp folder) and submit the script with a tiny CPU model
(2 processes in all, gloo): a job warned early (the time-limit USR1) checkpoints, requeues itself, resumes
and finishes, on one node and on two; one step on two nodes gives the weights of one process; a cancelled
job (SIGTERM) checkpoints and stays cancelled. Without slurm-wlm and munge, or where the daemons cannot
start, they say why and skip (PICOCHAT_REQUIRE_SLURM=1, as CI sets it, makes that a failure).

    python -m pytest -q tests/test_slurm.py          # the cluster tests need: apt-get install -y slurm-wlm munge
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from helpers import TINY, flags_dict, step_records
from picochat import train
from picochat.checkpoint import checkpoint_dir, checkpoint_step, list_checkpoints, load_checkpoint
from picochat.stages import STAGES, Stage

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "speedrun.slurm"
PREFLIGHT = REPO / "scripts" / "slurm_preflight.sh"
# The venv first (torchrun), then the daemons' folders, which a non-root PATH may lack.
PATH = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "sinfo", "squeue", "srun")
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE"}


def script_env(**extra) -> dict:
    return {**os.environ, "PATH": PATH, **{key: str(value) for key, value in extra.items()}}


def error_line(result: subprocess.CompletedProcess, program: str) -> str:
    """The one `program: error: ...` line a failed script printed, after checking that it exited 2."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{program}: error: "), result.stderr
    return lines[0]


# ----------------------------------------------------------------------------------------------------------
# The preflight and the script's own checks: no Slurm needed

def run_preflight(home: Path, **env) -> subprocess.CompletedProcess:
    env = {"PICOCHAT_HOME": home, "DEVICE": "cpu", "MIN_FREE_GB": 0, **env}
    return subprocess.run(["bash", str(PREFLIGHT)], env=script_env(**env), capture_output=True, text=True,
                          timeout=120)


def test_preflight_passes_on_a_prepared_home_and_leaves_nothing_behind(fresh_home):
    before = sorted(fresh_home.rglob("*"))
    result = run_preflight(fresh_home)
    assert result.returncode == 0, result.stderr
    assert sorted(fresh_home.rglob("*")) == before


@pytest.mark.parametrize("breakage, expected", [
    ("no data", "no pretraining data"),
    ("no tokenizer", "no tokenizer"),
    ("no home", "does not exist"),
    ("not shared", "not shared"),
    ("disk full", "GB free"),
    ("no GPUs", "GPU"),
    ("bad knob", "MIN_FREE_GB must be"),
])
def test_preflight_names_what_is_wrong_in_one_line(fresh_home, breakage, expected):
    home, env = fresh_home, {}
    if breakage == "no data":
        shutil.rmtree(fresh_home / "data" / "base")
    elif breakage == "no tokenizer":
        shutil.rmtree(fresh_home / "tokenizer")
    elif breakage == "no home":
        home = fresh_home / "elsewhere"
    elif breakage == "not shared":
        env["SHARED_MARKER"] = fresh_home / "written-by-the-first-node"
    elif breakage == "disk full":
        env["MIN_FREE_GB"] = 10**9
    elif breakage == "bad knob":
        env["MIN_FREE_GB"] = "lots"
    else:
        env.update(DEVICE="cuda", GPUS_PER_NODE=10**6)  # more than any node has, CUDA build or not
    assert expected in error_line(run_preflight(home, **env), "slurm_preflight")


def test_script_refuses_to_run_outside_slurm_and_bad_knobs(tmp_path):
    outside = subprocess.run(["bash", str(SCRIPT)], env={**script_env(), "SLURM_JOB_ID": ""},
                             capture_output=True, text=True, timeout=60)
    assert "sbatch" in error_line(outside, "speedrun.slurm")
    bad_stage = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                               env=script_env(SLURM_JOB_ID=1, SLURM_SUBMIT_DIR=REPO, STAGES="base rl"))
    assert "'rl'" in error_line(bad_stage, "speedrun.slurm")
    bad_knob = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                              env=script_env(SLURM_JOB_ID=1, SLURM_SUBMIT_DIR=REPO, TOTAL_BATCH_SIZE="512k"))
    assert "--total-batch-size: invalid int value: '512k'" in error_line(bad_knob, "speedrun.slurm")


# ----------------------------------------------------------------------------------------------------------
# A real two-node cluster on this machine

def unavailable(reason: str) -> None:
    if os.environ.get("PICOCHAT_REQUIRE_SLURM"):
        pytest.fail(reason)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, seconds: float, what: str, every: float = 0.5):
    """condition()'s first truthy value, polled for at most `seconds`; else the test fails naming `what`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"waited {seconds:.0f} s for {what}")


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no file)"


class LocalCluster:
    """munged, slurmctld and one slurmd per node, all on 127.0.0.1: two nodes on one machine, which Debian's
    Slurm allows (it is built with --enable-multiple-slurmd: each slurmd has its own port, spool and log).
    A job's first node hosts the rendezvous, so its name must resolve: the first node is named as this
    machine is, the second after it (Slurm sorts node names: HOST before HOST-2). One-node jobs are pinned
    to the first. Config, state, logs and the munge key all live in `root`."""

    def __init__(self, root: Path):
        self.root = root
        host = socket.gethostname().split(".")[0]
        self.nodes = (host, f"{host}-2")
        self.env = script_env(SLURM_CONF=root / "slurm.conf")
        self.daemons: dict[str, subprocess.Popen] = {}

    def write_config(self) -> None:
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)  # munged refuses a key that others can read
        r = self.root
        (r / "state").mkdir()
        for node in self.nodes:
            (r / "spool" / node).mkdir(parents=True)
        nodes = "".join(f"NodeName={node} NodeAddr=127.0.0.1 Port={free_port()} "
                        f"CPUs={os.cpu_count()} State=UNKNOWN\n" for node in self.nodes)
        # A requeued job waits cred_expire (120 s by default: its old credential is revoked until then) and
        # then for a scheduling pass (sched_interval, 60 s): 167 s here with the defaults, 7 s with these.
        (r / "slurm.conf").write_text(f"""\
ClusterName=picochat-test
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmctldPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={r}/munge.socket,cred_expire=5
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd-%n.pid
SlurmctldLogFile={r}/slurmctld.log
SlurmdLogFile={r}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
KillWait=10
MinJobAge=600
{nodes}PartitionName=test Nodes={",".join(self.nodes)} Default=YES MaxTime=INFINITE State=UP
""")

    def start(self) -> None:
        try:
            socket.gethostbyname(self.nodes[0])
        except OSError:
            unavailable(f"this machine's name {self.nodes[0]} does not resolve, and the first node, named so, "
                        "hosts the rendezvous: add it to /etc/hosts")
        self.write_config()
        r = self.root
        # --force: pytest's temp folders are private (0700), where munged wants a socket all users can reach
        self.start_daemon("munged", "--foreground", "--force", f"--socket={r}/munge.socket",
                          f"--key-file={r}/munge.key", f"--pid-file={r}/munged.pid", f"--log-file={r}/munged.log",
                          f"--seed-file={r}/munge.seed")
        self.wait_for_daemon("munged", lambda: (r / "munge.socket").exists())
        self.start_daemon("slurmctld", "-D", "-i", "-f", str(r / "slurm.conf"))
        for node in self.nodes:
            self.start_daemon(f"slurmd-{node}", "-D", "-N", node, "-f", str(r / "slurm.conf"), program="slurmd")
        for node in self.nodes:
            self.wait_for_daemon(f"slurmd-{node}", lambda node=node: self.node_states().get(node) == "idle")

    def start_daemon(self, name: str, *args: str, program: str = "") -> None:
        with open(self.root / f"{name}.stdout", "w") as out:
            self.daemons[name] = subprocess.Popen([shutil.which(program or name, path=PATH), *args], env=self.env,
                                                  stdout=out, stderr=subprocess.STDOUT)

    def wait_for_daemon(self, name: str, ready, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while not ready():
            dead = [n for n, p in self.daemons.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"{dead[0]} exited" if dead else f"{name} not ready after {seconds:.0f} s"
                logs = "\n".join(tail(self.root / f"{n}.log", 5) + "\n" + tail(self.root / f"{n}.stdout", 5)
                                 for n in (dead or [name]))
                unavailable(f"the two-node Slurm cluster did not start ({why}):\n{logs}")
            time.sleep(0.5)

    def node_states(self) -> dict[str, str]:
        """{node: "idle", "allocated", ...}; empty while slurmctld does not answer."""
        result = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env=self.env, capture_output=True, text=True,
                                timeout=30)
        return dict(line.split() for line in result.stdout.splitlines()) if result.returncode == 0 else {}

    def run(self, *command: str, **env) -> str:
        result = subprocess.run(command, env={**self.env, **env}, cwd=REPO, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, f"{' '.join(command)}: {result.stderr}"
        return result.stdout

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict: JobState, Restarts, Reason, ExitCode, ..."""
        return dict(re.findall(r"(\w+)=(\S*)", self.run("scontrol", "show", "job", "-o", job_id)))

    def stop(self) -> None:
        if "slurmctld" in self.daemons and self.daemons["slurmctld"].poll() is None:
            jobs = subprocess.run(["squeue", "-h", "-o", "%i"], env=self.env, capture_output=True, text=True,
                                  timeout=30).stdout.split()
            for job_id in jobs:  # a failed test may leave its job running: end it before its slurmd goes
                subprocess.run(["scancel", job_id], env=self.env, timeout=30)
            deadline = time.monotonic() + 30
            while jobs and time.monotonic() < deadline and subprocess.run(
                    ["squeue", "-h", "-o", "%i"], env=self.env, capture_output=True, text=True, timeout=30).stdout:
                time.sleep(0.5)
        for process in reversed(list(self.daemons.values())):
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    missing = [name for name in COMMANDS if shutil.which(name, path=PATH) is None]
    if missing:
        unavailable(f"slurm-wlm and munge are not installed (missing {', '.join(missing)}); "
                    "as root: apt-get install -y slurm-wlm munge")
    if os.geteuid() != 0:
        unavailable("the Slurm cluster needs root: slurmd starts each job as its user")
    cluster = LocalCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def sbatch(cluster: LocalCluster, home: Path, log: Path, nodes: int, *train_flags: str) -> str:
    """speedrun.slurm's base stage with the tiny model on 2 CPU processes in all, on `nodes` nodes (one: the
    first); returns the job id."""
    where = f"--nodelist={cluster.nodes[0]}" if nodes == 1 else f"--nodes={nodes}"
    return cluster.run(
        # --gpus-per-node=0 overrides the script's 8: this cluster has no GPUs
        "sbatch", "--parsable", "--job-name=picochat-test", f"--output={log}", "--time=15", "--gpus-per-node=0",
        where, str(SCRIPT),
        PICOCHAT_HOME=str(home), DEVICE="cpu", GPUS_PER_NODE=str(2 // nodes), DEPTH="1", STAGES="base",
        TOTAL_BATCH_SIZE="0", TRAIN_FLAGS=" ".join([*TINY, *train_flags]), SAVE_EVERY="1000000", MIN_FREE_GB="0",
        RDZV_PORT=str(free_port())).strip()


def submit(cluster: LocalCluster, home: Path, log: Path, nodes: int = 1) -> str:
    """A job to interrupt: returns its id once training has begun."""
    # 15 s of training: long enough to be interrupted, short enough to finish; no periodic checkpoints, so a
    # checkpoint before the end can only be the signal's
    job_id = sbatch(cluster, home, log, nodes, "--time-budget", "0.25")

    def training_or_over():
        if cluster.job(job_id)["JobState"] in FINAL_STATES:
            pytest.fail(f"job ended before it was signalled:\n{tail(log)}")
        return step_records(home)
    wait_until(training_or_over, 180, "the first training steps")
    return job_id


def wait_for_end(cluster: LocalCluster, job_id: str, log: Path) -> dict[str, str]:
    def over():
        job = cluster.job(job_id)
        # an idle node: every process of the job has ended, not only its record in slurmctld
        return job["JobState"] in FINAL_STATES and set(cluster.node_states().values()) == {"idle"} and job
    return wait_until(over, 300, f"job {job_id} to end; its log:\n{tail(log)}")


def signal_steps(text: str) -> list[int]:
    return [int(step) for step in re.findall(r"stopped by signal at step (\d+)", text)]


@pytest.mark.slow
@pytest.mark.parametrize("nodes", [1, 2])
def test_warned_job_checkpoints_requeues_itself_and_resumes(slurm_cluster, fresh_home, tmp_path, nodes):
    """On two nodes srun passes the USR1 to both: each node's torchrun outlives it (a dead one fails the step
    and the job), its worker joins the checkpoint (its loader's position is in it), and both resume."""
    started = time.monotonic()
    log = tmp_path / "job.out"
    job_id = submit(slurm_cluster, fresh_home, log, nodes)
    signalled = time.monotonic()
    slurm_cluster.run("scancel", "--signal=USR1", "--batch", job_id)  # what --signal=B:USR1@300 sends, now
    job = wait_for_end(slurm_cluster, job_id, log)
    print(f"slurm test: {signalled - started:.0f} s to the first steps, {time.monotonic() - signalled:.0f} s "
          f"from the signal to the end")

    text = log.read_text()
    assert (job["JobState"], job["ExitCode"], job["Restarts"], job["NumNodes"]) == ("COMPLETED", "0:0", "1",
                                                                                   str(nodes)), text
    assert "Traceback" not in text
    assert "(restart 1)" in text, text
    assert text.count("slurm_preflight: ") == 2 * nodes  # the preflight ran on every node, in both runs
    assert len(re.findall(r"stage base on cpu .*, 2 process\(es\)", text)) == 2, text  # both runs, 2 ranks each
    stopped = signal_steps(text)
    resumed_from = [int(step) for step in re.findall(r"resuming from \S*step_(\d+)\.pt", text)]
    assert len(stopped) == 1 and resumed_from == stopped, text  # the requeued run began at the signal's checkpoint
    loaders = load_checkpoint(checkpoint_dir(fresh_home, "base") / f"step_{stopped[0]:06d}.pt")["loaders"]
    assert len(loaders) == 2 and loaders[0] != loaders[1]  # each rank's (each node's) own position
    done = json.loads((checkpoint_dir(fresh_home, "base") / "done.json").read_text())
    assert done["step"] > stopped[0]
    # one consistent run: every step logged once, in order, across the interruption
    assert [record["step"] for record in step_records(fresh_home)] == list(range(1, done["step"] + 1))


@pytest.mark.slow
def test_cancelled_job_checkpoints_and_stays_cancelled(slurm_cluster, fresh_home, tmp_path):
    log = tmp_path / "job.out"
    job_id = submit(slurm_cluster, fresh_home, log)
    slurm_cluster.run("scancel", job_id)  # SIGTERM to every process of the job; SIGKILL 10 s later (KillWait)
    job = wait_for_end(slurm_cluster, job_id, log)

    text = log.read_text()
    assert (job["JobState"], job["Restarts"]) == ("CANCELLED", "0"), text
    # torchrun outlived its workers' checkpoint instead of killing them (its SignalException traceback)
    assert "Traceback" not in text
    stopped = signal_steps(text)
    directory = checkpoint_dir(fresh_home, "base")
    assert len(stopped) == 1 and [checkpoint_step(path) for path in list_checkpoints(directory)] == stopped, text
    assert not (directory / "done.json").exists()


class TakingTurns:
    """Batches from each loader in turn: one process's micro-batches that are what ranks of a bigger run read."""

    def __init__(self, loaders: list):
        self.loaders, self.taken = loaders, 0

    def __iter__(self) -> "TakingTurns":
        return self

    def __next__(self):
        self.taken += 1
        return next(self.loaders[(self.taken - 1) % len(self.loaders)])

    def state_dict(self) -> dict:
        return {"taken": self.taken}

    def stats(self, step_seconds: float) -> dict:
        return {}


def one_process_step(home: Path, ranks: list[int], monkeypatch) -> dict:
    """The model after one base step in this process, accumulating the gradients of the batches that `ranks`
    of a 2-process run read first."""
    base_stage = STAGES["base"]

    def reading_as_ranks() -> Stage:
        stage = base_stage()
        read = stage.train_batches
        stage.train_batches = lambda tokenizer, config, runtime, state, model: TakingTurns(
            [read(tokenizer, config, replace(runtime, rank=rank, world_size=2), state, model) for rank in ranks])
        return stage
    with monkeypatch.context() as patch:
        patch.setitem(STAGES, "base", reading_as_ranks)
        total = 2 * 32 * len(ranks)  # TINY's 2 rows of 32 tokens per rank
        # untied, as speedrun.slurm's GPU recipe trains base
        train.run(flags_dict(*TINY, "--tie-embeddings", "false", "--num-iterations", "1", "--total-batch-size",
                             str(total), "--home", str(home)))
    return load_checkpoint(checkpoint_dir(home, "base") / "step_000001.pt")["model"]


@pytest.mark.slow
def test_one_step_on_two_nodes_equals_one_process(slurm_cluster, fresh_home, tiny_home, tmp_path, monkeypatch):
    """One base step of speedrun.slurm on 2 nodes x 1 process (gloo, the c10d rendezvous on the first node)
    ends at the weights of one process that accumulates the gradients of both ranks' batches. One process on
    rank 0's batch alone ends elsewhere: the comparison sees a node whose gradients went missing."""
    log = tmp_path / "job.out"
    job_id = sbatch(slurm_cluster, fresh_home, log, 2, "--num-iterations", "1")
    job = wait_for_end(slurm_cluster, job_id, log)
    text = log.read_text()
    assert (job["JobState"], job["ExitCode"], job["NumNodes"]) == ("COMPLETED", "0:0", "2"), text
    assert re.search(r"stage base on cpu .*, 2 process\(es\)", text) and "Traceback" not in text, text
    two_nodes = load_checkpoint(checkpoint_dir(fresh_home, "base") / "step_000001.pt")["model"]
    both = one_process_step(Path(shutil.copytree(tiny_home, tmp_path / "both")), [0, 1], monkeypatch)
    rank0 = one_process_step(Path(shutil.copytree(tiny_home, tmp_path / "rank0")), [0], monkeypatch)
    assert two_nodes.keys() == both.keys() == rank0.keys()
    for name, tensor in two_nodes.items():
        assert torch.allclose(tensor, both[name], rtol=1e-5, atol=1e-7), name
    assert not all(torch.allclose(tensor, rank0[name], rtol=1e-5, atol=1e-7) for name, tensor in two_nodes.items())
