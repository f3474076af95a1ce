"""The worker runtime both roles share: Celery consumer, subtask execution, heartbeat.

A role (researcher, coder) supplies a :class:`RoleAgent`: its system prompt and the
tools of one subtask. Everything else is here: payload validation (a malformed or
unknown message goes to the dead-letter list and the worker keeps serving), the agent
loop with the task's shared budget, result publication (first result wins, so a
redelivered subtask is absorbed), and the heartbeat that feeds the health check and
``orchestrator workers``.

Pool choice: Celery's ``threads`` pool. An agent loop spends nearly all its time
waiting on the LLM over HTTP, so one process holds ``AGENTMESH_WORKER_CONCURRENCY``
loops at once for the memory of one interpreter; prefork would need a process per
loop and gevent would monkey-patch every library we load.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

import anthropic
from celery import Celery, signals
from celery.worker.consumer import Consumer
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import ValidationError

from agentmesh_shared import deadletter, events, keys, metrics, telemetry
from agentmesh_shared.agent import (
    AgentLoop,
    CancelledError,
    LoopLimitError,
    LoopState,
    StepRecord,
    Tool,
)
from agentmesh_shared.budget import TokenBudget
from agentmesh_shared.celery_app import create_celery_app
from agentmesh_shared.health import beat
from agentmesh_shared.llm import LLMNotConfiguredError, make_client
from agentmesh_shared.logs import setup_logging
from agentmesh_shared.models import (
    TASK_NAME_BY_ROLE,
    Role,
    SubtaskMessage,
    SubtaskResult,
    Usage,
    WorkerInfo,
)
from agentmesh_shared.redisconn import connect
from agentmesh_shared.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    import redis

    from agentmesh_shared.memory import MemoryClient

log = logging.getLogger("agentmesh.worker")
_tracer = telemetry.tracer("agentmesh.worker")
RESULT_TTL_S = 7 * 24 * 3600


class RoleSession(Protocol):
    """The tools of one subtask, and what it produced besides its final text."""

    @property
    def tools(self) -> Sequence[Tool[Any]]: ...

    def artifacts(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class RoleAgent(Protocol):
    role: Role
    system_prompt: str

    def open_session(self, msg: SubtaskMessage, runtime: WorkerRuntime) -> RoleSession: ...


@dataclass
class ActiveSubtask:
    msg: SubtaskMessage
    started: float
    last_progress: float
    abandoned_at: float | None = None


@dataclass
class WorkerRuntime:
    settings: Settings
    role: Role
    hostname: str = ""
    started_at: float = field(default_factory=time.time)
    processed: int = 0
    active: dict[str, ActiveSubtask] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.hostname = self.hostname or self.settings.worker_hostname

    @cached_property
    def redis(self) -> redis.Redis:
        return connect(self.settings, max_connections=self.settings.worker_concurrency + 8)

    @cached_property
    def budget(self) -> TokenBudget:
        return TokenBudget(self.redis)

    @cached_property
    def llm(self) -> anthropic.Anthropic:
        return make_client(self.settings)

    @cached_property
    def memory(self) -> MemoryClient:
        from agentmesh_shared.memory import MemoryClient  # noqa: PLC0415 - heavy, needed by roles that use it

        return MemoryClient(str(self.settings.chroma_url), self.settings.memory_collection)

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            hostname=self.hostname,
            role=self.role,
            pid=os.getpid(),
            concurrency=self.settings.worker_concurrency,
            in_flight=self.in_flight,
            processed=self.processed,
            started_at=self.started_at,
            last_seen=time.time(),
        )

    @property
    def in_flight(self) -> int:
        return len(self.active)

    @property
    def lease_ttl_s(self) -> float:
        return max(15.0, self.settings.heartbeat_interval_s * 3)

    def _enter(self, msg: SubtaskMessage) -> None:
        now = time.time()
        with self._lock:
            self.active[msg.subtask_id] = ActiveSubtask(msg=msg, started=now, last_progress=now)

    def _leave(self, msg: SubtaskMessage) -> None:
        with self._lock:
            self.active.pop(msg.subtask_id, None)
            self.processed += 1

    def progress(self, subtask_id: str) -> None:
        entry = self.active.get(subtask_id)
        if entry is not None:
            entry.last_progress = time.time()

    def renew_leases(self) -> None:
        """Tell the orchestrator this worker still runs each of its subtasks."""
        with self._lock:
            live = [a.msg.subtask_id for a in self.active.values() if a.abandoned_at is None]
        if not live:
            return
        pipe = self.redis.pipeline()
        for subtask_id in live:
            pipe.set(keys.subtask_lease(subtask_id), self.hostname, px=int(self.lease_ttl_s * 1000))
        pipe.execute()

    def check_stalls(self) -> bool:
        """Fail subtasks whose loop made no progress; False when the process is wedged.

        A stalled loop's subtask is failed at once (its thread cannot be interrupted).
        If that thread is still stuck a second stall period later, the process is
        wedged: the caller exits so the container's restart policy brings it back,
        and the leases of its other subtasks lapse so the orchestrator resends them.
        """
        limit = self.settings.stall_timeout_s
        now = time.time()
        with self._lock:
            entries = list(self.active.values())
        healthy = True
        for entry in entries:
            idle = now - entry.last_progress
            if entry.abandoned_at is None and idle > limit:
                entry.abandoned_at = now
                reason = (
                    f"stalled: no progress for {idle:.0f}s on {self.hostname} (limit {limit:.0f}s)"
                )
                log.error("subtask %s %s", entry.msg.subtask_id, reason)
                _publish(self, _failed_result(self, entry.msg, entry.started, reason))
            elif entry.abandoned_at is not None and now - entry.abandoned_at > limit:
                healthy = False
        return healthy


# -- one subtask --------------------------------------------------------------------
def execute_subtask(
    runtime: WorkerRuntime, agent: RoleAgent, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """Run one broker message to a published result; never raises."""
    if len(args) != 1 or kwargs:
        deadletter.put(
            runtime.redis,
            "a subtask message takes exactly one positional payload",
            {"args": list(args), "kwargs": kwargs},
            role=runtime.role.value,
            worker=runtime.hostname,
        )
        return
    try:
        msg = SubtaskMessage.model_validate(args[0])
    except ValidationError as err:
        deadletter.put(
            runtime.redis,
            f"invalid subtask payload: {_summarize(err)}",
            args[0],
            role=runtime.role.value,
            worker=runtime.hostname,
        )
        return
    if msg.role is not runtime.role:
        deadletter.put(
            runtime.redis,
            f"a {msg.role.value} subtask reached a {runtime.role.value} worker",
            args[0],
            worker=runtime.hostname,
        )
        return
    if runtime.redis.exists(keys.subtask_result(msg.subtask_id)):
        log.warning("subtask %s already has a result; redelivery absorbed", msg.subtask_id)
        _notify_done(runtime, msg.subtask_id)
        return
    span = trace.get_current_span()
    span.set_attribute("agentmesh.task_id", msg.task_id)
    span.set_attribute("agentmesh.subtask_id", msg.subtask_id)
    log.info(
        "subtask %s started",
        msg.subtask_id,
        extra={"task_id": msg.task_id, "subtask_id": msg.subtask_id, "role": msg.role.value},
    )
    runtime._enter(msg)
    try:
        result = _run(runtime, agent, msg)
        _publish(runtime, result)
    finally:
        runtime._leave(msg)
    attrs = {"agentmesh.role": msg.role.value, "status": result.status}
    metrics.subtasks().add(1, attrs)
    metrics.subtask_duration().record(result.finished_at - result.started_at, attrs)
    if result.status == "failed":
        span.set_status(StatusCode.ERROR, result.error or "failed")
    log.info(
        "subtask %s %s",
        msg.subtask_id,
        result.status,
        extra={
            "task_id": msg.task_id,
            "subtask_id": msg.subtask_id,
            "role": msg.role.value,
            "steps": result.steps,
            "input_tokens": result.usage.input_tokens,
            "output_tokens": result.usage.output_tokens,
            "error": result.error,
            "duration_s": round(result.finished_at - result.started_at, 3),
        },
    )


def _run(runtime: WorkerRuntime, agent: RoleAgent, msg: SubtaskMessage) -> SubtaskResult:
    started = time.time()
    r = runtime.redis
    pipe = r.pipeline()
    pipe.set(
        keys.subtask_started(msg.subtask_id),
        json.dumps({"worker": runtime.hostname, "at": started}),
        ex=RESULT_TTL_S,
    )
    pipe.set(
        keys.subtask_lease(msg.subtask_id), runtime.hostname, px=int(runtime.lease_ttl_s * 1000)
    )
    # Wakes the orchestrator's wait, so the record shows the subtask running at once.
    pipe.lpush(keys.subtask_done(msg.subtask_id), "started")
    pipe.expire(keys.subtask_done(msg.subtask_id), RESULT_TTL_S)
    pipe.execute()
    events.publish(
        r,
        msg.task_id,
        "subtask.started",
        f"{msg.role.value} {runtime.hostname} started subtask {msg.subtask_id}",
        subtask_id=msg.subtask_id,
        worker=runtime.hostname,
    )

    state = LoopState(messages=[{"role": "user", "content": msg.instruction}])

    def failed(reason: str, artifacts: dict[str, Any] | None = None) -> SubtaskResult:
        return _failed_result(runtime, msg, started, reason, state=state, artifacts=artifacts)

    if r.exists(keys.cancel_flag(msg.task_id)):
        return failed("the task was cancelled")
    try:
        llm = runtime.llm
    except LLMNotConfiguredError as err:
        return failed(str(err))
    session = agent.open_session(msg, runtime)

    def on_step(record: StepRecord) -> None:
        events.publish(
            r,
            msg.task_id,
            "subtask.step",
            f"{msg.role.value} step {record.step}: "
            + (", ".join(record.tool_calls) if record.tool_calls else "answer"),
            subtask_id=msg.subtask_id,
            worker=runtime.hostname,
            input_tokens=record.usage.input_tokens,
            output_tokens=record.usage.output_tokens,
        )

    loop = AgentLoop(
        client=llm,
        model=runtime.settings.model,
        system=agent.system_prompt,
        tools=session.tools,
        task_id=msg.task_id,
        subtask_id=msg.subtask_id,
        max_steps=msg.max_steps,
        deadline=msg.deadline,
        max_tokens=runtime.settings.llm_max_tokens,
        llm_timeout_s=runtime.settings.llm_timeout_s,
        budget=runtime.budget,
        is_cancelled=lambda: bool(r.exists(keys.cancel_flag(msg.task_id))),
        on_step=on_step,
        agent_name=msg.role.value,
        on_progress=lambda: runtime.progress(msg.subtask_id),
    )
    try:
        outcome = loop.run(state=state)
    except (LoopLimitError, CancelledError, anthropic.APIError) as err:
        prefix = "model call failed: " if isinstance(err, anthropic.APIError) else ""
        return failed(prefix + str(err), artifacts=_collect(session))
    except Exception as err:
        log.exception("subtask %s crashed", msg.subtask_id)
        return failed(f"{type(err).__name__}: {err}", artifacts=_collect(session))
    return SubtaskResult(
        task_id=msg.task_id,
        subtask_id=msg.subtask_id,
        role=msg.role,
        status="succeeded",
        worker=runtime.hostname,
        output=outcome.text,
        usage=state.usage,
        steps=state.steps,
        artifacts=_collect(session),
        started_at=started,
        finished_at=time.time(),
    )


def _collect(session: RoleSession) -> dict[str, Any]:
    """The session's artifacts, then its scratch space is released."""
    try:
        return session.artifacts()
    finally:
        session.close()


