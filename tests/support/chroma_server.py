"""Run a real Chroma server as a local process for tests and development.

The server lives in the full ``chromadb`` wheel, which cannot share a virtualenv with
``chromadb-client`` (both own the ``chromadb`` package), so it runs from its own
environment. The executable is ``$CHROMA_BIN`` if set, else ``.tools/chroma/bin/chroma``
in the repository, made by::

    uv venv .tools/chroma
    uv pip install --python .tools/chroma/bin/python chromadb==1.5.9

Usage::

    with start_chroma(free_port(), tmp_path / "chroma") as url:
        client = MemoryClient(url)
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CHROMA_BIN = REPO_ROOT / ".tools" / "chroma" / "bin" / "chroma"
SETUP_HINT = (
    "uv venv .tools/chroma && uv pip install --python .tools/chroma/bin/python chromadb==1.5.9"
)


class ChromaServerError(RuntimeError):
    """The Chroma server could not be found or did not come up."""


class _NotReadyError(Exception):
    pass


def chroma_executable() -> Path:
    """The ``chroma`` executable: ``$CHROMA_BIN``, else ``.tools/chroma/bin/chroma``."""
    configured = os.environ.get("CHROMA_BIN")
    exe = Path(configured) if configured else DEFAULT_CHROMA_BIN
    if not exe.is_file() or not os.access(exe, os.X_OK):
        source = "$CHROMA_BIN" if configured else "the repository's Chroma environment"
        raise ChromaServerError(
            f"no chroma executable at {exe} ({source}); create it with: {SETUP_HINT} "
            "(run in the repository root), or set CHROMA_BIN"
        )
    return exe


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@contextmanager
def start_chroma(
    port: int,
    data_dir: Path,
    *,
    host: str = "127.0.0.1",
    timeout_s: float = 60.0,
) -> Iterator[str]:
    """Start ``chroma run`` persisting to ``data_dir``, wait for its heartbeat, yield its
    URL, and stop it on exit. Its output goes to ``<data_dir>.log`` beside ``data_dir``."""
    exe = chroma_executable()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.with_name(data_dir.name + ".log")
    url = f"http://{host}:{port}"
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False", "NO_COLOR": "1"}
    cmd = [str(exe), "run", "--path", str(data_dir), "--host", host, "--port", str(port)]
    with log_path.open("ab") as output:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: stopped as a whole below
        )
    try:
        started = time.monotonic()
        _wait_ready(proc, url, log_path, timeout_s)
        log.info("chroma up at %s after %.2fs (pid %d)", url, time.monotonic() - started, proc.pid)
        yield url
    finally:
        _stop(proc)


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log_path: Path, timeout_s: float) -> None:
    heartbeat = f"{url}/api/v2/heartbeat"

    def probe() -> None:
        code = proc.poll()
        if code is not None:
            raise ChromaServerError(
                f"chroma exited with status {code} before answering at {url}; "
                f"its log ({log_path}):\n{_log_tail(log_path)}"
            )
        try:
            response = httpx.get(heartbeat, timeout=1.0, trust_env=False)
        except httpx.TransportError as exc:
            raise _NotReadyError(str(exc)) from exc
        if response.status_code != 200:
            raise _NotReadyError(f"heartbeat answered {response.status_code}")

    retrying = Retrying(
        retry=retry_if_exception_type(_NotReadyError),
        wait=wait_exponential(multiplier=0.02, min=0.02, max=0.25),
        stop=stop_after_delay(timeout_s),
        reraise=True,
    )
    try:
        retrying(probe)
    except _NotReadyError as exc:
        raise ChromaServerError(
            f"chroma at {url} did not answer its heartbeat within {timeout_s:.0f}s ({exc}); "
            f"its log ({log_path}):\n{_log_tail(log_path)}"
        ) from exc


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace_s)


def main() -> None:
    """Run a development server in the foreground: ``python -m tests.support.chroma_server``
    (``CHROMA_PORT``, default 8000; ``CHROMA_DATA``, default ``.cache/chroma``)."""
    port = int(os.environ.get("CHROMA_PORT", "8000"))
    data = Path(os.environ.get("CHROMA_DATA", str(REPO_ROOT / ".cache" / "chroma")))
    with start_chroma(port, data) as url:
        print(f"chroma is up at {url} (data in {data}); Ctrl-C stops it", flush=True)
        with suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()


@contextmanager
def start_memory_service(
    chroma_url: str, root: Path, token: str = "memory-test-token", timeout_s: float = 60.0
) -> Iterator[str]:
    """The memory service (``agentmesh_orchestrator.memory_gate``) in front of
    ``chroma_url``, as a process; yields its URL. Its clients send ``token``."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = root / "memory-service.log"
    env = {
        **os.environ,
        "AGENTMESH_SECRETS_DIR": str(root / "no-secrets"),
        "AGENTMESH_MEMORY_GATE_UPSTREAM": chroma_url,
        "AGENTMESH_MEMORY_GATE_PORT": str(port),
        "CHROMA_TOKEN": token,
    }
    with log_path.open("ab") as output:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agentmesh_orchestrator.memory_gate"],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise ChromaServerError(
                    f"the memory service exited ({proc.returncode}); its log:\n{_log_tail(log_path)}"
                )
            with suppress(httpx.TransportError):
                if httpx.get(f"{url}/healthz", timeout=1.0, trust_env=False).is_success:
                    break
            if time.monotonic() > deadline:
                raise ChromaServerError(
                    f"the memory service did not listen within {timeout_s:.0f}s; "
                    f"its log:\n{_log_tail(log_path)}"
                )
            time.sleep(0.1)
        yield url
    finally:
        _stop(proc)
