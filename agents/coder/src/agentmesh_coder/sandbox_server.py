"""The sandbox service: runs the coder's Python, one supervised run per request.

It listens on a unix socket (``<socket dir>/<host name>.sock``, one per replica) in a
volume it shares only with the coder; the container has no network at all. Each
request carries the run's files; the server writes them into a fresh directory
under its scratch root, has its launcher fork a supervisor (``supervisor.py``) for
the run, and answers with the outcome, the files as the run left them, and its span
of the run. The launcher is a single-threaded interpreter the server starts once
(again if it dies); the threaded server itself never forks a run.

The server is not dumpable (``PR_SET_DUMPABLE=0``): processes of the same uid cannot
read its memory or environment through ``/proc``. It refuses to start on a kernel
without Landlock ABI 6 (the runs' isolation depends on it).

    sandbox-server            serve
    sandbox-server --check    exit 0 if this replica answers a ping (the healthcheck)
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import socketserver
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Any

from agentmesh_shared.settings import Settings, load_settings
from pydantic import Field, TypeAdapter, ValidationError

from agentmesh_coder import sandbox_wire, supervisor
from agentmesh_coder.sandbox_protocol import (
    MAX_FILE_CHARS,
    MAX_FILES,
    PROTOCOL_VERSION,
    PingRequest,
    ProtocolError,
    Reply,
    RunOutcome,
    RunRequest,
    SpanRecord,
    recv_frame,
    send_frame,
)

log = logging.getLogger("agentmesh.sandbox")

_PR_SET_DUMPABLE = 4
# What a run may read (and execute): the system and the Python installation. Not
# /tmp (the runs' directories), not /run (the sockets), not /home.
READ_PATHS = ("/usr", "/etc", "/opt", "/lib", "/lib64", "/bin", "/sbin", "/proc")
READ_FILES = ("/dev/urandom", "/dev/random", "/dev/zero")
_REQUEST = TypeAdapter(Annotated[PingRequest | RunRequest, Field(discriminator="op")])


def replica_name(settings: Settings) -> str:
    return settings.sandbox_replica or socket.gethostname()


def socket_path(settings: Settings, replica: str | None = None) -> Path:
    return settings.sandbox_socket_dir / f"{replica or replica_name(settings)}.sock"


# The launcher's and the supervisors' environment: nothing of the server's.
_LAUNCHER_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


class Launcher:
    """The replica's one launcher process (``supervisor.py --launcher``), which forks a
    supervisor for each run it is handed.

    :meth:`connect` hands it one end of a new socket pair and returns the other: the
    run's supervisor reads its configuration and stdin from it and answers on it. The
    launcher is started on first use and again whenever it is found dead.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def _start(self) -> None:
        self._stop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    "-S",
                    supervisor.__file__,
                    "--launcher",
                    str(theirs.fileno()),
                ],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                cwd="/",
                env=_LAUNCHER_ENV,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._control = ours
        log.info("sandbox launcher started (pid %d)", self._proc.pid)

    def connect(self) -> socket.socket:
        """A socket to a newly forked supervisor."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self._lock:
                for attempt in (1, 2):
                    if self._control is None or self._proc is None or self._proc.poll() is not None:
                        if self._proc is not None:
                            log.warning(
                                "sandbox launcher gone (exit %s): starting another",
                                self._proc.returncode,
                            )
                        self._start()
                    assert self._control is not None
                    try:
                        socket.send_fds(self._control, [b"r"], [theirs.fileno()])
                        break
                    except OSError:
                        if attempt == 2:
                            raise
                        self._stop()
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return ours

    def _stop(self) -> None:
        if self._control is not None:
            self._control.close()  # the launcher leaves when it reads the end
            self._control = None
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        with self._lock:
            self._stop()


class SandboxRunner:
    """Runs one request in a directory of its own, under a supervisor."""

    def __init__(self, settings: Settings, replica: str | None = None) -> None:
        self.settings = settings
        self.replica = replica or socket.gethostname()
        self.slots = threading.BoundedSemaphore(settings.sandbox_concurrency)
        self.launcher = Launcher()

    def close(self) -> None:
        self.launcher.close()

    def rlimits(self) -> dict[str, int]:
        s = self.settings
        return {
            "RLIMIT_CPU": s.sandbox_cpu_s,
            "RLIMIT_AS": s.sandbox_memory_mb * 1024 * 1024,
            "RLIMIT_FSIZE": s.sandbox_file_mb * 1024 * 1024,
            "RLIMIT_NOFILE": 256,
            "RLIMIT_CORE": 0,
        }

    def run(self, request: RunRequest) -> tuple[RunOutcome, SpanRecord | None]:
        started_ns = time.time_ns()
        with self.slots:
            outcome = self._run(request)
        ids = request.trace_ids()
        span = None
        if ids is not None:
            span = SpanRecord(
                trace_id=ids[0],
                span_id=secrets.token_hex(8),
                parent_span_id=ids[1],
                trace_flags=ids[2],
                name="sandbox run_python",
                start_ns=started_ns,
                end_ns=time.time_ns(),
                attributes={
                    "sandbox.replica": self.replica,
                    "sandbox.script": request.script,
                    "sandbox.exit_code": -1 if outcome.exit_code is None else outcome.exit_code,
                    "sandbox.timed_out": outcome.timed_out,
                    "sandbox.duration_s": round(outcome.duration_s, 4),
                },
                error="timed out" if outcome.timed_out else None,
            )
        return outcome, span

    def _run(self, request: RunRequest) -> RunOutcome:
        root = self.settings.sandbox_scratch_root
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="run-", dir=root))
        try:
            for rel, content in request.files.items():
                target = workdir / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content)
            if not (workdir / request.script).is_file():
                return RunOutcome(
                    exit_code=None,
                    stdout="",
                    stderr=f"{request.script} is not among the run's files",
                    duration_s=0.0,
                    timed_out=False,
                    truncated=False,
                )
            return self._supervise(request, workdir)
        finally:
            _remove_tree(workdir)

    def _supervise(self, request: RunRequest, workdir: Path) -> RunOutcome:
        s = self.settings
        cfg: dict[str, Any] = {
            "workdir": str(workdir),
            "argv": [request.script, *request.args],
            "rlimits": self.rlimits(),
            "max_procs": s.sandbox_max_procs,
            "wall_s": s.sandbox_wall_s,
            "output_bytes": s.sandbox_output_bytes,
            # The interpreter's installation too, wherever it is (a venv outside /opt
            # in development).
            "read_paths": sorted({*READ_PATHS, *READ_FILES, sys.prefix, sys.base_prefix}),
            "env": {
                "PATH": "/opt/venv/bin:/usr/bin:/bin",
                "HOME": str(workdir),
                "TMPDIR": str(workdir),
                "LANG": "C.UTF-8",
                "PYTHONIOENCODING": "utf-8",
            },
        }
        with self.launcher.connect() as conn:
            conn.settimeout(s.sandbox_wall_s + 30)
            try:
                supervisor.send_frame(conn, json.dumps(cfg).encode())
                supervisor.send_frame(conn, request.stdin.encode())
                conn.shutdown(socket.SHUT_WR)
                answer = _read_to_end(conn)
            except OSError as err:
                msg = f"the run's supervisor did not answer: {err}"
                raise RuntimeError(msg) from err
        try:
            result = json.loads(answer.decode().strip().splitlines()[-1])
        except (ValueError, IndexError) as err:
            msg = "the run's supervisor ended without an answer (see the sandbox's log)"
            raise RuntimeError(msg) from err
        if "setup_error" in result:
            msg = f"the run could not be isolated: {result['setup_error']}"
            raise RuntimeError(msg)
        return RunOutcome(**result, files=collect_files(workdir))


def _read_to_end(conn: socket.socket, limit: int = 64 * 1024 * 1024) -> bytes:
    data = bytearray()
    while chunk := conn.recv(1 << 20):
        data += chunk
        if len(data) > limit:
            msg = f"the supervisor's answer is over {limit} bytes"
            raise OSError(msg)
    return bytes(data)


def collect_files(workdir: Path) -> dict[str, str]:
    """The run's regular files (no symlinks, FIFOs or devices followed), as text."""
    files: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(workdir, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            if len(files) >= MAX_FILES:
                return files
            path = Path(dirpath, name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                continue
            with os.fdopen(fd, "rb") as handle:
                if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                    continue
                data = handle.read(MAX_FILE_CHARS * 4)
            text = data.decode("utf-8", errors="replace")[:MAX_FILE_CHARS]
            files[path.relative_to(workdir).as_posix()] = text
    return files


def _remove_tree(path: Path) -> None:
    # A run may have taken its own permissions away: give them back, then remove.
    for dirpath, dirnames, _ in os.walk(path, followlinks=False):
        for name in dirnames:
            try:
                Path(dirpath, name).chmod(0o700, follow_symlinks=False)
            except (OSError, NotImplementedError):
                continue
    shutil.rmtree(path, ignore_errors=True)


class _Handler(socketserver.BaseRequestHandler):
    server: SandboxServer

    def handle(self) -> None:
        conn: socket.socket = self.request
        conn.settimeout(30)
        runner = self.server.runner
        try:
            raw = recv_frame(conn)
        except (ProtocolError, OSError) as err:
            log.warning("bad request frame: %s", err)
            return
        conn.settimeout(None)
        reply = self._answer(raw, runner)
        try:
            send_frame(conn, reply)
        except (ProtocolError, OSError) as err:
            log.warning("could not send the reply: %s", err)

    @staticmethod
    def _answer(raw: bytes, runner: SandboxRunner) -> Reply:
        def fail(message: str) -> Reply:
            return Reply(ok=False, error=message, replica=runner.replica)

        try:
            data = json.loads(raw)
        except ValueError as err:
            return fail(f"the request is not JSON: {err}")
        if not isinstance(data, dict) or data.get("version") != PROTOCOL_VERSION:
            version = data.get("version") if isinstance(data, dict) else None
            return fail(
                f"protocol version {version!r} is not supported: this sandbox speaks "
                f"version {PROTOCOL_VERSION}"
            )
        try:
            request = _REQUEST.validate_python(data)
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
            )
            return fail(f"invalid request: {problems}")
        if isinstance(request, PingRequest):
            return Reply(ok=True, replica=runner.replica)
        try:
            outcome, span = runner.run(request)
        except (OSError, RuntimeError, subprocess.SubprocessError) as err:
            log.exception("run failed")
            return fail(f"the sandbox could not run the program: {err}")
        log.info(
            "run script=%s exit=%s timed_out=%s duration=%.3fs",
            request.script,
            outcome.exit_code,
            outcome.timed_out,
            outcome.duration_s,
        )
        return Reply(ok=True, replica=runner.replica, outcome=outcome, span=span)


class SandboxServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, path: Path, runner: SandboxRunner) -> None:
        self.runner = runner
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        super().__init__(str(path), _Handler)
        # The coder runs under another uid: it may connect, nothing else is shared.
        path.chmod(0o666)

    def server_close(self) -> None:
        super().server_close()
        self.runner.close()


def serve(settings: Settings) -> None:
    abi = supervisor.landlock_abi()
    if abi < supervisor.MIN_ABI:
        sys.exit(
            f"sandbox: the kernel's Landlock ABI is {abi}; runs cannot be isolated "
            f"without ABI {supervisor.MIN_ABI} (Linux 6.12 or later)"
        )
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        sys.exit(f"sandbox: prctl(PR_SET_DUMPABLE) failed: errno {ctypes.get_errno()}")
    path = socket_path(settings)
    server = SandboxServer(path, SandboxRunner(settings, replica_name(settings)))

    def stop(signum: int, _frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info(
        json.dumps(
            {
                "event": "sandbox listening",
                "socket": str(path),
                "landlock_abi": abi,
                "concurrency": settings.sandbox_concurrency,
                "protocol": PROTOCOL_VERSION,
            }
        )
    )
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="agentmesh sandbox: runs the coder's Python")
    parser.add_argument("--check", action="store_true", help="ping this replica and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = load_settings()
    if args.check:
        problem = sandbox_wire.ping(str(socket_path(settings)))
        sys.exit(f"sandbox: {problem}" if problem else 0)
    serve(settings)


if __name__ == "__main__":
    main()
