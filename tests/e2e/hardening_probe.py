#!/usr/bin/env python3
"""Hardening probe: run INSIDE an agent container to verify least privilege.

Standalone (Python 3.11 stdlib only, no project imports) so it can be piped into
any running container:

    docker exec -i CONTAINER python3 - < tests/e2e/hardening_probe.py

It prints one JSON object

    {"ok": bool, "checks": {name: {"ok": bool, "detail": str}}}

and exits 0 if and only if every check passed.

What is checked (see docs/security.md):

* not root; the root filesystem (``/`` and ``/usr``) is read-only;
* ``/proc/self/status``: ``Seccomp: 2`` (filter mode), ``NoNewPrivs: 1``,
  ``CapEff``/``CapPrm``/``CapBnd`` all zero;
* syscalls the agent profile (seccomp-agent.json) denies answer EPERM:
  unshare(CLONE_NEWUSER), unshare(CLONE_NEWNS), mount, ptrace(PTRACE_TRACEME),
  keyctl, bpf, perf_event_open, userfaultfd, io_uring_setup;
* clone3 answers ENOSYS (so glibc falls back to clone, which the profile filters);
* what an agent needs still works: a thread starts and joins, and a Python child
  process runs, with and without setrlimit in the child / prlimit from the parent;
* with the argument ``sandbox`` (``python3 - sandbox``), the sandbox service's
  extra promises: no socket family but AF_UNIX, no x32 ABI, no network interface
  but ``lo``, no secrets, a uid other than the agents'.

Syscalls that could change the probe's own process when they are *not* blocked
(unshare, ptrace) are issued in a forked child, so running the probe in an
unconfined container is harmless and simply reports failures.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading

# Per-architecture syscall numbers (x86_64: arch/x86/entry/syscalls/syscall_64.tbl;
# aarch64: include/uapi/asm-generic/unistd.h).
SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {
        "ptrace": 101,
        "mount": 165,
        "keyctl": 250,
        "unshare": 272,
        "perf_event_open": 298,
        "bpf": 321,
        "userfaultfd": 323,
        "io_uring_setup": 425,
        "clone3": 435,
    },
    "aarch64": {
        "mount": 40,
        "unshare": 97,
        "ptrace": 117,
        "keyctl": 219,
        "perf_event_open": 241,
        "bpf": 280,
        "userfaultfd": 282,
        "io_uring_setup": 425,
        "clone3": 435,
    },
}
SYSCALLS["arm64"] = SYSCALLS["aarch64"]
SYSCALLS["amd64"] = SYSCALLS["x86_64"]

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
PTRACE_TRACEME = 0
KEYCTL_GET_KEYRING_ID = 0
KEY_SPEC_SESSION_KEYRING = -3
BPF_MAP_CREATE = 0
O_CLOEXEC = 0o2000000
UFFD_USER_MODE_ONLY = 1

ARCH = platform.machine().lower()
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _errname(err: int) -> str:
    return errno.errorcode.get(err, str(err))


def raw_syscall(name: str, *args: int | bytes | None) -> tuple[int, int]:
    """Issue syscall NAME with ARGS via libc syscall(); return (result, errno)."""
    table = SYSCALLS.get(ARCH)
    if table is None:
        raise RuntimeError(f"unsupported architecture {ARCH!r}")
    cargs = []
    for a in args:
        if a is None:
            cargs.append(ctypes.c_void_p(None))
        elif isinstance(a, bytes):
            cargs.append(ctypes.c_char_p(a))
        else:
            cargs.append(ctypes.c_long(a))
    ctypes.set_errno(0)
    res = _libc.syscall(ctypes.c_long(table[name]), *cargs)
    err = ctypes.get_errno() if res == -1 else 0
    return res, err


def syscall_in_child(name: str, *args: int | bytes | None) -> tuple[int, int]:
    """Run raw_syscall in a forked child so a syscall that succeeds cannot alter us."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(rfd)
            res, err = raw_syscall(name, *args)
            os.write(wfd, json.dumps([res, err]).encode())
        finally:
            os._exit(0)
    os.close(wfd)
    chunks = []
    while True:
        chunk = os.read(rfd, 4096)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(rfd)
    os.waitpid(pid, 0)
    if not chunks:
        raise RuntimeError("child died before reporting")
    res, err = json.loads(b"".join(chunks))
    return int(res), int(err)


REGISTRY: list[tuple[str, object]] = []


def check(name: str):
    """Decorator: register a check returning (ok, detail), run in order by main()."""

    def register(fn):
        REGISTRY.append((name, fn))
        return fn

    return register


def run_checks() -> dict[str, dict[str, object]]:
    results: dict[str, dict[str, object]] = {}
    for name, fn in REGISTRY:
        try:
            ok, detail = fn()
        except Exception as exc:
            ok, detail = False, f"error: {type(exc).__name__}: {exc}"
        results[name] = {"ok": bool(ok), "detail": str(detail)}
    return results


