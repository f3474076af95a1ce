"""The per-run supervisor: runs one program and kills everything it started.

Standard library only (it runs without ``site``). The sandbox server starts one
*launcher* per replica, ``python -I -S supervisor.py --launcher FD``: a
single-threaded process that holds nothing of any run and does one thing, fork. For
each run the server passes it one end of a fresh socket pair (``SCM_RIGHTS`` over the
control socket FD); the launcher forks, and the child is that run's supervisor: it
reads the run's configuration and stdin from its socket, supervises the program and
writes one JSON line with the outcome back. The supervisor forks again for the
program, which runs in that fork of this interpreter, prepared to be what
``python -I -B SCRIPT`` would be (``_prepare_interpreter``): a run so costs two forks
instead of two interpreters' starts, and the server, which is threaded and holds
other runs' requests, is never forked. ``python -I -S supervisor.py CONFIG`` (stdin on stdin,
the outcome on stdout) runs one run without a launcher.

Isolation, without capabilities:

- The supervisor is a child subreaper and enters a Landlock domain of its own that
  scopes signals and abstract unix sockets. The program runs in a nested domain that
  also limits the filesystem (read-only system paths, read-write only the run's own
  directory) and forbids TCP bind/connect. A domain can signal only itself and the
  domains nested in it, so ``kill(-1, SIGKILL)`` from the supervisor reaches exactly
  the run's processes — ``setsid`` or double-forked ones included — and nothing the
  program starts can signal the server, another run or the supervisor; nor can it
  ptrace (or read ``/proc/<pid>/mem|environ`` of) anything outside its domain.
- rlimits on CPU time, memory, file size, open files, core dumps and processes; a
  seccomp filter that refuses every socket but ``AF_UNIX`` (the container's profile
  does too).
- The wall clock is the supervisor's: when it passes, or as soon as the program
  exits, the run's whole tree is killed, so the answer never waits on pipes held by
  a grandchild.
"""

from __future__ import annotations

import atexit
import builtins
import contextlib
import ctypes
import errno
import gc
import importlib
import importlib.machinery
import io
import json
import os
import platform
import resource
import selectors
import signal
import site
import socket
import struct
import sys
import threading
import time
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# --- Landlock (include/uapi/linux/landlock.h) -------------------------------------
_SYS = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446)}
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1, 2, 4, 8
_FS_TRUNCATE = 1 << 14
# Every filesystem right of ABI 1..5, by the ABI that added it.
_FS_ALL = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1}
_FS_ALL_LATEST = (1 << 16) - 1
_NET_BIND_TCP, _NET_CONNECT_TCP = 1, 2
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1, 2
MIN_ABI = 6  # signal and abstract-socket scoping

_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _PR_SET_CHILD_SUBREAPER = 38, 22, 36
_PR_SET_DUMPABLE = 4
_MAX_FRAME = 16 * 1024 * 1024
# Standard-library modules that model-written programs import most, beyond those this
# file already holds. The launcher imports them once, so a program's ``import`` of
# one is a lookup in the fork instead of a load (hashlib alone, which maps libcrypto,
# was ~2.7 ms of a run's ~15 ms of CPU). Each run is a fresh fork of the launcher,
# which never runs a program's code: no run sees what another did to these modules;
# ``random`` reseeds itself in every fork (``os.register_at_fork``).
PRELOADED = (
    "base64",
    "bisect",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "fractions",
    "hashlib",
    "heapq",
    "pprint",
    "random",
    "statistics",
    "string",
    "textwrap",
)
_SECCOMP_MODE_FILTER = 2

_libc = ctypes.CDLL(None, use_errno=True)


class SetupError(RuntimeError):
    pass


def _syscall_numbers() -> tuple[int, int, int]:
    numbers = _SYS.get(platform.machine())
    if numbers is None:
        msg = f"unsupported architecture {platform.machine()}"
        raise SetupError(msg)
    return numbers


def landlock_abi() -> int:
    """The kernel's Landlock ABI version (0: not available)."""
    create, _, _ = _syscall_numbers()
    version = _libc.syscall(create, None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION)
    return max(int(version), 0)


