"""Running untrusted Python in a per-subtask scratch directory.

Each run is a fresh ``python -I`` child in its own session and process group, with
rlimits on CPU time, address space, processes, file size and open files, a wall
clock enforced by the parent (the whole group is killed), and output captured up to
a byte limit. Before the code starts, the child installs a seccomp filter that
refuses every socket except AF_UNIX, so the code has no network even though the
worker itself talks to the broker. All of it is set up by a small launcher that runs
in the child before ``exec``, so no ``preexec_fn`` runs in the threaded worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from agentmesh_shared.settings import Settings

# The launcher runs inside the child, before the user's code. It is plain Python
# (stdlib + ctypes) so it needs nothing from the worker's environment.
_LAUNCHER = r"""
import ctypes, json, os, platform, resource, struct, sys
cfg = json.loads(sys.argv[1])
for name, value in cfg["rlimits"].items():
    resource.setrlimit(getattr(resource, name), (value, value))
# seccomp: socket(domain != AF_UNIX) -> EACCES
ARCH = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}
arch = ARCH.get(platform.machine())
if arch is None:
    sys.exit("sandbox: unsupported architecture " + platform.machine())
audit_arch, nr_socket = arch
def stmt(code, k): return struct.pack("HBBI", code, 0, 0, k)
def jump(code, k, jt, jf): return struct.pack("HBBI", code, jt, jf, k)
LD, JEQ, RET = 0x20, 0x15, 0x06
ALLOW, KILL, ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
prog = b"".join([
    stmt(LD, 4), jump(JEQ, audit_arch, 1, 0), stmt(RET, KILL),
    stmt(LD, 0), jump(JEQ, nr_socket, 0, 4),
    stmt(LD, 16), jump(JEQ, 1, 0, 1), stmt(RET, ALLOW),
    stmt(RET, ERRNO | 13),
    stmt(RET, ALLOW),
])
buf = ctypes.create_string_buffer(prog)
class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
fprog = SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or \
        libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
    sys.exit("sandbox: could not install the network filter: errno %d" % ctypes.get_errno())
os.execv(sys.executable, [sys.executable, "-I", "-B", *cfg["argv"]])
"""


@dataclass(frozen=True)
class RunResult:
    exit_code: int | None
    stdout: str
    stderr: str
    duration_s: float
    timed_out: bool
    truncated: bool

    def describe(self) -> str:
        status = "timed out" if self.timed_out else f"exit code {self.exit_code}"
        parts = [f"{status} after {self.duration_s:.2f}s"]
        if self.stdout:
            parts.append(f"stdout:\n{self.stdout}")
        if self.stderr:
            parts.append(f"stderr:\n{self.stderr}")
        if self.truncated:
            parts.append("(output truncated)")
        return "\n".join(parts)


class Sandbox:
    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.settings = settings
        self.workdir = workdir

    def rlimits(self) -> dict[str, int]:
        s = self.settings
        return {
            "RLIMIT_CPU": s.sandbox_cpu_s,
            "RLIMIT_AS": s.sandbox_memory_mb * 1024 * 1024,
            "RLIMIT_NPROC": s.sandbox_max_procs,
            "RLIMIT_FSIZE": s.sandbox_file_mb * 1024 * 1024,
            "RLIMIT_NOFILE": 256,
            "RLIMIT_CORE": 0,
        }

    def run_python(self, script: str, args: list[str] | None = None, stdin: str = "") -> RunResult:
        cfg = {"rlimits": self.rlimits(), "argv": [script, *(args or [])]}
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(self.workdir),
            "TMPDIR": str(self.workdir),
            "LANG": "C.UTF-8",
            "PYTHONIOENCODING": "utf-8",
        }
        limit = self.settings.sandbox_output_bytes
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _LAUNCHER, json.dumps(cfg)],
            cwd=self.workdir,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
        )
        timed_out = False
        try:
            out, err = proc.communicate(stdin.encode(), timeout=self.settings.sandbox_wall_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            out, err = proc.communicate()
        duration = time.monotonic() - started
        truncated = len(out) > limit or len(err) > limit
        return RunResult(
            exit_code=None if timed_out else proc.returncode,
            stdout=out[:limit].decode("utf-8", errors="replace"),
            stderr=err[:limit].decode("utf-8", errors="replace"),
            duration_s=duration,
            timed_out=timed_out,
            truncated=truncated,
        )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
