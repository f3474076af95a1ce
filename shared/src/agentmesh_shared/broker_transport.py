"""kombu's Redis transport, except that no message on a queue can stop the consumer.

kombu's Redis channel pops a message with ``BRPOP`` and parses it in the same
breath (``loads(item)``, then ``Message(payload)`` reads ``payload["properties"]``).
Bytes that are not JSON, or JSON that is not kombu's envelope, raise out of the
event loop: Celery's consumer dies with "Unrecoverable error", and the popped
message is gone without a trace (it never reached the unacked index). Queued behind
it, real work waits for the process to restart, once per junk message.

This channel checks the envelope where the bytes are read. A message that is not a
well-formed envelope goes to the dead-letter list with its (bounded) raw bytes and
the reason; so does one whose delivery raised anyway (an envelope Celery's handler
cannot digest), after it is removed from the unacked index so that it is not
restored on the next start. Connection errors still propagate: they are the broker's
fault, not the message's, and Celery reconnects.

Only ``_brpop_read`` is replaced (the code is kombu 5.7's with one line changed:
the parse-and-deliver goes through :meth:`Channel._deliver_raw`); the worker
consumes through it. The tests in ``tests/integration/test_broker_transport.py``
run the real transport against a real redis-server, so a kombu upgrade that moves
this code fails there first. Selected by ``broker_transport`` in
:func:`agentmesh_shared.celery_app.create_celery_app`.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str

from agentmesh_shared import deadletter

log = logging.getLogger("agentmesh.broker")


def envelope_problem(payload: object) -> str | None:
    """Why ``payload`` is not a kombu message envelope we can deliver, or None."""
    if not isinstance(payload, dict):
        return f"not a message envelope: a JSON {type(payload).__name__}, not an object"
    properties = payload.get("properties")
    if not isinstance(properties, dict):
        return "not a message envelope: no 'properties' object"
    tag = properties.get("delivery_tag")
    if not isinstance(tag, str) or not tag:
        return "not a message envelope: no 'properties.delivery_tag' string"
    if not isinstance(properties.get("delivery_info", {}), dict):
        return "not a message envelope: 'properties.delivery_info' is not an object"
    for name in ("headers",):
        if payload.get(name) is not None and not isinstance(payload[name], dict):
            return f"not a message envelope: '{name}' is not an object"
    for name in ("content-type", "content-encoding"):
        if payload.get(name) is not None and not isinstance(payload[name], str):
            return f"not a message envelope: '{name}' is not a string"
    body = payload.get("body")
    if body is not None and not isinstance(body, str):
        return "not a message envelope: 'body' is not a string"
    encoding = properties.get("body_encoding")
    if encoding not in (None, "utf-8", "base64"):
        return f"not a message envelope: unknown body_encoding {encoding!r}"
    if encoding == "base64" and body:
        try:
            base64.b64decode(body.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            return "undecodable message: the body is not valid base64"
    return None


class Channel(kombu_redis.Channel):
    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:  # type: ignore[attr-defined]
                # if there's a ConnectionError, disconnect so the next
                # iteration will reconnect automatically.
                self.client.connection.disconnect()
                raise
            if dest__item:
                dest, item = dest__item
                dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
                self._queue_cycle.rotate(dest)  # type: ignore[attr-defined]
                self._deliver_raw(item, dest)
                return True
            raise Empty()
        finally:
            self._in_poll = None
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    def _deliver_raw(self, item: bytes | str, queue: str) -> None:
        """Deliver one popped message, or dead-letter it; never raise for its content."""
        try:
            payload = json.loads(item)
        except (ValueError, UnicodeDecodeError) as err:
            self._dead_letter(item, queue, f"undecodable message: not JSON ({err})")
            return
        problem = envelope_problem(payload)
        if problem is not None:
            self._dead_letter(item, queue, problem)
            return
        try:
            self.connection._deliver(payload, queue)
        except self.connection_errors:  # type: ignore[attr-defined]
            raise
        except Exception as err:  # noqa: BLE001 - whatever the handler raised, the message is at fault
            tag = payload["properties"]["delivery_tag"]
            try:
                self.qos.reject(tag, requeue=False)
            except Exception:  # noqa: BLE001 - not in the unacked index: nothing to remove
                log.debug("delivery tag %s was not pending", tag)
            self._dead_letter(
                item,
                queue,
                f"the consumer could not handle the message: {type(err).__name__}: {err}",
            )

    def _dead_letter(self, item: bytes | str, queue: str, reason: str) -> None:
        with self.conn_or_acquire() as client:
            deadletter.put(client, reason, item, queue=queue, stage="transport")


class Transport(kombu_redis.Transport):
    Channel = Channel