def _failed_result(
    runtime: WorkerRuntime,
    msg: SubtaskMessage,
    started: float,
    reason: str,
    *,
    state: LoopState | None = None,
    artifacts: dict[str, Any] | None = None,
) -> SubtaskResult:
    """A failed subtask's result, with what its loop had spent so far."""
    return SubtaskResult(
        task_id=msg.task_id,
        subtask_id=msg.subtask_id,
        role=msg.role,
        status="failed",
        worker=runtime.hostname,
        error=reason,
        usage=state.usage if state else Usage(),
        steps=state.steps if state else 0,
        artifacts=artifacts or {},
        started_at=started,
        finished_at=time.time(),
    )


def _publish(runtime: WorkerRuntime, result: SubtaskResult) -> None:
    """First result wins: a subtask that ran twice is reported once."""
    stored = runtime.redis.set(
        keys.subtask_result(result.subtask_id), result.model_dump_json(), nx=True, ex=RESULT_TTL_S
    )
    runtime.redis.delete(keys.subtask_lease(result.subtask_id))
    if not stored:
        log.warning("subtask %s already had a result; duplicate absorbed", result.subtask_id)
    _notify_done(runtime, result.subtask_id)
    events.publish(
        runtime.redis,
        result.task_id,
        f"subtask.{result.status}",
        f"{result.role.value} {runtime.hostname} {result.status} subtask {result.subtask_id}"
        + (f": {result.error}" if result.error else ""),
        subtask_id=result.subtask_id,
        worker=runtime.hostname,
    )


