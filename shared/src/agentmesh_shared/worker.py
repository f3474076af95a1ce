"""The worker process: the Celery consumer, its heartbeat, and the process's wiring.

Subtask execution lives in :mod:`agentmesh_shared.execute`, the process's state and
the role plug-in in :mod:`agentmesh_shared.runtime`, the hand-off with the planner
in :mod:`agentmesh_shared.handoff`.

Pool choice: Celery's ``threads`` pool. An agent loop spends nearly all its time
waiting on the LLM over HTTP, so one process holds ``AGENTMESH_WORKER_CONCURRENCY``
loops at once for the memory of one interpreter; prefork would need a process per
loop and gevent would monkey-patch every library we load.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from celery import Celery, signals
from celery.worker.consumer import Consumer
from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind

from agentmesh_shared import deadletter, keys, metrics, telemetry
from agentmesh_shared.celery_app import create_celery_app
from agentmesh_shared.execute import execute_subtask, fail_stalled
from agentmesh_shared.health import beat
from agentmesh_shared.heap import freeze_startup_heap
from agentmesh_shared.logs import setup_logging
from agentmesh_shared.mcp import McpConfigError
from agentmesh_shared.models import TASK_NAME_BY_ROLE
from agentmesh_shared.runtime import RoleAgent, RoleSession, WorkerRuntime
from agentmesh_shared.settings import settings_or_exit

log = logging.getLogger("agentmesh.worker")
_tracer = telemetry.tracer("agentmesh.worker")

__all__ = ["RoleAgent", "RoleSession", "WorkerRuntime", "build_app", "run_worker"]


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
                if not self.runtime.check_stalls(partial(fail_stalled, self.runtime)):
                    log.critical(
                        "a stalled agent loop is still stuck: exiting so the worker restarts"
                    )
                    telemetry.shutdown_telemetry()
                    os._exit(70)
                self.runtime.mcp.reconnect_in_background()
                beat(
                    settings.heartbeat_file,
                    [
                        f"mcp server {name}: {state}"
                        for name, state in self.runtime.mcp.status().items()
                        if state != "connected"
                    ],
                )
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


def start_pool_threads(pool: Any, hold_s: float = 10.0) -> int:
    """Start every thread of Celery's threads pool now, before the first subtasks.

    Its ``ThreadPoolExecutor`` makes a thread per submitted subtask until it has
    ``--concurrency`` of them, and ``Thread.start`` waits until the new thread runs:
    on the consumer's thread, in the middle of a burst, while the burst's other
    messages wait. A new replica's first burst of 50 subtasks so started its loops up
    to 0.75 s late (the second burst: within 0.02 s). Here each submission holds its
    thread until all are made (``submit`` makes them before it returns), so none
    finds an idle thread to reuse; then all are let go. Subtasks already running are
    not waited for: submissions past the free threads queue behind them and end at
    once when they run. Returns how many threads the pool has.
    """
    executor = getattr(pool, "executor", None)
    if not isinstance(executor, ThreadPoolExecutor):
        return 0
    made = threading.Event()
    try:
        for _ in range(int(getattr(pool, "limit", 0) or 0)):
            executor.submit(made.wait, hold_s)
    finally:
        made.set()
    return len(executor._threads)  # the executor keeps no public count


def build_app(runtime: WorkerRuntime, agent: RoleAgent) -> Celery:
    app = create_celery_app(
        runtime.settings, name=f"agentmesh-{runtime.role.value}", consumer=runtime.role
    )
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
    settings = settings_or_exit(f"{agent.role.value}-worker")
    runtime = WorkerRuntime(settings=settings, role=agent.role)
    _runtime = runtime
    telemetry.setup_telemetry(agent.role.value, instance=runtime.hostname)
    try:
        hub = runtime.mcp
    except McpConfigError as err:
        print(f"{agent.role.value}-worker: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    for name, error in hub.connect_all().items():
        if error is None:
            log.info("mcp server %s connected", name)
        else:
            log.error("mcp server %s (%s) is not connected: %s", name, hub.servers[name].url, error)
    runtime.warm_up()
    metrics.observe(
        "agentmesh.worker.in_flight",
        "{loop}",
        "agent loops this worker holds now",
        lambda: [(runtime.in_flight, {"agentmesh.role": agent.role.value})],
    )
    app = build_app(runtime, agent)
    heartbeat = Heartbeat(runtime)
    signals.worker_ready.connect(lambda **_: heartbeat.start(), weak=False)
    signals.worker_ready.connect(
        lambda sender=None, **_: log.info(
            "%d loop threads started", start_pool_threads(getattr(sender, "pool", None))
        ),
        weak=False,
    )
    # Connected after the loop threads' start: the heap is the worker's whole set-up.
    signals.worker_ready.connect(lambda **_: freeze_startup_heap(), weak=False)
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
