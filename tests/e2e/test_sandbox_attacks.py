"""Attack code sent as a task, through the real path: CLI → planner → coder → sandbox.

The scripted model runs a task's fenced ```python block exactly as written, so each
test below is what an attacker who controls a task's text (or a page the model
read) can make `run_python` do. Every attempt must fail; the verdict is read from
the task's own result (the run's output in the coder's artifacts).
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.e2e.conftest import ROOT, ComposeMesh

WALL_S = 8.0  # AGENTMESH_SANDBOX_WALL_S in the e2e mesh (conftest)


def run_code(mesh: ComposeMesh, code: str, what: str = "Run this") -> dict[str, Any]:
    """Submit ``code`` as a task, wait, and return the coder's run and the task."""
    text = f"{what}:\n```python\n{code}```\n"
    done = mesh.cli("submit", text, "--wait", "--json", timeout=300)
    assert done.returncode == 0, done.stderr + done.stdout
    task: dict[str, Any] = json.loads(done.stdout)
    coder = next(s for s in task["subtasks"] if s["role"] == "coder")
    assert coder["status"] == "succeeded", coder
    (run,) = coder["artifacts"]["runs"]
    run["task"] = task
    return dict(run)


def verdict(run: dict[str, Any]) -> dict[str, Any]:
    """The JSON line an attack program prints last."""
    assert run["exit_code"] == 0, run["stderr"]
    result: dict[str, Any] = json.loads(run["stdout"].strip().splitlines()[-1])
    return result


ESCAPES = r"""
import ctypes, json, os, signal, socket, subprocess, sys, threading, time
out = {}

def attempt(name, fn):
    try:
        out[name] = "SUCCEEDED: " + str(fn())[:200]
    except Exception as exc:
        out[name] = "failed: " + type(exc).__name__ + ": " + str(exc)[:160]

def secrets():
    found = {}
    for d in ("/run/secrets", "/var/run/secrets"):
        if os.path.isdir(d):
            for n in os.listdir(d):
                found[n] = open(os.path.join(d, n)).read()
    for n in ("redis_password", "anthropic_api_key"):
        found[n] = open("/run/secrets/" + n).read()
    return found

def pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]

def cmdline(pid):
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
    except OSError:
        return ""

server = [p for p in pids() if "sandbox-server" in cmdline(p)]
out["server_visible"] = bool(server)
out["worker_visible"] = any("coder-worker" in cmdline(p) or "celery" in cmdline(p) for p in pids())

def environ_of_others():
    leaked = {}
    for pid in pids():
        try:
            env = open(f"/proc/{pid}/environ", "rb").read()
        except OSError:
            continue
        if env and pid not in mine:
            leaked[pid] = env[:80]
    if not leaked:
        raise PermissionError("no other process's environment is readable")
    return leaked

mine = {os.getpid(), os.getppid()}

def memory_of_server():
    with open(f"/proc/{server[0]}/mem", "rb") as f:
        return f.read(16)

def key_in_memory():
    for pid in pids():
        if pid in mine:
            continue
        with open(f"/proc/{pid}/mem", "rb") as f:
            return f.read(1)
    raise PermissionError("no process memory to read")

def signal_server(sig):
    os.kill(server[0], sig)
    return "sent"

def ptrace_server():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.ptrace(16, server[0], 0, 0) != 0:  # PTRACE_ATTACH
        raise PermissionError(os.strerror(ctypes.get_errno()))
    return "attached"

def kill_everything():
    # kill(-1) answers 0 even when every target refused (EPERM): judge by the effect.
    os.kill(-1, signal.SIGKILL)
    time.sleep(0.3)
    if all(os.path.exists(f"/proc/{p}") for p in server):
        raise PermissionError("kill(-1) reached no process outside the run")
    return "the server is gone"

def connect(host, port):
    s = socket.create_connection((host, port), timeout=3)
    s.close()
    return "connected"

def inet_socket():
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
    return "opened"

def udp_dns():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"\x00" * 12, ("127.0.0.11", 53))
    return "sent"

def netlink():
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close()
    return "opened"

def write_outside(path):
    with open(path, "w") as f:
        f.write("x")
    return "written " + path

attempt("read_secrets", secrets)
attempt("read_other_environ", environ_of_others)
attempt("read_server_memory", memory_of_server)
attempt("read_any_memory", key_in_memory)
attempt("signal_server_term", lambda: signal_server(signal.SIGTERM))
attempt("signal_server_kill", lambda: signal_server(signal.SIGKILL))
attempt("signal_init", lambda: os.kill(1, signal.SIGKILL) or "sent")
attempt("kill_everything", kill_everything)
attempt("ptrace_server", ptrace_server)
attempt("socket_af_inet", inet_socket)
attempt("connect_broker", lambda: connect("broker", 6379))
attempt("connect_memory", lambda: connect("memory", 8000))
attempt("connect_orchestrator", lambda: connect("orchestrator", 8080))
attempt("resolve_broker", lambda: socket.getaddrinfo("broker", 6379))
attempt("resolve_public_name", lambda: socket.getaddrinfo("example.com", 443))
attempt("dns_udp", udp_dns)
attempt("socket_af_netlink", netlink)
attempt("write_tmp", lambda: write_outside("/tmp/planted"))
attempt("write_socket_dir", lambda: write_outside("/run/agentmesh-sandbox/planted"))
attempt("list_runs_dir", lambda: os.listdir(os.path.dirname(os.getcwd())))

# What must work inside a run: threads and subprocesses up to the run's own limit.
threads = [threading.Thread(target=lambda: None) for _ in range(16)]
[t.start() for t in threads]
[t.join() for t in threads]
children = [subprocess.run([sys.executable, "-c", "print(6*7)"], capture_output=True, text=True).stdout.strip() for _ in range(4)]
out["threads_and_children"] = "ok" if children == ["42"] * 4 else children
out["where"] = {"uid": os.getuid(), "host": os.uname().nodename}
print(json.dumps(out))
"""