def _notify_done(runtime: WorkerRuntime, subtask_id: str) -> None:
    pipe = runtime.redis.pipeline()
    pipe.lpush(keys.subtask_done(subtask_id), "1")
    pipe.expire(keys.subtask_done(subtask_id), RESULT_TTL_S)
    pipe.execute()


def _summarize(err: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['msg']}" for e in err.errors()[:5]
    )


# -- the process --------------------------------------------------------------------
_runtime: WorkerRuntime | None = None


class DeadLetterConsumer(Consumer):
    """Celery's consumer, but undecodable messages go to the dead-letter list."""

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        if _runtime is not None:
            deadletter.put(
                _runtime.redis,
                f"undecodable message: {exc}",
                message.body,
                content_type=message.content_type,
                worker=_runtime.hostname,
            )
        super().on_decode_error(message, exc)


class Heartbeat(threading.Thread):
    """Checks the broker, touches the health file, registers the worker."""

    def __init__(self, runtime: WorkerRuntime) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.runtime = runtime
        self.stopping = threading.Event()

    def run(self) -> None:
        settings = self.runtime.settings
        while not self.stopping.is_set():
            try:
                self.runtime.redis.ping()
                self.runtime.renew_leases()
                self.runtime.redis.hset(
                    keys.WORKER_INDEX, self.runtime.hostname, self.runtime.info().model_dump_json()
                )
                if not self.runtime.check_stalls():
                    log.critical(
                        "a stalled agent loop is still stuck: exiting so the worker restarts"
                    )
                    telemetry.shutdown_telemetry()
                    os._exit(70)
                beat(settings.heartbeat_file)
            except Exception:
                log.exception("heartbeat failed")
            self.stopping.wait(settings.heartbeat_interval_s)

    def stop(self) -> None:
        self.stopping.set()
        try:
            self.runtime.redis.hdel(keys.WORKER_INDEX, self.runtime.hostname)
            self.runtime.settings.heartbeat_file.unlink(missing_ok=True)
        except Exception:
            log.exception("could not deregister the worker")


