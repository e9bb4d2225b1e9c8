"""The sandbox: right and wrong programs, then hostile ones (endless loops, fork bombs, huge allocations and
files, deleting or writing outside the folder, the network, killing the caller). Each must end cleanly and
fast, and leave no process behind. Linux only (it reads /proc), like the sandbox's limits.

    python -m pytest -q tests/test_sandbox.py
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from picochat import sandbox
from picochat.common import UserError
from picochat.sandbox import run_program

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux's /proc")

PRINT_GROUP = "import os\nprint('group', os.getpgrp(), flush=True)\n"


def group_of(output: str) -> int:
    return int(re.search(r"group (\d+)", output).group(1))


def live_members(pgid: int) -> list[int]:
    """The processes of a process group that still run, from /proc. Zombies are left out: they are dead
    and only wait for init to reap them (the killed program's orphans are init's children)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it ended while we looked
            continue
        state, _parent, group = stat.rsplit(")", 1)[1].split()[:3]  # the name before ")" may hold spaces
        if int(group) == pgid and state != "Z":
            members.append(int(entry.name))
    return members


def no_live_members(pgid: int, seconds: float = 3.0) -> bool:
    """Whether the group has no running process, within seconds: a process that has been sent SIGKILL runs
    no more code, but may take a moment (on a busy machine) to be scheduled and die."""
    deadline = time.monotonic() + seconds
    while live_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.01)
    return live_members(pgid) == []


def group_is_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_the_leftover_check_sees_a_running_group():
    sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert live_members(sleeper.pid) == [sleeper.pid] and not group_is_gone(sleeper.pid)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert live_members(sleeper.pid) == [] and group_is_gone(sleeper.pid)


def test_a_right_program_passes_and_a_wrong_one_fails():
    right = run_program("def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\nprint('all good')")
    assert right.status == "passed" and right.passed and "all good" in right.output
    assert right.seconds < 5
    wrong = run_program("def add(a, b):\n    return a - b\n\nassert add(2, 3) == 5")
    assert wrong.status == "failed" and not wrong.passed
    assert "AssertionError" in wrong.output and 'File "program.py", line 4' in wrong.output
    assert run_program("def broken(:\n    pass").status == "failed"


@pytest.mark.parametrize("ending", ["import sys\nsys.exit(0)", "exit()", "raise SystemExit",
                                    "import os\nos._exit(0)"])
def test_exiting_before_the_end_fails(ending):
    # an answer that exits early would skip the tests after it: it must not pass
    result = run_program(f"{ending}\nassert False, 'the tests'")
    assert result.status == "failed" and "the tests" not in result.output


@pytest.mark.parametrize("loop", ["while True:\n    pass", "import time\nwhile True:\n    time.sleep(1)"])
def test_an_endless_loop_times_out_and_its_group_is_gone(loop):
    # the sleeping loop uses no CPU time: only the wall clock can stop it
    result = run_program(PRINT_GROUP + loop, timeout=0.5)
    assert result.status == "timeout" and 0.5 <= result.seconds < 1.5
    pgid = group_of(result.output)
    assert group_is_gone(pgid) and no_live_members(pgid)


@pytest.mark.parametrize("start", [
    "while True:\n    os.fork()",
    "import subprocess\nsubprocess.run(['sleep', '30'])",
    "os.system('sleep 30')",
    "os.posix_spawn('/bin/sleep', ['sleep', '30'], {})",
    "import multiprocessing, time\nmultiprocessing.Process(target=time.sleep, args=(30,)).start()",
    "import pty\npty.fork()",
    "import ctypes\nctypes.CDLL(None).fork()",
])
def test_starting_processes_is_refused(start):
    result = run_program(PRINT_GROUP + start, timeout=3)
    assert result.status == "failed" and re.search(r"PermissionError|ModuleNotFoundError", result.output)
    assert no_live_members(group_of(result.output))


def test_a_fork_bomb_past_the_guard_dies_with_its_process_group(monkeypatch):
    # Without the refused os.fork (a program may find another way to fork), the process-group kill must
    # still reach every child. The bomb is bounded, so a failing test cannot hurt the machine.
    monkeypatch.setattr(sandbox, "REFUSED_OS_CALLS", tuple(n for n in sandbox.REFUSED_OS_CALLS if n != "fork"))
    bomb = PRINT_GROUP + (
        "import time\n"
        "children = 0\n"
        "for _ in range(20):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:  # RLIMIT_NPROC, for a user other than root\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(30)\n"
        "        raise SystemExit  # a child never forks again, and ends by itself if the kill fails\n"
        "    children += 1\n"
        "print('children', children, flush=True)\n"
        "time.sleep(30)\n")
    result = run_program(bomb, timeout=1)
    assert result.status == "timeout" and result.seconds < 3
    assert int(re.search(r"children (\d+)", result.output).group(1)) > 0
    assert no_live_members(group_of(result.output))