def test_attack_code_reaches_no_secret_process_or_network(compose_mesh: ComposeMesh) -> None:
    (sandbox_before,) = compose_mesh.containers("sandbox")
    started_at = compose_mesh.inspect(sandbox_before)["State"]["StartedAt"]  # type: ignore[index]
    run = run_code(compose_mesh, ESCAPES, "Check the environment")
    result = verdict(run)
    attempts = {k: v for k, v in result.items() if isinstance(v, str) and ":" in v}
    succeeded = {k: v for k, v in attempts.items() if not v.startswith("failed")}
    assert not succeeded, succeeded
    # The server was there to attack (the signal and memory attempts had a target).
    assert result["server_visible"] is True
    assert len(attempts) == 20, sorted(attempts)
    # It ran in the sandbox, not in the coder: another uid, a sandbox container.
    sandbox_hosts = {
        compose_mesh.inspect(c)["Config"]["Hostname"]  # type: ignore[index]
        for c in compose_mesh.containers("sandbox")
    }
    assert result["where"]["uid"] == 10002
    assert result["where"]["host"] in sandbox_hosts
    # The worker is in another container: nothing of it can even be seen.
    assert result["worker_visible"] is False
    assert result["threads_and_children"] == "ok"
    # The kill attempts changed nothing: same sandbox container, same start.
    (sandbox_after,) = compose_mesh.containers("sandbox")
    assert sandbox_after == sandbox_before
    info = compose_mesh.inspect(sandbox_after)
    assert info["State"]["StartedAt"] == started_at  # type: ignore[index]
    assert info["State"]["Running"] is True  # type: ignore[index]
    # And the trace of the task shows the sandbox's own span under the coder's.
    task = run["task"]
    out = compose_mesh.cli("trace", task["id"], "--json", "--wait", "30")
    assert out.returncode == 0, out.stderr
    spans = json.loads(out.stdout)["spans"]
    sandbox_spans = [s for s in spans if s["service"] == "sandbox"]
    assert sandbox_spans, {s["service"] for s in spans}
    assert sandbox_spans[0]["instance"] in sandbox_hosts


def test_a_setsid_grandchild_dies_at_the_wall_clock_and_the_call_returns_on_time(
    compose_mesh: ComposeMesh,
) -> None:
    marker = f"grandchild-{uuid.uuid4().hex}"
    code = (
        "import os, subprocess, sys, time\n"
        "child = (\n"
        "    'import os, time\\n'\n"
        "    'os.setsid()\\n'\n"
        "    'if os.fork(): os._exit(0)\\n'\n"
        "    'while True: print(\"alive\", flush=True); time.sleep(0.5)\\n'\n"
        f"    '# {marker}'\n"
        ")\n"
        "subprocess.Popen([sys.executable, '-c', child], start_new_session=True)\n"
        "print('started', flush=True)\n"
        "while True: time.sleep(1)\n"
    )
    run = run_code(compose_mesh, code, "Start a daemon")
    assert run["timed_out"] is True and run["exit_code"] is None, run
    assert run["duration_s"] < WALL_S + 2.0, run["duration_s"]
    assert "started" in run["stdout"]
    # Nothing of the run is left in any sandbox replica.
    for container in compose_mesh.containers("sandbox"):
        ps = compose_mesh.compose(
            "exec",
            "-T",
            "sandbox",
            "python3",
            "-c",
            "import os\n"
            "for p in os.listdir('/proc'):\n"
            "    if p.isdigit():\n"
            "        try: print(open(f'/proc/{p}/cmdline', 'rb').read().replace(b'\\0', b' ').decode())\n"
            "        except OSError: pass\n",
        )
        assert marker not in ps.stdout, (container, ps.stdout)