def build_app(runtime: WorkerRuntime, agent: RoleAgent) -> Celery:
    app = create_celery_app(runtime.settings, name=f"agentmesh-{runtime.role.value}")
    app.conf.worker_consumer = f"{__name__}:DeadLetterConsumer"

    @app.task(name=TASK_NAME_BY_ROLE[runtime.role], bind=True, typing=False)
    def run_subtask(self: Any, *args: Any, **kwargs: Any) -> None:
        carrier = {
            name: str(value)
            for name in ("traceparent", "tracestate")
            if (value := getattr(self.request, name, None))
        }
        token = otel_context.attach(telemetry.extract(carrier))
        try:
            with _tracer.start_as_current_span(
                f"process {runtime.role.queue}",
                kind=SpanKind.CONSUMER,
                attributes={
                    **telemetry.messaging_attributes(
                        "process", runtime.role.queue, str(self.request.id)
                    ),
                    "agentmesh.role": runtime.role.value,
                },
            ):
                execute_subtask(runtime, agent, args, kwargs)
        finally:
            otel_context.detach(token)

    def on_unknown(
        sender: Any = None, message: Any = None, exc: Any = None, name: Any = None, **_: Any
    ) -> None:
        deadletter.put(
            runtime.redis,
            f"unknown task {name!r}" if name else f"rejected message: {exc}",
            getattr(message, "body", None),
            worker=runtime.hostname,
        )

    signals.task_unknown.connect(on_unknown, weak=False)
    signals.task_rejected.connect(on_unknown, weak=False)
    return app