def test_the_limits_are_set_in_the_child():
    result = run_program("print(open('/proc/self/limits').read())", timeout=2.5, memory_mb=300, max_file_mb=3)
    limits = {line[:26].strip(): line[26:].split()[:2] for line in result.output.splitlines()[1:] if line}
    assert limits["Max cpu time"] == ["4", "5"]  # ceil(2.5) + 1 s soft, one more hard
    assert limits["Max address space"] == [str(300 * 2**20)] * 2
    assert limits["Max file size"] == [str(3 * 2**20)] * 2
    assert limits["Max processes"] == [str(sandbox.MAX_PROCESSES)] * 2
    assert limits["Max core file size"] == ["0", "0"]


def test_a_huge_allocation_fails_instead_of_taking_the_machine():
    result = run_program("buffer = bytearray(10**11)", memory_mb=256)
    assert result.status == "failed" and "MemoryError" in result.output and result.seconds < 5
    growing = run_program("chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))", memory_mb=256)
    assert growing.status == "failed" and "MemoryError" in growing.output


def test_a_huge_file_stops_at_the_size_limit():
    writer = ("written = 0\n"
              "with open('big.bin', 'wb', buffering=0) as f:\n"
              "    try:\n"
              "        for _ in range(1000):\n"
              "            written += f.write(bytes(2**20))\n"
              "    finally:\n"
              "        print('written', written, flush=True)\n")
    result = run_program(writer, max_file_mb=2)
    assert result.status == "failed" and "File too large" in result.output and result.seconds < 5
    assert int(re.search(r"written (\d+)", result.output).group(1)) == 2 * 2**20  # the limit, to the byte


def test_huge_output_is_bounded_and_does_not_hang():
    flood = run_program("import sys\nwhile True:\n    sys.stdout.write('y' * 10**6)", max_file_mb=2)
    assert flood.status == "failed" and len(flood.output) <= sandbox.OUTPUT_CHARS and flood.seconds < 5
    chatty = run_program("print('x' * 5_000_000)\nprint('the end')")
    assert chatty.passed and len(chatty.output) == sandbox.OUTPUT_CHARS and chatty.output.endswith("the end\n")


@pytest.mark.parametrize("delete", [
    "os.remove(PATH)", "os.unlink(PATH)", "import pathlib\npathlib.Path(PATH).unlink()",
    "import shutil\nshutil.rmtree(os.path.dirname(PATH))",
    "os.rename(PATH, 'mine')", "os.replace(PATH, 'mine')",
    "os.rmdir(os.path.dirname(PATH))",
])
def test_files_outside_the_folder_are_not_deleted(tmp_path, delete):
    keep = tmp_path / "outside" / "keep.txt"
    keep.parent.mkdir()
    keep.write_text("precious")
    result = run_program(f"import os\nPATH = {str(keep)!r}\n{delete}")
    assert result.status == "failed" and "PermissionError" in result.output
    assert keep.read_text() == "precious"


@pytest.mark.parametrize("write", [
    "open(PATH, 'w').write('overwritten')", "open(PATH, 'a').write('appended')",
    "open(PATH, 'r+').write('overwritten')", "import pathlib\npathlib.Path(PATH).write_text('overwritten')",
    "os.open(PATH, os.O_WRONLY | os.O_TRUNC)", "os.truncate(PATH, 0)", "os.chmod(PATH, 0o777)",
    "open('mine', 'w').write('x')\nimport shutil\nshutil.copy('mine', PATH)",
    "os.symlink(PATH, 'link')\nopen('link', 'w').write('through a link')",
    "os.link(PATH, 'hard')\nopen('hard', 'w').write('through a hard link')",
    "open(os.path.join(os.path.dirname(PATH), 'new.txt'), 'x').write('new')",
])
def test_files_outside_the_folder_are_not_written(tmp_path, write):
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    os.chmod(keep, 0o644)
    result = run_program(f"import os\nPATH = {str(keep)!r}\n{write}")
    assert result.status == "failed" and "PermissionError" in result.output
    assert keep.read_text() == "precious" and oct(keep.stat().st_mode)[-3:] == "644"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_the_program_may_use_its_own_folder_which_is_removed_afterwards():
    program = ("import os, pathlib, shutil, tempfile\n"
               "print('folder', os.getcwd())\n"
               "pathlib.Path('notes.txt').write_text('hello')\n"
               "os.mkdir('sub')\n"
               "os.rename('notes.txt', 'sub/notes.txt')\n"
               "assert open('sub/notes.txt').read() == 'hello'\n"
               "with tempfile.NamedTemporaryFile('w') as f:\n"
               "    f.write('scratch')\n"
               "os.remove('sub/notes.txt')\n"
               "os.rmdir('sub')\n"
               "assert open('/proc/self/status').read()  # reading elsewhere is allowed\n")
    result = run_program(program)
    assert result.passed, result.output
    folder = re.search(r"folder (\S+)", result.output).group(1)
    assert Path(folder).name.startswith("picochat-sandbox-") and not Path(folder).exists()


