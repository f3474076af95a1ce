"""The sandbox protocol's framing, standard library only, and the replica healthcheck.

A frame is a 4-byte big-endian length and that many bytes of JSON. The typed
messages are in ``sandbox_protocol``; this module stays free of third-party imports
so the healthcheck starts in a fraction of the time the server needs.

    python -m agentmesh_coder.sandbox_wire SOCKET    exit 0 if the replica answers a ping

``{hostname}`` in SOCKET is replaced by the host name, so the compose healthcheck names
its own replica's socket without a shell (the offline runtime image has none).
"""

from __future__ import annotations

import json
import socket
import struct
import sys

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 16 * 1024 * 1024


class ProtocolError(RuntimeError):
    """A frame that is not a valid message of this protocol."""


def send_bytes(sock: socket.socket, data: bytes) -> None:
    if len(data) > MAX_FRAME_BYTES:
        msg = f"message of {len(data)} bytes is over the {MAX_FRAME_BYTES}-byte frame limit"
        raise ProtocolError(msg)
    sock.sendall(struct.pack(">I", len(data)) + data)


def recv_bytes(sock: socket.socket) -> bytes:
    size = struct.unpack(">I", _recv_exactly(sock, 4))[0]
    if size > MAX_FRAME_BYTES:
        msg = f"frame of {size} bytes is over the {MAX_FRAME_BYTES}-byte limit"
        raise ProtocolError(msg)
    return _recv_exactly(sock, size)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = sock.recv(min(remaining, 1 << 20))
        if not chunk:
            msg = f"connection closed with {remaining} of {size} bytes still to come"
            raise ProtocolError(msg)
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def ping(path: str, timeout: float = 5.0) -> str | None:
    """None if the replica at ``path`` answers a ping, else why not."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(path)
            send_bytes(conn, json.dumps({"version": PROTOCOL_VERSION, "op": "ping"}).encode())
            reply = json.loads(recv_bytes(conn))
    except (OSError, ProtocolError, ValueError) as err:
        return f"no answer on {path}: {err}"
    return None if reply.get("ok") is True else f"{path}: {reply.get('error')}"


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m agentmesh_coder.sandbox_wire SOCKET")
    problem = ping(sys.argv[1].replace("{hostname}", socket.gethostname()))
    if problem:
        sys.exit(f"sandbox: {problem}")


if __name__ == "__main__":
    main()