def test_two_runs_at_once_cannot_read_or_change_each_others_files(
    compose_mesh: ComposeMesh,
) -> None:
    secret = uuid.uuid4().hex
    owner = (
        "import json, os, time\n"
        f"open('mine.txt', 'w').write({secret!r})\n"
        "open('ready', 'w').write(os.getcwd())\n"
        "time.sleep(5)\n"
        "print(json.dumps({'cwd': os.getcwd(), 'content': open('mine.txt').read(), "
        "'files': sorted(os.listdir('.'))}))\n"
    )
    spy = (
        "import glob, json, os, time\n"
        "time.sleep(2)\n"
        "out = {}\n"
        "root = os.path.dirname(os.getcwd())\n"
        "try:\n    out['listed'] = os.listdir(root)\nexcept OSError as e:\n    out['listed'] = 'failed: ' + str(e)\n"
        "out['globbed'] = glob.glob(root + '/*/mine.txt')\n"
        "got = []\n"
        "for pid in [p for p in os.listdir('/proc') if p.isdigit()]:\n"
        "    try:\n        cwd = os.readlink(f'/proc/{pid}/cwd')\n    except OSError:\n        continue\n"
        "    if cwd != os.getcwd():\n"
        "        for name in ('mine.txt', 'planted.txt'):\n"
        "            try:\n"
        "                open(os.path.join(cwd, name), 'a').write('changed'); got.append(cwd)\n"
        "            except OSError:\n                pass\n"
        "out['changed'] = got\n"
        "print(json.dumps(out))\n"
    )
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(run_code, compose_mesh, owner, "Keep a file")
        time.sleep(1)
        second = pool.submit(run_code, compose_mesh, spy, "Look around")
        mine, theirs = verdict(first.result()), verdict(second.result())
    assert mine["content"] == secret and mine["files"] == ["main.py", "mine.txt", "ready"], mine
    assert theirs["listed"].startswith("failed"), theirs
    assert theirs["globbed"] == [] and theirs["changed"] == [], theirs


def test_audit_checks_the_sandbox(compose_mesh: ComposeMesh) -> None:
    audit = subprocess.run(
        [str(ROOT / "scripts" / "audit.sh"), *compose_mesh.base],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
    sandbox_lines = [line for line in audit.stdout.splitlines() if "_sandbox_" in line]
    assert any("probe=yes" in line for line in sandbox_lines), audit.stdout
    assert any("network=none" in line for line in sandbox_lines), audit.stdout


SPREAD = """
import collections, json
from agentmesh_coder.sandbox import Sandbox
from agentmesh_shared.settings import load_settings
sandbox = Sandbox(load_settings())
seen = collections.Counter()
for i in range(24):
    r = sandbox.run_python("m.py", files={"m.py": f"print({i} * 2)"})
    assert r.stdout == f"{i * 2}\\n", r
    seen[r.replica] += 1
print(json.dumps(seen))
"""


def test_scaled_sandbox_replicas_share_runs_and_a_stopped_one_is_skipped(
    compose_mesh: ComposeMesh,
) -> None:
    compose_mesh.compose("up", "-d", "--no-recreate", "--scale", "sandbox=2")
    compose_mesh.wait_healthy()
    replicas = {
        str(compose_mesh.inspect(c)["Config"]["Hostname"])  # type: ignore[index]
        for c in compose_mesh.containers("sandbox")
    }
    assert len(replicas) == 2

    def spread() -> dict[str, int]:
        out = compose_mesh.compose("exec", "-T", "coder", "python", "-c", SPREAD)
        counts: dict[str, int] = json.loads(out.stdout.strip().splitlines()[-1])
        return counts

    assert set(spread()) == replicas
    # A stopped replica leaves its socket file behind: the coder skips it.
    # The second replica, the one `--scale sandbox=1` removes afterwards.
    victim = next(
        c
        for c in compose_mesh.containers("sandbox")
        if str(compose_mesh.inspect(c)["Name"]).endswith(("_2", "-2"))
    )
    subprocess.run(["docker", "update", "--restart", "no", victim], check=True, capture_output=True)
    subprocess.run(["docker", "kill", victim], check=True, capture_output=True)
    survivor = replicas - {str(compose_mesh.inspect(victim)["Config"]["Hostname"])}  # type: ignore[index]
    assert set(spread()) == survivor
    compose_mesh.compose("up", "-d", "--scale", "sandbox=1")
    compose_mesh.wait_healthy()


FORK_BOMB = """
import json, os, signal, time
kids, err = [], None
for _ in range(500):
    try:
        pid = os.fork()
    except OSError as exc:
        err = exc.errno
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    kids.append(pid)
for pid in kids:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
print(json.dumps({"forked": len(kids), "errno": err}))
"""


def test_a_fork_bomb_stops_at_the_runs_own_process_limit(compose_mesh: ComposeMesh) -> None:
    result = verdict(run_code(compose_mesh, FORK_BOMB, "Fork a lot"))
    # AGENTMESH_SANDBOX_MAX_PROCS (32) on top of what the uid already ran: EAGAIN there.
    assert result["errno"] == 11, result
    assert 16 <= result["forked"] <= 40, result
    # The replica is fine afterwards: the next run forks and threads as usual.
    after = run_code(
        compose_mesh,
        "import subprocess, sys\nprint(subprocess.run([sys.executable, '-c', 'print(7)'], capture_output=True, text=True).stdout)\n",
    )
    assert after["exit_code"] == 0 and after["stdout"].strip() == "7", after