@pytest.fixture
def listener():
    """A TCP server on 127.0.0.1, and a function that says what reached it. The kernel completes connections
    into the backlog without accept(), so asking after the program has ended is enough."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)

    def received() -> bytes | None:
        try:
            connection, _ = server.accept()
        except socket.timeout:
            return None
        with connection:
            return connection.recv(100)

    yield server.getsockname()[1], received
    server.close()


@pytest.mark.parametrize("connect", [
    "import socket\nsocket.create_connection(('127.0.0.1', PORT)).sendall(b'hello')",
    "import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', PORT))\ns.send(b'hello')",
    "import asyncio\nasyncio.run(asyncio.open_connection('127.0.0.1', PORT))",
])
def test_the_network_is_unreachable(listener, connect):
    port, received = listener
    result = run_program(connect.replace("PORT", str(port)))
    assert result.status == "failed" and re.search(r"PermissionError|Network is unreachable", result.output)
    assert received() is None
    with socket.create_connection(("127.0.0.1", port)) as client:  # the listener does hear a client
        client.sendall(b"hello")
    assert received() == b"hello"


def test_sockets_are_refused_even_without_a_network_namespace():
    result = run_program("import socket\nsocket.socket()")
    assert result.status == "failed" and "PermissionError: network access is turned off" in result.output


def can_unshare_network() -> bool:
    """unshare(CLONE_NEWNET) needs CAP_SYS_ADMIN (bit 21 of the effective capabilities)."""
    capabilities = re.search(r"CapEff:\s*([0-9a-f]+)", Path("/proc/self/status").read_text()).group(1)
    return bool(int(capabilities, 16) >> 21 & 1)


@pytest.mark.skipif(not can_unshare_network(), reason="a new network namespace needs CAP_SYS_ADMIN")
def test_the_child_has_its_own_network_namespace(listener):
    result = run_program("import os\nprint('namespace', os.readlink('/proc/self/ns/net'))")
    assert result.passed and os.readlink("/proc/self/ns/net") not in result.output
    assert "namespace net:[" in result.output
    # A program that gets around the socket guard (the real class is among NoSocket's bases) finds no network.
    port, received = listener
    around = ("import socket\nreal = socket.socket.__mro__[2]\ns = real(socket.AF_INET, socket.SOCK_STREAM)\n"
              f"s.connect(('127.0.0.1', {port}))\ns.send(b'hello')")
    result = run_program(around)
    assert result.status == "failed" and "Network is unreachable" in result.output and received() is None


@pytest.mark.parametrize("attack", [
    "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
    "import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)",
    "import os, signal\nsignal.pidfd_send_signal(os.pidfd_open(os.getppid()), signal.SIGKILL)",
    "import os\nos.setsid()",
])
def test_killing_the_caller_or_leaving_the_group_is_refused(attack):
    result = run_program(attack)
    assert result.status == "failed" and "PermissionError" in result.output  # and we are still here


def test_no_secrets_reach_the_program(monkeypatch):
    monkeypatch.setenv("PICOCHAT_TEST_SECRET", "hunter2")
    result = run_program("import os\nprint(sorted(os.environ))\nprint(os.environ['HOME'])")
    assert result.passed and "PICOCHAT_TEST_SECRET" not in result.output
    assert "picochat-sandbox-" in result.output  # HOME is the program's folder


def test_bad_arguments_are_user_errors():
    for arguments in [dict(timeout=0), dict(memory_mb=-1), dict(max_file_mb=0)]:
        with pytest.raises(UserError, match="positive timeout"):
            run_program("pass", **arguments)


def test_a_sandbox_that_cannot_run_says_error_not_failed(monkeypatch):
    monkeypatch.setattr(sandbox.sys, "executable", "/nonexistent/python")
    missing = run_program("pass")
    assert missing.status == "error" and "/nonexistent/python" in missing.output
    monkeypatch.undo()
    broken = sandbox.child_settings
    monkeypatch.setattr(sandbox, "child_settings", lambda *args: {**broken(*args), "memory_bytes": "lots"})
    result = run_program("pass")
    assert result.status == "error" and "sandbox setup failed" in result.output
