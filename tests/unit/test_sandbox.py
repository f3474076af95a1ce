"""The sandbox service's server and the coder's client, over a real unix socket.

The server runs in this process (a thread), its runs in real supervised child
processes under Landlock, rlimits and the socket filter, as in the container.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from agentmesh_coder import supervisor
from agentmesh_coder.sandbox import RunResult, Sandbox, SandboxUnavailableError
from agentmesh_coder.sandbox_protocol import (
    PingRequest,
    Reply,
    RunRequest,
    recv_frame,
    send_frame,
)
from agentmesh_coder.sandbox_server import SandboxRunner, SandboxServer, socket_path
from agentmesh_shared.settings import Settings, load_settings

pytestmark = pytest.mark.skipif(
    supervisor.landlock_abi() < supervisor.MIN_ABI, reason="the kernel lacks Landlock ABI 6"
)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        sandbox_wall_s=3.0,
        sandbox_output_bytes=1000,
        sandbox_file_mb=1,
        sandbox_memory_mb=200,
        sandbox_socket_dir=tmp_path / "sockets",
        sandbox_scratch_root=tmp_path / "runs",
    )


@pytest.fixture
def server(settings: Settings) -> Iterator[SandboxServer]:
    srv = SandboxServer(
        socket_path(settings, "replica-a"), SandboxRunner(settings, replica="replica-a")
    )
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


@pytest.fixture
def sandbox(settings: Settings, server: SandboxServer) -> Sandbox:
    return Sandbox(settings)


def run(sandbox: Sandbox, code: str, **files: str) -> RunResult:
    return sandbox.run_python("prog.py", files={"prog.py": code, **files})


def test_code_runs_and_output_and_files_come_back(sandbox: Sandbox) -> None:
    r = run(sandbox, "print(sum(range(101)))\nopen('out.txt', 'w').write('made here')\n")
    assert (r.exit_code, r.stdout, r.timed_out) == (0, "5050\n", False), r.stderr
    assert r.files == {"prog.py": r.files["prog.py"], "out.txt": "made here"}
    assert r.replica == "replica-a"


def test_no_network_but_unix_sockets_work(sandbox: Sandbox) -> None:
    r = run(
        sandbox,
        "import socket\n"
        "for fam in (socket.AF_INET, socket.AF_INET6):\n"
        "    try:\n        socket.socket(fam)\n        print('open')\n"
        "    except PermissionError:\n        print('denied')\n"
        "a, b = socket.socketpair(); print('pair ok')\n",
    )
    assert (r.exit_code, r.stdout) == (0, "denied\ndenied\npair ok\n"), r.stderr


def test_setsid_grandchild_is_killed_and_the_call_returns_on_time(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    marker = tmp_path / "runs"
    code = (
        "import os, subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-c', "
        "'import os, time; os.setsid(); os.fork() or time.sleep(60); time.sleep(60)'], "
        "start_new_session=True)\n"
        "print(p.pid, flush=True)\n"
        "while True: pass\n"
    )
    started = time.monotonic()
    r = run(sandbox, code)
    elapsed = time.monotonic() - started
    assert r.timed_out and r.exit_code is None
    assert elapsed < 3.0 + 2.5, elapsed
    pid = int(r.stdout.split()[0])
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    assert list(marker.iterdir()) == []


def test_the_run_cannot_signal_or_read_the_memory_of_the_server(sandbox: Sandbox) -> None:
    code = (
        f"import os\n"
        f"try:\n    os.kill({os.getpid()}, 0); print('signal ok')\n"
        "except PermissionError: print('signal denied')\n"
        f"try:\n    open('/proc/{os.getpid()}/mem', 'rb'); print('mem open')\n"
        "except PermissionError: print('mem denied')\n"
    )
    r = run(sandbox, code)
    # /proc/<pid>/environ: the server is not dumpable, so only root could read it, and
    # the container runs as uid 10002 (proved in tests/e2e/test_sandbox_attacks.py).
    assert r.stdout == "signal denied\nmem denied\n", r.stderr


def test_the_run_holds_no_descriptor_of_the_sandbox_and_cannot_reach_its_launcher(
    sandbox: Sandbox, server: SandboxServer
) -> None:
    run(sandbox, "print('start the launcher')")
    launcher = server.runner.launcher.pid
    assert launcher is not None
    # A program that finds the socket its supervisor answers on could forge the
    # outcome: it must hold its three pipes and nothing else. Nor may it signal the
    # launcher or read its memory (a fork of it is every later run's supervisor).
    code = (
        "import json, os\n"
        "fds = sorted(int(f) for f in os.listdir('/proc/self/fd'))\n"
        "kinds = {fd: os.readlink(f'/proc/self/fd/{fd}').split(':')[0] for fd in fds[:3]}\n"
        f"try:\n    os.kill({launcher}, 0); sig = 'ok'\nexcept PermissionError: sig = 'denied'\n"
        "try:\n"
        f"    open('/proc/{launcher}/mem', 'rb').read(1); mem = 'read'\n"
        "except OSError as e:\n    mem = e.errno\n"
        "forged = 0\n"
        "for fd in range(3, 64):\n"
        '    try:\n        os.write(fd, b\'{"exit_code": 0, "stdout": "forged"}\\n\'); forged += 1\n'
        "    except OSError:\n        pass\n"
        "print(json.dumps([fds, kinds, sig, mem, forged]))\n"
    )
    r = run(sandbox, code)
    fds, kinds, sig, mem, forged = json.loads(r.stdout)
    # 0-2 and the descriptor os.listdir held while it listed
    assert fds[:3] == [0, 1, 2] and len(fds) <= 4, fds
    assert set(kinds.values()) <= {"pipe", "/dev/null"}, kinds
    assert (sig, forged) == ("denied", 0), r.stdout
    assert mem in (1, 13), mem  # EPERM / EACCES


# Programs whose every observable start and end the sandbox must reproduce: it runs
# them in a prepared fork of its interpreter, not in a new ``python -I -B``.
_AS_THE_INTERPRETER = {
    "start": (
        "import os, sys\n"
        "print(__name__, __file__ == os.path.abspath('prog.py'), __spec__, __cached__,\n"
        "      type(__loader__).__name__, __builtins__ is __import__('builtins'))\n"
        "print(sys.argv, sys.orig_argv[1:], sys.dont_write_bytecode, sys.flags.isolated)\n"
        "print(sys.path)\n"
        "print(sorted(os.environ), os.environ['PATH'])\n"
        "print(sorted(int(f) for f in os.listdir('/proc/self/fd')))\n"
        "print(sys.modules['__main__'] is sys.modules[__name__], open('/proc/self/fd/0') and 1)\n"
    ),
    "stdio": (
        "import sys\n"
        "data = sys.stdin.read()\n"
        "for s in (sys.stdin, sys.stdout, sys.stderr):\n"
        "    print(s.name, s.encoding, s.errors, s.line_buffering, s.fileno(), s.isatty())\n"
        "print(len(data), repr(data[-3:]), sys.stdin is sys.__stdin__)\n"
        "sys.stderr.write('to stderr \\udcff\\n')\n"
    ),
    "traceback": "def f():\n    raise ValueError('boom')\n\nprint('before')\nf()\n",
    "syntax": "print('never')\nx = (\n",
    "exit": "import sys\nprint('out')\nsys.exit(3)\n",
    "exit-text": "import sys\nsys.exit('leaving')\n",
    "ending": (
        "import atexit, threading, time\n"
        "atexit.register(print, 'atexit')\n"
        "threading.Thread(target=lambda: (time.sleep(0.2), print('thread'))).start()\n"
        "print('main')\n"
    ),
    "interrupt": "raise KeyboardInterrupt\n",
}


@pytest.mark.parametrize("name", sorted(_AS_THE_INTERPRETER))
def test_a_run_behaves_as_the_interpreter_would(
    name: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    code = _AS_THE_INTERPRETER[name]
    stdin = "line one\nh\u00e9llo \u2603\n"
    reference = tmp_path / "reference"
    reference.mkdir()
    (reference / "prog.py").write_text(code)
    env = {
        "PATH": "/opt/venv/bin:/usr/bin:/bin",
        "HOME": str(reference),
        "TMPDIR": str(reference),
        "LANG": "C.UTF-8",
        "PYTHONIOENCODING": "utf-8",
    }
    real = subprocess.run(
        [sys.executable, "-I", "-B", "prog.py", "an arg"],
        cwd=reference,
        env=env,
        input=stdin.encode(),
        capture_output=True,
        check=False,
    )
    ours = sandbox.run_python("prog.py", files={"prog.py": code}, args=["an arg"], stdin=stdin)

    def same(text: str) -> str:  # the run's directory is not the reference's
        return re.sub(r"/[^\s\"']*/prog\.py", "DIR/prog.py", text)

    assert ours.exit_code == real.returncode, ours.stderr
    assert same(ours.stdout) == same(real.stdout.decode())
    assert same(ours.stderr) == same(real.stderr.decode(errors="replace"))


def test_runs_share_nothing_through_the_launchers_preloaded_modules(sandbox: Sandbox) -> None:
    """The launcher holds the common modules loaded (PRELOADED); each run still starts
    from them untouched, and random draws differ from run to run."""
    program = (
        "import hashlib, random, sys\n"
        "print(getattr(hashlib, 'left_by_a_run', 'clean'), random.random())\n"
        "hashlib.left_by_a_run = 'dirty'\n"
        "random.seed(42)\n"
        "print(sorted(set(sys.modules) & {'hashlib', 'statistics'}))\n"
    )
    first, second = run(sandbox, program), run(sandbox, program)
    assert first.exit_code == second.exit_code == 0, first.stderr + second.stderr
    marker_1, draw_1 = first.stdout.splitlines()[0].split()
    marker_2, draw_2 = second.stdout.splitlines()[0].split()
    assert marker_1 == marker_2 == "clean"
    assert draw_1 != draw_2
    assert first.stdout.splitlines()[1] == "['hashlib', 'statistics']"


def test_a_dead_launcher_is_replaced_and_the_next_run_works(
    sandbox: Sandbox, server: SandboxServer
) -> None:
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.05: pass\n"
    assert run(sandbox, busy + "print(1)").stdout == "1\n"
    first = server.runner.launcher.pid
    assert first is not None
    # The run's supervisor was reaped, and its CPU time (50 ms of the program's at
    # least) is the launcher's children's, as a subprocess's would be.
    children = Path(f"/proc/{first}/task/{first}/children")
    deadline = time.monotonic() + 5
    while children.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert children.read_text().strip() == ""
    # cutime + cstime: the busy loop's clock_gettime calls make much of it system time.
    fields = Path(f"/proc/{first}/stat").read_text().rsplit(")", 1)[1].split()
    assert int(fields[13]) + int(fields[14]) > 0
    os.kill(first, 9)
    deadline = time.monotonic() + 5
    while server.runner.launcher.pid is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    r = run(sandbox, "print(2)")
    assert (r.exit_code, r.stdout) == (0, "2\n"), r.stderr
    second = server.runner.launcher.pid
    assert second is not None and second != first


def test_two_runs_at_once_cannot_see_each_other(sandbox: Sandbox, settings: Settings) -> None:
    writer = (
        "import os, time\nopen('mine.txt', 'w').write('private')\n"
        "print(os.getcwd(), flush=True)\ntime.sleep(1.5)\n"
        "print(open('mine.txt').read())\n"
    )
    spy = (
        "import os, time\ntime.sleep(0.5)\nroot = os.path.dirname(os.getcwd())\n"
        "found = []\n"
        "try:\n    names = os.listdir(root)\nexcept OSError as e:\n    names = []; print('list', e.errno)\n"
        "for d in ['run-' + str(i) for i in range(3)] + names:\n"
        "    p = os.path.join(root, d, 'mine.txt')\n"
        "    try:\n        open(p, 'a').write('changed'); found.append(p)\n"
        "    except OSError as e:\n        pass\n"
        "print('changed', found)\n"
    )
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(run, sandbox, writer)
        second = pool.submit(run, sandbox, spy)
        a, b = first.result(), second.result()
    assert a.stdout.splitlines()[-1] == "private", a
    assert "changed []" in b.stdout, b
    assert "list 13" in b.stdout, b


def test_threads_and_subprocesses_work_up_to_the_limit(sandbox: Sandbox) -> None:
    r = run(
        sandbox,
        "import subprocess, sys, threading\n"
        "ts = [threading.Thread(target=lambda: None) for _ in range(8)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "print(subprocess.run([sys.executable, '-c', 'print(6*7)'], capture_output=True, "
        "text=True).stdout.strip())\n",
    )
    assert (r.exit_code, r.stdout) == (0, "42\n"), r.stderr


def test_the_process_limit_counts_every_thread_of_the_uid() -> None:
    """A run's RLIMIT_NPROC is what the uid already runs plus the run's own allowance,
    so the count must see threads as the kernel does (each one counts)."""
    uid = os.getuid()
    release = threading.Event()
    threads = [threading.Thread(target=release.wait) for _ in range(12)]
    before = supervisor.tasks_of_uid(uid)
    for t in threads:
        t.start()
    try:
        during = supervisor.tasks_of_uid(uid)
        listed = sum(
            _threads(pid) for pid in os.listdir("/proc") if pid.isdigit() and _owner(pid) == uid
        )
    finally:
        release.set()
        for t in threads:
            t.join()
    # Other processes of the uid may start or end threads meanwhile: a margin, but
    # this process's twelve are counted, one by one, and the count is the threads'.
    assert during - before >= 12 - 2
    assert abs(during - listed) <= 4


def _owner(pid: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:  # gone meanwhile
        return None


def _threads(pid: str) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def test_memory_file_size_and_output_are_limited(sandbox: Sandbox) -> None:
    r = run(sandbox, "x = bytearray(400 * 1024 * 1024)\n")
    assert r.exit_code != 0 and "MemoryError" in r.stderr
    r = run(sandbox, "open('big', 'wb').write(b'0' * 2 * 1024 * 1024)\n")
    assert r.exit_code != 0
    assert len(r.files.get("big", "")) <= 1024 * 1024
    r = run(sandbox, "print('y' * 5000)")
    assert r.truncated and len(r.stdout) == 1000


def test_the_run_environment_is_clean(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "secret-key")
    r = run(
        sandbox, "import os; print(sorted(k for k in os.environ if 'KEY' in k or 'REDIS' in k))"
    )
    assert r.stdout == "[]\n"


def test_a_symlink_left_by_a_run_is_not_followed(sandbox: Sandbox, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("do not return me")
    r = run(sandbox, f"import os; os.symlink({str(secret)!r}, 'leak.txt')")
    assert r.exit_code == 0, r.stderr
    assert "leak.txt" not in r.files


def test_bad_requests_get_clear_errors(settings: Settings, server: SandboxServer) -> None:
    path = socket_path(settings, "replica-a")

    def raw(payload: bytes) -> Reply:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(str(path))
            conn.sendall(len(payload).to_bytes(4, "big") + payload)
            return Reply.model_validate_json(recv_frame(conn))

    reply = raw(json.dumps({"version": 99, "op": "ping"}).encode())
    assert not reply.ok and "version 99 is not supported" in (reply.error or "")
    reply = raw(json.dumps({"version": 1, "op": "run", "script": "../x.py"}).encode())
    assert not reply.ok and "relative path" in (reply.error or "")
    reply = raw(b"not json")
    assert not reply.ok and "not JSON" in (reply.error or "")
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(path))
        send_frame(conn, PingRequest())
        assert Reply.model_validate_json(recv_frame(conn)).ok
    with pytest.raises(ValueError, match="relative path"):
        RunRequest(script="/etc/passwd")


def test_dead_replicas_are_skipped_and_none_is_a_clear_error(
    settings: Settings, sandbox: Sandbox
) -> None:
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(socket_path(settings, "replica-gone")))
    stale.close()  # a socket file nobody listens on, as a stopped replica leaves
    for _ in range(5):
        assert run(sandbox, "print(1)").replica == "replica-a"
    empty = Sandbox(load_settings(sandbox_socket_dir=settings.sandbox_scratch_root / "none"))
    with pytest.raises(SandboxUnavailableError, match="no sandbox replica answers"):
        empty.run_python("prog.py", files={"prog.py": "print(1)"})