def expect_errno(name: str, want: int, *args: int | bytes | None, in_child: bool = False):
    res, err = (syscall_in_child if in_child else raw_syscall)(name, *args)
    if res == -1:
        return err == want, f"{name} -> -1 {_errname(err)} (want {_errname(want)})"
    if res > 2 and name in ("userfaultfd", "io_uring_setup", "perf_event_open", "bpf"):
        with contextlib.suppress(OSError):
            os.close(res)  # an fd was created: the call was allowed
    return False, f"{name} succeeded (returned {res}); want {_errname(want)}"


def read_status() -> dict[str, str]:
    out = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key.strip()] = value.strip()
    return out


# ---------------------------------------------------------------- identity, fs


@check("non_root")
def _():
    uid, euid = os.getuid(), os.geteuid()
    return uid != 0 and euid != 0, f"uid={uid} euid={euid} gid={os.getgid()}"


def _write_fails(directory: str):
    path = os.path.join(directory, f".hardening-probe-{os.getpid()}")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        ok = exc.errno in (errno.EROFS, errno.EACCES)
        return ok, f"open({path!r}, O_CREAT) -> {_errname(exc.errno)}"
    os.close(fd)
    os.unlink(path)
    return False, f"created {path!r}: {directory} is writable"


@check("rootfs_readonly")
def _():
    return _write_fails("/")


@check("usr_readonly")
def _():
    return _write_fails("/usr")


# ---------------------------------------------------------------- /proc status


@check("seccomp_filter_mode")
def _():
    status = read_status()
    v = status.get("Seccomp", "?")
    filters = status.get("Seccomp_filters")
    extra = f" Seccomp_filters={filters}" if filters is not None else ""
    return v == "2", f"Seccomp={v}{extra} arch={ARCH}"


@check("no_new_privs")
def _():
    v = read_status().get("NoNewPrivs", "?")
    return v == "1", f"NoNewPrivs={v}"


@check("capabilities_empty")
def _():
    status = read_status()
    keys = ("CapEff", "CapPrm", "CapBnd")
    vals = {k: status.get(k, "?") for k in keys}
    ok = all(v != "?" and int(v, 16) == 0 for v in vals.values())
    info = {k: status.get(k, "?") for k in ("CapInh", "CapAmb")}
    return ok, " ".join(f"{k}={v}" for k, v in {**vals, **info}.items())


# ---------------------------------------------------------------- denied syscalls


@check("unshare_newuser_denied")
def _():
    return expect_errno("unshare", errno.EPERM, CLONE_NEWUSER, in_child=True)


@check("unshare_newns_denied")
def _():
    return expect_errno("unshare", errno.EPERM, CLONE_NEWNS, in_child=True)


@check("mount_denied")
def _():
    target = tempfile.mkdtemp(prefix="probe-mnt-")
    try:
        return expect_errno(
            "mount", errno.EPERM, b"probe", target.encode(), b"tmpfs", 0, None, in_child=True
        )
    finally:
        os.rmdir(target)


@check("ptrace_traceme_denied")
def _():
    return expect_errno("ptrace", errno.EPERM, PTRACE_TRACEME, 0, None, None, in_child=True)


@check("clone3_enosys")
def _():
    # clone3(NULL, 0): an unfiltered kernel answers EINVAL (size too small) without
    # creating anything; the agent profile answers ENOSYS before the kernel looks.
    return expect_errno("clone3", errno.ENOSYS, None, 0)


@check("keyctl_denied")
def _():
    return expect_errno(
        "keyctl", errno.EPERM, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0, in_child=True
    )


@check("bpf_denied")
def _():
    return expect_errno("bpf", errno.EPERM, BPF_MAP_CREATE, None, 0)


@check("perf_event_open_denied")
def _():
    return expect_errno("perf_event_open", errno.EPERM, None, 0, -1, -1, 0)


@check("userfaultfd_denied")
def _():
    return expect_errno("userfaultfd", errno.EPERM, O_CLOEXEC | UFFD_USER_MODE_ONLY)


@check("io_uring_setup_denied")
def _():
    return expect_errno("io_uring_setup", errno.EPERM, 0, None)


# ---------------------------------------------------------------- what must work


@check("thread_start_join")
def _():
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(threading.get_native_id()))
    t.start()
    t.join(timeout=10)
    if t.is_alive():
        return False, "thread did not finish within 10 s"
    ok = len(result) == 1 and result[0] != threading.get_native_id()
    return ok, f"thread ran with native id {result[0] if result else None}"


def _limit_child() -> None:
    # what the coder's sandbox does in the child before exec
    resource.setrlimit(resource.RLIMIT_CPU, (10, 10))
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