def _prctl(option: int, arg: int | ctypes.c_void_p = 0) -> None:
    if _libc.prctl(option, arg, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        msg = f"prctl({option}) failed: {os.strerror(code)}"
        raise SetupError(msg)


def landlock_restrict(
    abi: int,
    *,
    read_paths: Sequence[str] = (),
    write_paths: Sequence[str] = (),
    filesystem: bool,
) -> None:
    """Enter a new Landlock domain that scopes signals and abstract unix sockets and,
    with ``filesystem``, allows only reading ``read_paths`` and writing ``write_paths``
    (plus ``/dev/null``) and no TCP at all."""
    create, add_rule, restrict_self = _syscall_numbers()
    fs_all = _FS_ALL.get(abi, _FS_ALL_LATEST) if filesystem else 0
    net_all = (_NET_BIND_TCP | _NET_CONNECT_TCP) if filesystem else 0
    attr = struct.pack("QQQ", fs_all, net_all, _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL)
    buf = ctypes.create_string_buffer(attr)
    fd = _libc.syscall(create, buf, ctypes.c_size_t(len(attr)), 0)
    if fd < 0:
        msg = f"landlock_create_ruleset failed: {os.strerror(ctypes.get_errno())}"
        raise SetupError(msg)
    try:
        file_rights = _FS_EXECUTE | _FS_READ_FILE
        read_rights = file_rights | _FS_READ_DIR
        rules = [(p, read_rights) for p in read_paths]
        rules += [(p, fs_all) for p in write_paths]
        rules.append(("/dev/null", (_FS_READ_FILE | _FS_WRITE_FILE | _FS_TRUNCATE) & fs_all))
        for path, wanted in rules if filesystem else []:
            try:
                target = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                rights = wanted
                if not Path(path).is_dir():
                    rights &= _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE
                rule = ctypes.create_string_buffer(struct.pack("=Qi", rights, target))
                if _libc.syscall(add_rule, fd, _RULE_PATH_BENEATH, rule, 0) != 0:
                    msg = f"landlock_add_rule({path}) failed: {os.strerror(ctypes.get_errno())}"
                    raise SetupError(msg)
            finally:
                os.close(target)
        _prctl(_PR_SET_NO_NEW_PRIVS, 1)
        if _libc.syscall(restrict_self, fd, 0) != 0:
            msg = f"landlock_restrict_self failed: {os.strerror(ctypes.get_errno())}"
            raise SetupError(msg)
    finally:
        os.close(fd)


def socket_filter() -> None:
    """A seccomp filter: ``socket(domain != AF_UNIX)`` fails with EACCES."""
    arches = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}
    audit_arch, nr_socket = arches[platform.machine()]

    def stmt(code: int, k: int) -> bytes:
        return struct.pack("HBBI", code, 0, 0, k)

    def jump(code: int, k: int, jt: int, jf: int) -> bytes:
        return struct.pack("HBBI", code, jt, jf, k)

    ld, jeq, ret = 0x20, 0x15, 0x06
    allow, kill, eacces = 0x7FFF0000, 0x80000000, 0x00050000 | errno.EACCES
    prog = b"".join(
        [
            stmt(ld, 4),
            jump(jeq, audit_arch, 1, 0),
            stmt(ret, kill),
            stmt(ld, 0),
            jump(jeq, nr_socket, 0, 4),
            stmt(ld, 16),
            jump(jeq, 1, 0, 1),
            stmt(ret, allow),
            stmt(ret, eacces),
            stmt(ret, allow),
        ]
    )
    buf = ctypes.create_string_buffer(prog)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    if _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        msg = f"seccomp filter failed: {os.strerror(ctypes.get_errno())}"
        raise SetupError(msg)


def tasks_of_uid(uid: int) -> int:
    """Threads of ``uid`` visible here: what RLIMIT_NPROC already counts."""
    count = 0
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                if entry.stat(follow_symlinks=False).st_uid == uid:
                    # A /proc/<pid>/task directory's link count is 2 + its threads:
                    # one stat, where listing it made an entry per thread (every run
                    # does this, over every process). os, not pathlib, for the same.
                    count += os.stat(f"/proc/{entry.name}/task").st_nlink - 2  # noqa: PTH116
            except OSError:  # gone meanwhile
                continue
    return count


