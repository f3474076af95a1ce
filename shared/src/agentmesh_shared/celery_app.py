"""The one Celery app factory every service uses.

JSON only (never pickle); a ``research`` and a ``code`` queue; late acks with
redelivery when a worker dies; prefetch 1 so a busy worker does not hoard messages;
a visibility timeout longer than the longest subtask, so a slow subtask is not
redelivered while it still runs; results travel through our own Redis keys, so the
Celery result backend is off.

A worker (``consumer=<role>``) keeps the messages it has reserved but not yet
acknowledged under keys of its own queue (``unacked:<queue>``, ...), not in the
transport's one shared ``unacked`` hash: each role's broker user can then be allowed
its own reserved messages and denied the other role's (docker/broker/acl.sh).
"""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from agentmesh_shared.models import QUEUE_BY_ROLE, TASK_NAME_BY_ROLE, Role
from agentmesh_shared.settings import Settings


def create_celery_app(
    settings: Settings, name: str = "agentmesh", *, consumer: Role | None = None
) -> Celery:
    app = Celery(name, broker=settings.redis_connection_url(), set_as_current=False)
    reserved: dict[str, str] = {}
    if consumer is not None:
        reserved = {
            f"{key}_key": f"{key}:{consumer.queue}"
            for key in ("unacked", "unacked_index", "unacked_mutex")
        }
    app.conf.update(
        # kombu's Redis transport, except that a malformed message is dead-lettered
        # where it is read instead of killing the consumer (see broker_transport).
        broker_transport="agentmesh_shared.broker_transport:Transport",
        task_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        result_serializer="json",
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_pool_limit=max(settings.worker_concurrency, settings.planner_concurrency) + 4,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "socket_keepalive": True,
            "health_check_interval": 30,
            **reserved,
        },
        worker_soft_shutdown_timeout=min(settings.subtask_timeout_s, 60.0),
        worker_enable_soft_shutdown_on_idle=True,
        # Each queue has its own direct exchange and routing key, so no queue is ever
        # bound to another's messages.
        task_queues=[
            Queue(queue, Exchange(queue, type="direct"), routing_key=queue)
            for queue in QUEUE_BY_ROLE.values()
        ],
        task_routes={TASK_NAME_BY_ROLE[role]: {"queue": role.queue} for role in Role},
        task_default_queue=QUEUE_BY_ROLE[Role.RESEARCHER],
        task_create_missing_queues=False,
    )
    return app
