"""Run a real OTLP collector as a local process: the mesh's offline collector stand-in.

It is the same collector and the same trace processor as the offline
``agentmesh/otel-collector`` image (docker/otel-collector/): ``rotel``, a Rust OTLP
collector shipped in a PyPI wheel, receiving OTLP over gRPC and HTTP, with
``docker/otel-collector/otlp_json_file.py`` appending every trace batch as one
OTLP/JSON line to ``$AGENTMESH_TRACES_FILE``. rotel embeds Python for that processor
and links the system's ``libpython3.11.so.1.0`` (Debian: ``libpython3.11``).

The executable is ``$ROTEL_BIN`` if set, else the one in ``.tools/rotel``, made by::

    uv venv --python 3.11 .tools/rotel
    uv pip install --python .tools/rotel/bin/python -r docker/otel-collector/requirements.txt

Usage::

    with start_collector(tmp_path) as collector:
        exporter = OTLPSpanExporter(endpoint=collector.grpc_endpoint, insecure=True)
        ...
        TraceReader(collector.traces_file).read(trace_id)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from tests.support.chroma_server import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
PROCESSOR = REPO_ROOT / "docker" / "otel-collector" / "otlp_json_file.py"
SETUP_HINT = (
    "uv venv --python 3.11 .tools/rotel && "
    "uv pip install --python .tools/rotel/bin/python -r docker/otel-collector/requirements.txt "
    "(and, on Debian, apt-get install libpython3.11)"
)


class CollectorError(RuntimeError):
    """The collector could not be found or did not come up."""


class CollectorMissingError(CollectorError):
    """No rotel executable is installed."""


@dataclass(frozen=True)
class Collector:
    grpc_endpoint: str  # http://127.0.0.1:PORT, for the SDK's gRPC exporter
    http_endpoint: str  # http://127.0.0.1:PORT, for OTLP/HTTP (POST /v1/traces)
    traces_file: Path
    log_path: Path
    pid: int


def rotel_executable() -> Path:
    """``$ROTEL_BIN``, else the ``rotel-agent`` binary inside ``.tools/rotel``'s wheel."""
    configured = os.environ.get("ROTEL_BIN")
    if configured:
        candidates = [Path(configured)]
    else:
        candidates = sorted(
            (REPO_ROOT / ".tools" / "rotel").glob("lib/python3*/site-packages/rotel/rotel-agent")
        )
    for exe in candidates:
        if exe.is_file() and os.access(exe, os.X_OK):
            return exe
    where = configured or str(REPO_ROOT / ".tools" / "rotel")
    raise CollectorMissingError(f"no rotel collector at {where}; install it with: {SETUP_HINT}")


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def start_collector(
    work_dir: Path,
    *,
    timeout_s: float = 30.0,
    batch_timeout: str = "200ms",
    env: dict[str, str] | None = None,
) -> Iterator[Collector]:
    """Start rotel with the traces-file processor; yield its endpoints; stop it on exit.

    Traces go to ``work_dir/traces.jsonl``; the collector's log to ``work_dir/collector.log``;
    ``env`` adds to its environment (e.g. ``AGENTMESH_TRACES_FILE_MAX_MB``).
    """
    exe = rotel_executable()
    work_dir.mkdir(parents=True, exist_ok=True)
    grpc_port, http_port = free_port(), free_port()
    traces_file = work_dir / "traces.jsonl"
    log_path = work_dir / "collector.log"
    environment = {
        **os.environ,
        "AGENTMESH_TRACES_FILE": str(traces_file),
        "NO_COLOR": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        **(env or {}),
    }
    argv = [
        str(exe),
        "start",
        "--otlp-grpc-endpoint",
        f"127.0.0.1:{grpc_port}",
        "--otlp-http-endpoint",
        f"127.0.0.1:{http_port}",
        "--exporter",
        "blackhole",
        "--otlp-with-trace-processor",
        str(PROCESSOR),
        "--batch-timeout",
        batch_timeout,
        "--pid-file",
        str(work_dir / "rotel.pid"),
        "--log-file",
        str(work_dir / "rotel-agent.log"),
    ]
    with log_path.open("ab") as output:
        proc = subprocess.Popen(
            argv,
            cwd=work_dir,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout_s
        while not (_listening(grpc_port) and _listening(http_port)):
            code = proc.poll()
            if code is not None:
                raise CollectorError(
                    f"rotel exited with status {code} before listening; its log ({log_path}):\n"
                    f"{_log_tail(log_path)}\n(missing libpython3.11? {SETUP_HINT})"
                )
            if time.monotonic() > deadline:
                raise CollectorError(
                    f"rotel did not listen on {grpc_port}/{http_port} within {timeout_s:.0f}s; "
                    f"its log ({log_path}):\n{_log_tail(log_path)}"
                )
            time.sleep(0.05)
        yield Collector(
            grpc_endpoint=f"http://127.0.0.1:{grpc_port}",
            http_endpoint=f"http://127.0.0.1:{http_port}",
            traces_file=traces_file,
            log_path=log_path,
            pid=proc.pid,
        )
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace_s)