def _child(cfg: dict[str, Any], abi: int, fds: tuple[int, int, int]) -> None:
    """In the forked child: limits, the run's domain, then the program. Never returns."""
    try:
        for fd, target in zip(fds, (0, 1, 2), strict=True):
            os.dup2(fd, target)
        os.setsid()
        os.chdir(cfg["workdir"])
        for name, value in cfg["rlimits"].items():
            resource.setrlimit(getattr(resource, name), (value, value))
        landlock_restrict(
            abi, read_paths=cfg["read_paths"], write_paths=[cfg["workdir"]], filesystem=True
        )
        socket_filter()
        # Dumpable again, as an exec'd program would be (the launcher's setting is
        # inherited): without it the program's own /proc/self entries are root's.
        # Only its own domain, nested in this one, could trace it.
        _prctl(_PR_SET_DUMPABLE, 1)
        _prepare_interpreter(cfg)
    except BaseException as err:  # noqa: BLE001 - report anything, then leave at once
        os.write(2, f"sandbox: could not start the program: {err}\n".encode())
        os._exit(127)
    os._exit(_run_program(cfg["argv"]))


def _prepare_interpreter(cfg: dict[str, Any]) -> None:
    """Make this forked interpreter what ``python -I -B SCRIPT ARGS`` would be at the
    moment it runs SCRIPT, so the program need not start an interpreter of its own
    (that start was most of a run's CPU): only its stdio on 0-2, the run's
    environment and argv, no bytecode writing, and no descriptor of the supervisor."""
    # Every descriptor but stdio: the run's socket (it could forge its outcome), the
    # pipes' other ends, the selector. close_range(2) where the kernel has it.
    os.closerange(3, 1 << 20)
    os.environ.clear()
    os.environ.update(cfg["env"])
    sys.dont_write_bytecode = True
    sys.argv = list(cfg["argv"])
    sys.orig_argv = [sys.executable, "-I", "-B", *cfg["argv"]]
    # The streams an interpreter makes for a pipe in a UTF-8 locale.
    streams = []
    for fd, name, mode, errors in (
        (0, "<stdin>", "rb", "surrogateescape"),
        (1, "<stdout>", "wb", "surrogateescape"),
        (2, "<stderr>", "wb", "backslashreplace"),
    ):
        raw = io.FileIO(fd, mode, closefd=False)
        raw.name = name
        buffered: io.BufferedReader | io.BufferedWriter = (
            io.BufferedReader(raw) if fd == 0 else io.BufferedWriter(raw)
        )
        streams.append(
            io.TextIOWrapper(buffered, encoding="utf-8", errors=errors, line_buffering=fd == 2)
        )
    sys.stdin, sys.stdout, sys.stderr = streams
    for name, stream in zip(("__stdin__", "__stdout__", "__stderr__"), streams, strict=True):
        setattr(sys, name, stream)
    # Nothing of the supervisor's is left to run at the program's exit.
    atexit._clear()


def _run_program(argv: Sequence[str]) -> int:
    """Run ``argv[0]`` as ``__main__`` and end as the interpreter would; the exit code."""
    path = str(Path(argv[0]).absolute())
    main = types.ModuleType("__main__")
    main.__file__ = path
    main.__cached__ = None  # type: ignore[attr-defined]
    main.__loader__ = importlib.machinery.SourceFileLoader("__main__", path)
    main.__builtins__ = builtins  # type: ignore[attr-defined]
    sys.modules["__main__"] = main
    code = 0
    interrupted = False
    try:
        compiled = compile(Path(path).read_bytes(), path, "exec", dont_inherit=True)
        exec(compiled, main.__dict__)  # noqa: S102 - running the program is the point
    except SystemExit as stop:
        code = _exit_status(stop)
    except BaseException as err:  # noqa: BLE001 - reported as the interpreter would
        # The traceback starts at the program's own frame (or at none, for a
        # SyntaxError), as it would under ``python SCRIPT``.
        tb = err.__traceback__.tb_next if err.__traceback__ is not None else None
        err.with_traceback(None if isinstance(err, SyntaxError) else tb)
        sys.excepthook(type(err), err, err.__traceback__)
        interrupted = isinstance(err, KeyboardInterrupt)
        code = 1
    # The interpreter's own ending: non-daemon threads, atexit, then the streams.
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            code = 120
    if interrupted:
        # As CPython does: die of SIGINT, so the parent sees the signal.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return code


