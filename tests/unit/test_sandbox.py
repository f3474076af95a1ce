from __future__ import annotations

from pathlib import Path

import pytest
from agentmesh_coder.sandbox import Sandbox
from agentmesh_shared.settings import load_settings


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    return Sandbox(
        load_settings(
            sandbox_wall_s=2.0, sandbox_output_bytes=1000, sandbox_file_mb=1, sandbox_memory_mb=200
        ),
        tmp_path,
    )


def run(sandbox: Sandbox, code: str) -> tuple[int | None, str, str, bool]:
    (sandbox.workdir / "prog.py").write_text(code)
    r = sandbox.run_python("prog.py")
    return r.exit_code, r.stdout, r.stderr, r.timed_out


def test_code_runs_and_output_is_real(sandbox: Sandbox) -> None:
    assert run(sandbox, "print(sum(range(101)))")[:2] == (0, "5050\n")


def test_no_network_but_unix_sockets_work(sandbox: Sandbox) -> None:
    code, out, err, _ = run(
        sandbox,
        "import socket\n"
        "for fam in (socket.AF_INET, socket.AF_INET6):\n"
        "    try:\n        socket.socket(fam)\n        print('open')\n"
        "    except PermissionError:\n        print('denied')\n"
        "a, b = socket.socketpair(); print('pair ok')\n",
    )
    assert (code, out) == (0, "denied\ndenied\npair ok\n"), err


def test_wall_clock_kills_the_process_group(sandbox: Sandbox) -> None:
    code, _, _, timed_out = run(
        sandbox,
        "import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\nwhile True: pass\n",
    )
    assert timed_out and code is None


def test_memory_file_size_and_output_are_limited(sandbox: Sandbox) -> None:
    code, _, err, _ = run(sandbox, "x = bytearray(400 * 1024 * 1024)\n")
    assert code != 0 and "MemoryError" in err
    code, _, err, _ = run(sandbox, "open('big', 'wb').write(b'0' * 2 * 1024 * 1024)\n")
    assert code != 0
    assert (sandbox.workdir / "big").stat().st_size <= 1024 * 1024
    (sandbox.workdir / "prog.py").write_text("print('y' * 5000)")
    result = sandbox.run_python("prog.py")
    assert result.truncated and len(result.stdout) == 1000


def test_the_child_environment_is_clean(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "secret-key")
    _, out, _, _ = run(
        sandbox, "import os; print(sorted(k for k in os.environ if 'KEY' in k or 'REDIS' in k))"
    )
    assert out == "[]\n"