@check("subprocess_python")
def _():
    code = "import resource,sys; print(resource.getrlimit(resource.RLIMIT_NOFILE)[0]); sys.exit(7)"
    details = []
    ok = True
    # plain spawn (vfork/posix_spawn path)
    plain = subprocess.run(
        [sys.executable, "-c", "print(6*7)"],
        check=False,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    ok &= plain.returncode == 0 and plain.stdout.strip() == "42"
    details.append(f"plain rc={plain.returncode} out={plain.stdout.strip()!r}")
    # fork + setrlimit in the child before exec
    limited = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        preexec_fn=_limit_child,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    ok &= limited.returncode == 7 and limited.stdout.strip() == "64"
    details.append(f"setrlimit rc={limited.returncode} nofile={limited.stdout.strip()!r}")
    # prlimit(2) on a running child from the parent (prlimit64)
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        resource.prlimit(proc.pid, resource.RLIMIT_CPU, (5, 5))
        got = resource.prlimit(proc.pid, resource.RLIMIT_CPU)
    finally:
        proc.communicate(input=b"", timeout=30)
    ok &= got == (5, 5) and proc.returncode == 0
    details.append(f"prlimit RLIMIT_CPU={got} rc={proc.returncode}")
    if limited.stderr.strip():
        details.append(f"stderr={limited.stderr.strip()[-200:]!r}")
    return ok, "; ".join(details)


# ---------------------------------------------------------------- the sandbox service
# `python3 - sandbox`: the sandbox's profile is tighter (seccomp-sandbox.json) and it
# has no network, no secrets and a uid of its own.

if "sandbox" in sys.argv[1:]:
    import socket

    X32_SYSCALL_BIT = 0x40000000

    def _socket_denied(family: int, name: str):
        try:
            socket.socket(
                family, socket.SOCK_DGRAM if family == socket.AF_NETLINK else socket.SOCK_STREAM
            ).close()
        except PermissionError as exc:
            return True, f"socket({name}) -> {_errname(exc.errno)}"
        except OSError as exc:
            return False, f"socket({name}) -> {_errname(exc.errno)} (want EPERM from seccomp)"
        return False, f"socket({name}) succeeded"

    @check("sandbox_socket_inet_denied")
    def _():
        return _socket_denied(socket.AF_INET, "AF_INET")

    @check("sandbox_socket_inet6_denied")
    def _():
        return _socket_denied(socket.AF_INET6, "AF_INET6")

    @check("sandbox_socket_netlink_denied")
    def _():
        return _socket_denied(socket.AF_NETLINK, "AF_NETLINK")

    @check("sandbox_socket_unix_works")
    def _():
        a, b = socket.socketpair()
        a.sendall(b"x")
        ok = b.recv(1) == b"x"
        a.close()
        b.close()
        return ok, "socketpair(AF_UNIX) works"

    @check("sandbox_x32_denied")
    def _():
        if ARCH not in ("x86_64", "amd64"):
            return True, f"no x32 ABI on {ARCH}"
        # getpid through the x32 ABI, in a child: a filter without the x32 ABI may kill
        # the caller (seccomp's bad-architecture action) rather than answer an errno.
        pid = os.fork()
        if pid == 0:
            res, err = raw_syscall_nr(X32_SYSCALL_BIT | 39)
            os._exit(err if res == -1 else 255)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            return True, f"x32 getpid: the caller was killed by signal {os.WTERMSIG(status)}"
        code = os.WEXITSTATUS(status)
        if code == 255:
            return False, "x32 getpid succeeded"
        # ENOSYS is the kernel's answer (no x32 support built in), not the filter's.
        return (
            code == errno.EPERM,
            f"x32 getpid -> -1 {_errname(code)} (want the filter: EPERM or a kill)",
        )

    @check("sandbox_no_network_interfaces")
    def _():
        names = sorted(os.listdir("/sys/class/net"))
        return names == ["lo"], f"interfaces: {names}"

    @check("sandbox_no_secrets")
    def _():
        present = sorted(os.listdir("/run/secrets")) if os.path.isdir("/run/secrets") else []
        return not present, f"/run/secrets: {present or 'absent'}"

    @check("sandbox_own_uid")
    def _():
        return os.getuid() not in (0, 10001), f"uid={os.getuid()} (agents run as 10001)"


def raw_syscall_nr(number: int, *args: int) -> tuple[int, int]:
    ctypes.set_errno(0)
    res = _libc.syscall(ctypes.c_long(number), *(ctypes.c_long(a) for a in args))
    return res, ctypes.get_errno() if res == -1 else 0


def main() -> int:
    checks = run_checks()
    all_ok = all(c["ok"] for c in checks.values())
    report = {"ok": all_ok, "checks": checks}
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