def _exit_status(stop: SystemExit) -> int:
    """What the interpreter exits with for an uncaught ``SystemExit``."""
    value = stop.code
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    with contextlib.suppress(Exception):
        sys.stderr.write(f"{value}\n")
    return 1


def _kill_run() -> None:
    """SIGKILL every process of the run: the domain's scope limits ``kill(-1)`` to it."""
    with contextlib.suppress(ProcessLookupError):  # nothing left
        os.kill(-1, signal.SIGKILL)


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def supervise(cfg: dict[str, Any], stdin_data: bytes) -> dict[str, Any]:
    abi = landlock_abi()
    if abi < MIN_ABI:
        msg = f"the kernel's Landlock ABI is {abi}; the sandbox needs {MIN_ABI} or later"
        raise SetupError(msg)
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    landlock_restrict(abi, filesystem=False)
    uid = os.getuid()
    cfg["rlimits"]["RLIMIT_NPROC"] = tasks_of_uid(uid) + int(cfg["max_procs"])
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        for fd in (in_w, out_r, err_r):
            os.close(fd)
        _child(cfg, abi, (in_r, out_w, err_w))
    for fd in (in_r, out_w, err_w):
        os.close(fd)

    def feed() -> None:
        try:
            os.write(in_w, stdin_data) if stdin_data else None
        except OSError:
            pass
        finally:
            os.close(in_w)

    threading.Thread(target=feed, daemon=True).start()
    limit = int(cfg["output_bytes"])
    wall = float(cfg["wall_s"])
    buffers = {out_r: bytearray(), err_r: bytearray()}
    truncated = False
    exit_code: int | None = None
    timed_out = False
    selector = selectors.DefaultSelector()
    for fd in buffers:
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
    drain_until: float | None = None
    while selector.get_map():
        now = time.monotonic()
        if exit_code is None and not timed_out:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                exit_code = os.waitstatus_to_exitcode(status)
            elif now - started >= wall:
                timed_out = True
            if exit_code is not None or timed_out:
                # The program is over: whatever it left behind goes with it, and
                # the pipes close within moments, never at a grandchild's pace.
                _kill_run()
                drain_until = now + 1.0
        if drain_until is not None and now >= drain_until:
            break
        for key, _ in selector.select(timeout=0.02):
            fd = int(key.fd)
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                selector.unregister(fd)
                continue
            room = limit + 1 - len(buffers[fd])
            if room > 0:
                buffers[fd] += chunk[:room]
            if len(chunk) > room:
                truncated = True
    if exit_code is None and not timed_out:
        _, status = os.waitpid(pid, 0)
        exit_code = os.waitstatus_to_exitcode(status)
    _kill_run()
    _reap()
    duration = time.monotonic() - started
    out, err = bytes(buffers[out_r]), bytes(buffers[err_r])
    truncated = truncated or len(out) > limit or len(err) > limit
    return {
        "exit_code": None if timed_out else exit_code,
        "stdout": out[:limit].decode("utf-8", errors="replace"),
        "stderr": err[:limit].decode("utf-8", errors="replace"),
        "duration_s": duration,
        "timed_out": timed_out,
        "truncated": truncated,
    }


# The sandbox protocol's framing (sandbox_wire.py) once more: this file runs as a
# script under ``python -I -S``, without the package on its path, so it cannot import
# it; the server uses these two functions for the run's socket.
def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(size - len(data), 1 << 20))
        if not chunk:
            msg = f"the run's socket closed with {size - len(data)} of {size} bytes to come"
            raise SetupError(msg)
        data += chunk
    return bytes(data)


