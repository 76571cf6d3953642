"""Run untrusted generated code: a subprocess with time, memory and file-size limits, no
network and no writes outside its own scratch folder.

Layers, each enough for honest mistakes and together a real barrier for a small model's
code: a fresh temporary working folder; rlimits (CPU seconds, address space, file size,
no core dumps); a wall-clock timeout that kills the whole process group; a Python audit
hook installed before the code runs (audit hooks cannot be removed) that refuses sockets,
subprocesses and any file opened for writing outside the scratch folder; and, where the
machine allows it (root on Linux), a fresh network namespace with no interfaces.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass

_GUARD = textwrap.dedent(
    r"""
    import os, resource, sys
    _root = os.path.realpath(os.getcwd())
    resource.setrlimit(resource.RLIMIT_AS, ({mem}, {mem}))
    resource.setrlimit(resource.RLIMIT_CPU, ({cpu}, {cpu}))
    resource.setrlimit(resource.RLIMIT_FSIZE, ({fsize}, {fsize}))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    class SandboxViolation(Exception):
        pass

    def _deny(reason):
        sys.stderr.write("SANDBOX_VIOLATION " + reason + "\n")
        sys.stderr.flush()
        os._exit(121)

    def _audit(event, args):
        if event == "open":
            path, mode = args[0], args[1]
            writing = isinstance(mode, str) and any(c in mode for c in "wax+")
            if isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND):
                writing = True
            if writing and isinstance(path, (str, bytes)):
                full = os.path.realpath(os.fsdecode(path))
                if not (full == _root or full.startswith(_root + os.sep)):
                    _deny("write outside the sandbox: " + full)
        elif event.startswith("socket.") or event in ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.fork", "os.forkpty", "pty.spawn"):
            _deny("forbidden operation: " + event)
        elif event in ("os.remove", "os.rmdir", "os.rename", "os.replace", "shutil.rmtree", "os.chmod", "os.mkdir", "os.symlink", "os.link", "os.truncate"):
            for p in args[:2]:
                if isinstance(p, (str, bytes)):
                    full = os.path.realpath(os.fsdecode(p))
                    if not (full == _root or full.startswith(_root + os.sep)):
                        _deny(event + " outside the sandbox: " + full)

    sys.addaudithook(_audit)
    del _audit
    """
)


@dataclass
class SandboxResult:
    status: str  # passed | failed | timeout | violation | memory
    detail: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@functools.cache
def _network_isolation_prefix() -> tuple[str, ...]:
    unshare = shutil.which("unshare")
    if unshare and hasattr(os, "geteuid") and os.geteuid() == 0:
        probe = subprocess.run([unshare, "--net", "true"], capture_output=True)
        if probe.returncode == 0:
            return (unshare, "--net")
    return ()


def run_code(
    code: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    cpu_s: int | None = None,
    file_size_mb: int = 16,
) -> SandboxResult:
    """Run ``code`` as a Python program; 'passed' means it exited 0 within the limits."""
    import time

    guard = _GUARD.format(
        mem=memory_mb * 2**20, cpu=int(cpu_s or max(1, timeout_s)) + 1, fsize=file_size_mb * 2**20
    )
    with tempfile.TemporaryDirectory(prefix="zeda-sandbox-") as scratch:
        program = os.path.join(scratch, "program.py")
        with open(program, "w") as f:
            f.write(guard + "\n" + code + "\n")
        env = {
            "PATH": "/usr/bin:/bin",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONHASHSEED": "0",
            "HOME": scratch,
        }
        start = time.perf_counter()
        proc = subprocess.Popen(
            [*_network_isolation_prefix(), sys.executable, "-I", program],
            cwd=scratch,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return SandboxResult(
                "timeout", f"killed after {timeout_s:.1f}s", time.perf_counter() - start
            )
        seconds = time.perf_counter() - start
    text = err.decode(errors="replace")
    if "SANDBOX_VIOLATION" in text:
        reason = text.split("SANDBOX_VIOLATION", 1)[1].strip().splitlines()[0]
        return SandboxResult("violation", reason, seconds)
    if proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return SandboxResult("timeout", "CPU time limit", seconds)
    if "MemoryError" in text:
        return SandboxResult("memory", "memory limit", seconds)
    if proc.returncode == 0:
        return SandboxResult("passed", "", seconds)
    return SandboxResult(
        "failed",
        text.strip().splitlines()[-1] if text.strip() else f"exit {proc.returncode}",
        seconds,
    )


def check_program(solution: str, tests: str, **limits) -> SandboxResult:
    """Solution followed by its tests (asserts or a ``check`` harness) in one sandboxed run."""
    return run_code(solution + "\n\n" + tests, **limits)
