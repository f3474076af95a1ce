"""The coder's side of the sandbox service: code never runs in the coder's container.

``Sandbox.run_python`` sends the subtask's files and the script to run to one replica
of the ``sandbox`` service over its unix socket (``<socket dir>/<replica>.sock``),
trying the replicas in random order and skipping any that does not answer (a
stopped replica leaves its socket file behind). The reply carries the run's outcome,
the files as the run left them, and the sandbox's span of the run, which is exported
here under the ``sandbox`` service so the task's trace shows the hop.
"""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass, field
from pathlib import Path

from agentmesh_shared import telemetry
from agentmesh_shared.settings import Settings
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from agentmesh_coder.sandbox_protocol import (
    ProtocolError,
    Reply,
    RunRequest,
    SpanRecord,
    recv_frame,
    send_frame,
)

_tracer = telemetry.tracer("agentmesh.coder.sandbox")
CONNECT_TIMEOUT_S = 3.0
# Beyond the run's wall clock: the server's own work and a queue for a free slot.
REPLY_MARGIN_S = 60.0


class SandboxUnavailableError(RuntimeError):
    """No replica of the sandbox service answered."""


@dataclass(frozen=True)
class RunResult:
    exit_code: int | None
    stdout: str
    stderr: str
    duration_s: float
    timed_out: bool
    truncated: bool
    files: dict[str, str] = field(default_factory=dict)
    replica: str = ""

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
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def replicas(self) -> list[Path]:
        sockets = sorted(self.settings.sandbox_socket_dir.glob("*.sock"))
        random.shuffle(sockets)
        return sockets

    def run_python(
        self,
        script: str,
        args: list[str] | None = None,
        stdin: str = "",
        files: dict[str, str] | None = None,
    ) -> RunResult:
        with _tracer.start_as_current_span("sandbox call", kind=SpanKind.CLIENT) as span:
            request = RunRequest(
                script=script,
                args=args or [],
                stdin=stdin,
                files=files or {},
                traceparent=telemetry.inject().get("traceparent"),
            )
            reply = self._call(request)
            span.set_attribute("sandbox.replica", reply.replica)
            if reply.span is not None:
                export_span(reply.span)
            if not reply.ok or reply.outcome is None:
                raise SandboxUnavailableError(f"sandbox {reply.replica}: {reply.error}")
            o = reply.outcome
            return RunResult(
                exit_code=o.exit_code,
                stdout=o.stdout,
                stderr=o.stderr,
                duration_s=o.duration_s,
                timed_out=o.timed_out,
                truncated=o.truncated,
                files=o.files,
                replica=reply.replica,
            )

    def _call(self, request: RunRequest) -> Reply:
        tried: list[str] = []
        for path in self.replicas():
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                conn.settimeout(CONNECT_TIMEOUT_S)
                try:
                    conn.connect(str(path))
                except OSError as err:
                    tried.append(f"{path.name}: {err.strerror or err}")
                    continue
                conn.settimeout(self.settings.sandbox_wall_s + REPLY_MARGIN_S)
                send_frame(conn, request)
                return Reply.model_validate_json(recv_frame(conn))
            except (OSError, ProtocolError) as err:
                raise SandboxUnavailableError(f"sandbox {path.name} failed mid-run: {err}") from err
            finally:
                conn.close()
        where = self.settings.sandbox_socket_dir
        detail = "; ".join(tried) if tried else "no sockets there"
        msg = f"no sandbox replica answers in {where} ({detail}): is the sandbox service up?"
        raise SandboxUnavailableError(msg)


def export_span(record: SpanRecord) -> None:
    """Export the sandbox's own span of a run (ids and times recorded by the sandbox)."""
    processor = telemetry.span_processor()
    if processor is None:
        return
    parent = SpanContext(
        int(record.trace_id, 16),
        int(record.parent_span_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(record.trace_flags),
    )
    span = ReadableSpan(
        name=record.name,
        context=SpanContext(
            int(record.trace_id, 16),
            int(record.span_id, 16),
            is_remote=False,
            trace_flags=TraceFlags(record.trace_flags),
        ),
        parent=parent,
        resource=telemetry.resource_for("sandbox", str(record.attributes.get("sandbox.replica"))),
        attributes=dict(record.attributes),
        kind=trace.SpanKind.SERVER,
        status=Status(StatusCode.ERROR, record.error) if record.error else Status(StatusCode.OK),
        start_time=record.start_ns,
        end_time=record.end_ns,
    )
    processor.on_end(span)