def run_worker(agent: RoleAgent, argv: Sequence[str] | None = None) -> None:
    """The console-script entry point of a worker role."""
    global _runtime  # noqa: PLW0603 - the Celery consumer class needs the process's runtime
    setup_logging(agent.role.value)
    try:
        settings = load_settings()
    except SettingsError as err:
        print(f"{agent.role.value}-worker: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    runtime = WorkerRuntime(settings=settings, role=agent.role)
    _runtime = runtime
    telemetry.setup_telemetry(agent.role.value, instance=runtime.hostname)
    metrics.observe(
        "agentmesh.worker.in_flight",
        "{loop}",
        "agent loops this worker holds now",
        lambda: [(runtime.in_flight, {"agentmesh.role": agent.role.value})],
    )
    app = build_app(runtime, agent)
    heartbeat = Heartbeat(runtime)
    signals.worker_ready.connect(lambda **_: heartbeat.start(), weak=False)
    signals.worker_shutdown.connect(lambda **_: heartbeat.stop(), weak=False)
    signals.worker_shutdown.connect(lambda **_: telemetry.shutdown_telemetry(), weak=False)
    args = [
        "worker",
        "--pool=threads",
        f"--concurrency={settings.worker_concurrency}",
        f"--queues={agent.role.queue}",
        f"--hostname={agent.role.value}@{runtime.hostname}",
        "--without-gossip",
        "--without-mingle",
        f"--loglevel={os.environ.get('AGENTMESH_LOG_LEVEL', 'INFO')}",
        *(argv if argv is not None else sys.argv[1:]),
    ]
    shutdown_requested = threading.Event()
    signals.worker_shutting_down.connect(lambda **_: shutdown_requested.set(), weak=False)
    exit_codes: list[int] = []
    signals.worker_shutdown.connect(
        lambda sender=None, **_: exit_codes.append(int(getattr(sender, "exitcode", 0) or 0)),
        weak=False,
    )
    app.worker_main(args)  # returns no exit code: the worker_shutdown signal carries it
    code = exit_codes[-1] if exit_codes else 0
    if code not in (0, None) and not shutdown_requested.is_set():
        # Celery's consumer can die on a broker outage ("Unrecoverable error" while
        # closing the lost connection). Its pool has drained by now, so the process
        # starts again in place instead of staying down until a supervisor notices;
        # subtasks that did not finish are resent through their lapsed leases.
        log.error(
            "the Celery consumer stopped (exit %s) without a shutdown request: restarting", code
        )
        telemetry.shutdown_telemetry()
        os.execv(sys.executable, [sys.executable, *sys.argv])  # noqa: S606 - same program, same args
    raise SystemExit(code)
