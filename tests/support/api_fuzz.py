"""Random API requests: methods, paths, ids, query strings, headers and bodies.

Most are malformed on purpose; none may get an answer of 500 or more. Bodies never
carry a ``text`` field of a valid task, so the fuzz does not create work of its own.
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass
from urllib.parse import quote

from tests.support.junk import _random_json

METHODS = ["GET", "GET", "GET", "POST", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
ROUTES = [
    "/tasks",
    "/tasks/{id}",
    "/tasks/{id}/events",
    "/tasks/{id}/cancel",
    "/tasks/{id}/trace",
    "/workers",
    "/deadletter",
    "/readyz",
    "/healthz",
    "/{junk}",
    "/tasks/{id}/{junk}",
    "/dashboard/tasks",
    "/dashboard/queues",
    "/dashboard/tasks/{id}/answer",
    "/ui/{junk}",
]
QUERY_KEYS = ["after", "wait", "limit", "status", "x", "after", "wait", "idempotency_key"]


@dataclass
class FuzzRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None


def _text(rng: random.Random, size: int) -> str:
    alphabet = string.printable + "äöü€😀\u202e\u0000"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(size + 1)))


def _ident(rng: random.Random, known: list[str]) -> str:
    kind = rng.randrange(7)
    if kind == 0 and known:
        return rng.choice(known)
    if kind == 1:
        return "a" * rng.choice([129, 1000, 5000])
    if kind == 2:
        return "..%2F..%2Fetc%2Fpasswd"
    if kind == 3:
        return quote(_text(rng, 40), safe="")
    if kind == 4:
        return str(rng.randint(-(10**20), 10**20))
    if kind == 5:
        return "%00%ff%fe"
    return "".join(rng.choice(string.hexdigits) for _ in range(32))


def _query_value(rng: random.Random) -> str:
    return rng.choice(
        [
            str(rng.uniform(-10, 3)),
            str(rng.randint(-(10**6), 10**6)),
            "nan",
            "inf",
            "-0",
            "1e309",
            _text(rng, 20),
            "0-" + str(rng.randint(0, 10**6)),
            "running",
            "",
        ]
    )


def _headers(rng: random.Random, token: str | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    if token is not None and rng.random() < 0.5:
        # Half the requests carry the real credential, so they reach the endpoints.
        headers["Authorization"] = f"Bearer {token}"
    elif rng.random() < 0.7:
        headers["Authorization"] = rng.choice(
            ["Bearer " + _ident(rng, []), "Basic !!", "", "Bearer", _text(rng, 60)]
        )
    if rng.random() < 0.5:
        headers["Content-Type"] = rng.choice(
            ["application/json", "text/plain", "application/x-www-form-urlencoded",
             "multipart/form-data; boundary=x", "application/json; charset=latin-1", _text(rng, 20)]
        )  # fmt: skip
    if rng.random() < 0.3:
        headers["Idempotency-Key"] = _text(rng, 300)
    if rng.random() < 0.3:
        headers["traceparent"] = rng.choice(
            ["00-zz-yy-01", "00-" + "0" * 32 + "-" + "0" * 16 + "-00", _text(rng, 80)]
        )
    if rng.random() < 0.2:
        headers[f"X-{rng.randrange(1000)}"] = _text(rng, 200)
    # header values must be latin-1 text without line breaks to be sendable at all
    # (HTTP/1.1 also forbids leading and trailing whitespace)
    return {
        k: "".join(c for c in v if 32 <= ord(c) < 127 or 160 <= ord(c) < 256).strip()
        for k, v in headers.items()
    }


def _body(rng: random.Random) -> bytes | None:
    kind = rng.randrange(7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.randbytes(rng.randrange(1, 2000))
    if kind == 2:
        return json.dumps(_random_json(rng)).encode()
    if kind == 3:  # task-shaped, but never a valid task
        return json.dumps(
            {
                "text": rng.choice(["", "   ", "x" * 9000, None, 7, ["a"], {"t": 1}]),
                "max_steps": rng.choice([-1, 0, "many", 10**9, None]),
                "token_budget": rng.choice([-5, "lots", 1.5]),
                "timeout_s": rng.choice([-1, "x", 0]),
            }
        ).encode()
    if kind == 4:
        return b'{"text": "' + b"y" * rng.randrange(1, 100) + b'"'  # truncated JSON
    if kind == 5:
        return json.dumps({"text": "ok", "unknown_field": _random_json(rng)}).encode()
    return ("[" * 5000 + "]" * 5000).encode()


def requests(
    count: int, known_ids: list[str], seed: int = 12, token: str | None = None
) -> list[FuzzRequest]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        route = rng.choice(ROUTES)
        path = route.replace("{id}", _ident(rng, known_ids)).replace(
            "{junk}", quote(_text(rng, 30), safe="/")
        )
        if rng.random() < 0.7:
            pairs = [
                f"{quote(rng.choice(QUERY_KEYS))}={quote(_query_value(rng))}"
                for _ in range(rng.randrange(1, 4))
            ]
            path += "?" + "&".join(pairs)
        out.append(FuzzRequest(rng.choice(METHODS), path, _headers(rng, token), _body(rng)))
    return out