def recv_frame(sock: socket.socket) -> bytes:
    """One frame: a 4-byte big-endian length and that many bytes."""
    size = struct.unpack(">I", _recv_exactly(sock, 4))[0]
    if size > _MAX_FRAME:
        msg = f"frame of {size} bytes is over the {_MAX_FRAME}-byte limit"
        raise SetupError(msg)
    return _recv_exactly(sock, size)


def send_frame(sock: socket.socket, data: bytes) -> None:
    sock.sendall(struct.pack(">I", len(data)) + data)


def _outcome(cfg: dict[str, Any], stdin_data: bytes) -> dict[str, Any]:
    try:
        return supervise(cfg, stdin_data)
    except SetupError as err:
        return {"setup_error": str(err)}


def _supervise_over(sock: socket.socket) -> None:
    """In a child of the launcher: one run, its configuration and stdin read from
    ``sock`` and its outcome written back as one JSON line."""
    try:
        cfg = json.loads(recv_frame(sock))
        stdin_data = recv_frame(sock)
        result = _outcome(cfg, stdin_data)
    except (SetupError, ValueError, OSError) as err:
        result = {"setup_error": f"the run's request could not be read: {err}"}
    sock.sendall(json.dumps(result).encode() + b"\n")


def _warm_up() -> None:
    """Load what every run would load, then keep the collector off what is loaded.

    ``gc.freeze`` moves every object alive now out of the collector's reach, so a
    collection in a forked supervisor or program does not write to (and so copy) the
    pages the launcher's objects live on: the fork-without-exec use CPython's docs
    give it for.
    """
    for name in PRELOADED:
        try:
            importlib.import_module(name)
        except ImportError:  # a trimmed interpreter: the program imports it, or fails to
            continue
    gc.collect()
    gc.freeze()


def launcher(control_fd: int) -> None:
    """Fork one supervisor per file descriptor received on ``control_fd``; return when
    the server closes its end (the server's exit closes it too)."""
    # Nothing of the same uid may read this process's memory through /proc. The
    # supervisors forked from it inherit that; only a program's process, in its own
    # nested Landlock domain, is made dumpable again (``_child``).
    _prctl(_PR_SET_DUMPABLE, 0)
    control = socket.socket(fileno=control_fd)
    control.set_inheritable(False)
    # Each supervisor is reaped as it exits (never waited for in line), so its CPU
    # time is accounted to the launcher's children as a subprocess's would be.
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: _reap())
    _warm_up()
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(control, 1, 4)
        except OSError:
            return
        # Close-on-exec before anything forks: the program must never hold the socket
        # its supervisor answers on (it could forge the outcome). Its process closes
        # every descriptor but 0-2 as well; this keeps the socket from any process a
        # supervisor may exec. recv_fds ignores MSG_CMSG_CLOEXEC in Python 3.11.
        for fd in fds:
            os.set_inheritable(fd, False)
        if not msg:
            for fd in fds:
                os.close(fd)
            return
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            continue
        try:
            pid = os.fork()
        except OSError as err:
            # The pids limit: the server reads the run's socket closing unanswered.
            os.write(2, f"sandbox launcher: fork failed: {err}\n".encode())
            os.close(fds[0])
            continue
        if pid == 0:
            code = 0
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                control.close()
                with socket.socket(fileno=fds[0]) as sock:
                    _supervise_over(sock)
            except BaseException as err:  # noqa: BLE001 - a child must never return
                os.write(2, f"sandbox supervisor: {err!r}\n".encode())
                code = 1
            os._exit(code)
        os.close(fds[0])


def main() -> None:
    # This interpreter runs under ``-S``: every module this file uses is imported
    # above, from the standard library alone. site-packages join the path now, for
    # the programs, which run as under ``python -I``.
    site.main()
    if len(sys.argv) == 3 and sys.argv[1] == "--launcher":
        launcher(int(sys.argv[2]))
        return
    cfg = json.loads(sys.argv[1])
    result = _outcome(cfg, sys.stdin.buffer.read())
    print(json.dumps(result), flush=True)
    if "setup_error" in result:
        sys.exit(3)


if __name__ == "__main__":
    main()
