"""A scripted Messages-API server: a real HTTP server speaking Anthropic's wire format.

It stands in for the vendor in tests and in the offline demo, so the real SDK, real
HTTP and the real agent loops run end to end. It keeps no state: each reply follows
from the request (which tools are offered tells the role, the number of tool results
so far tells the step). Every text it returns starts with ``[scripted model]``.

Scripts:
- orchestrator (offers ``delegate``): one research and one code delegation in one
  turn (so they run in parallel), then a synthesis of their results;
- researcher (offers ``memory_store``): search memory, store a note, report; when
  its instruction holds an http(s) URL, it fetches that URL first with ``fetch_url``
  and reports what the fetch returned (the page's text, or the refusal);
- coder (offers ``run_python``): search memory, write ``main.py``, run it, report
  the code and its real output. When the task holds a fenced ```python block, the
  orchestrator hands it to the coder whole and the coder's ``main.py`` is exactly
  that code (so tests can send code through the real path to the sandbox).
- MCP tools: a task holding ``[[mcp <tool> {json}]]`` directives (``<tool>`` as the
  model sees it, ``<server>__<name>``) has them handed on to both workers; a worker
  calls each directive's tool that it is offered, in order, and answers with every
  result and the names of the directives' tools it was not offered.

``SCRIPTED_LLM_DELAY_MS`` (or ``--delay-ms``) delays every reply. For fault tests,
``POST /admin/config`` changes the delay at run time and makes the next N calls
fail with a given status (429, 500, 529, ...), as the vendor's API does under load;
``GET /admin/stats`` counts calls. A request with ``"stream": true`` gets the same
reply as server-sent events (message_start, content blocks with deltas, message_delta,
message_stop), as the Messages API streams.

``--arrivals FILE`` appends one JSON line per Messages-API request as it arrives:
``{"at": <unix time>, "script": <role's script>, "results": <tool results so far>,
"subject": <the first user text, shortened>}``. The time a loop's next call arrives
is when that loop finished the work of its previous reply, so the lines show where a
batch's seconds go (``python -m tests.bench.timeline`` reads them).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentmesh_shared.heap import freeze_startup_heap

LABEL = "[scripted model]"
log = logging.getLogger("agentmesh.scripted_llm")

Block = dict[str, Any]


def _tool_use(name: str, payload: dict[str, Any]) -> Block:
    return {
        "type": "tool_use",
        "id": f"toolu_{uuid.uuid4().hex[:20]}",
        "name": name,
        "input": payload,
    }


def _text(text: str) -> Block:
    return {"type": "text", "text": text}


def _first_user_text(messages: list[dict[str, Any]]) -> str:
    for message in messages:
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(
                    str(b.get("text", ""))
                    for b in content
                    if isinstance(b, dict) and b.get("type") == "text"
                )
    return ""


def _tool_results(messages: list[dict[str, Any]]) -> list[str]:
    results: list[str] = []
    for message in messages:
        content = message.get("content")
        if message.get("role") != "user" or not isinstance(content, list):
            continue
        for block in content:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                value = block.get("content", "")
                if isinstance(value, list):
                    value = " ".join(str(v.get("text", "")) for v in value if isinstance(v, dict))
                results.append(str(value))
    return results


_URL = re.compile(r"https?://[^\s\"'<>`]+")


def _subject(text: str, limit: int = 160) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def coder_program(instruction: str) -> str:
    """The small program the scripted coder writes: real, deterministic work."""
    subject = _subject(instruction, 200)
    return (
        "import hashlib\n"
        f"SUBJECT = {subject!r}\n"
        "words = SUBJECT.split()\n"
        'print(f"words={len(words)}")\n'
        'print(f"sha256={hashlib.sha256(SUBJECT.encode()).hexdigest()[:16]}")\n'
        "primes = [n for n in range(2, 100) if all(n % d for d in range(2, int(n ** 0.5) + 1))]\n"
        'print(f"primes_below_100={len(primes)}")\n'
    )


_FENCED_PYTHON = re.compile(r"```python[ \t]*\r?\n(.*?)^[ \t]*```", re.DOTALL | re.MULTILINE)


def fenced_python(text: str) -> str | None:
    """The first fenced ```python block of ``text``, exactly as written, if any."""
    match = _FENCED_PYTHON.search(text)
    return match[1] if match else None


_MCP_DIRECTIVE = re.compile(r"\[\[mcp ([A-Za-z0-9_-]{1,64}) (\{.*?\})\]\]", re.DOTALL)


def mcp_directives(text: str) -> list[tuple[str, dict[str, Any]]]:
    """The ``[[mcp <tool> {json}]]`` directives of ``text``, in order."""
    found: list[tuple[str, dict[str, Any]]] = []
    for match in _MCP_DIRECTIVE.finditer(text):
        try:
            arguments = json.loads(match[2])
        except ValueError:
            continue
        if isinstance(arguments, dict):
            found.append((match[1], arguments))
    return found


def mcp_script(
    directives: list[tuple[str, dict[str, Any]]], results: list[str], tools: set[str]
) -> tuple[list[Block], str]:
    """Call each directive's tool this role is offered, then report every result."""
    callable_ = [(name, args) for name, args in directives if name in tools]
    if len(results) < len(callable_):
        name, arguments = callable_[len(results)]
        return [_tool_use(name, arguments)], "tool_use"
    lines = [
        f"- {name}: {_subject(result, 600)}"
        for (name, _), result in zip(callable_, results, strict=False)
    ]
    missing = sorted({name for name, _ in directives if name not in tools})
    if missing:
        lines.append(f"- not offered to this role: {', '.join(missing)}")
    return [_text(f"{LABEL} MCP tool results:\n" + "\n".join(lines))], "end_turn"


def orchestrator_script(task: str, results: list[str]) -> tuple[list[Block], str]:
    subject = _subject(task)
    if not results:
        code = fenced_python(task)
        instruction = f"Write and run a program for: {subject}"
        research = f"Research: {subject}"
        if code is not None:
            # The block is handed on whole: the coder runs exactly this code.
            instruction += f"\n\n```python\n{code}```\n"
        directives = "".join(
            f"\n[[mcp {name} {json.dumps(args)}]]" for name, args in mcp_directives(task)
        )
        return [
            _text(f"{LABEL} Plan: research the subject, and write and run a program about it."),
            _tool_use("delegate", {"role": "researcher", "instruction": research + directives}),
            _tool_use("delegate", {"role": "coder", "instruction": instruction + directives}),
        ], "tool_use"
    summary = "\n".join(f"- {_subject(r, 400)}" for r in results)
    return [_text(f"{LABEL} Synthesis for: {subject}\n{summary}")], "end_turn"


def researcher_script(task: str, results: list[str]) -> tuple[list[Block], str]:
    url = _URL.search(task)
    if url is not None:
        if not results:
            return [_tool_use("fetch_url", {"url": url.group(0)})], "tool_use"
        return [_text(f"{LABEL} Fetched {url.group(0)}: {_subject(results[-1], 600)}")], "end_turn"
    subject = _subject(task)
    if len(results) == 0:
        return [_tool_use("memory_search", {"query": subject, "k": 3})], "tool_use"
    if len(results) == 1:
        note = f"{LABEL} Research note on '{subject}': memory held {results[0].count('id=')} related notes."
        return [_tool_use("memory_store", {"text": note})], "tool_use"
    return [
        _text(f"{LABEL} Research done for '{subject}'. {_subject(results[-1], 200)}")
    ], "end_turn"


def coder_script(task: str, results: list[str]) -> tuple[list[Block], str]:
    if len(results) == 0:
        return [_tool_use("memory_search", {"query": _subject(task), "k": 3})], "tool_use"
    if len(results) == 1:
        program = fenced_python(task)
        if program is None:
            program = coder_program(task)
        return [_tool_use("write_file", {"path": "main.py", "content": program})], "tool_use"
    if len(results) == 2:
        return [_tool_use("run_python", {"path": "main.py"})], "tool_use"
    return [_text(f"{LABEL} Wrote main.py and ran it.\n{results[-1]}")], "end_turn"


def script_for(request: dict[str, Any]) -> str:
    """Which script answers ``request``: orchestrator, mcp, coder, researcher or echo."""
    tools = {str(t.get("name")) for t in request.get("tools", []) if isinstance(t, dict)}
    if "delegate" in tools:
        return "orchestrator"
    if mcp_directives(_first_user_text(request.get("messages", []))) and (
        "run_python" in tools or "memory_store" in tools
    ):
        return "mcp"
    if "run_python" in tools:
        return "coder"
    if "memory_store" in tools:
        return "researcher"
    return "echo"


def reply_for(request: dict[str, Any]) -> tuple[list[Block], str]:
    messages = request.get("messages", [])
    task = _first_user_text(messages)
    results = _tool_results(messages)
    script = script_for(request)
    if script == "orchestrator":
        return orchestrator_script(task, results)
    if script == "mcp":
        tools = {str(t.get("name")) for t in request.get("tools", []) if isinstance(t, dict)}
        return mcp_script(mcp_directives(task), results, tools)
    if script == "coder":
        return coder_script(task, results)
    if script == "researcher":
        return researcher_script(task, results)
    return [_text(f"{LABEL} {_subject(task)}")], "end_turn"


def estimate_tokens(value: object) -> int:
    """A stable token estimate (about four characters a token)."""
    return max(1, math.ceil(len(json.dumps(value, ensure_ascii=False)) / 4))


class ScriptedHandler(BaseHTTPRequestHandler):
    server: ScriptedServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes: with Nagle's algorithm the body waits for
    # the client's delayed ACK of the headers, ~40 ms a reply on a kept-alive
    # connection, which every caller through the gateway paid and the SDK's own
    # first connections did not.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", f"req_scripted_{uuid.uuid4().hex[:12]}")
        self.end_headers()
        self.wfile.write(data)

    def _configure(self, raw: bytes) -> None:
        try:
            config = _Config.model_validate_json(raw or b"{}")
        except ValidationError as err:
            self._error(HTTPStatus.BAD_REQUEST, "invalid_request_error", str(err))
            return
        with self.server.lock:
            if config.delay_ms is not None:
                self.server.delay_s = config.delay_ms / 1000
            self.server.fail_status = config.fail_status
            self.server.fail_remaining = config.fail_count
        self._send(HTTPStatus.OK, {"status": "ok", **config.model_dump()})

    def _error(self, status: int, kind: str, message: str) -> None:
        self._send(status, {"type": "error", "error": {"type": kind, "message": message}})

    def do_GET(self) -> None:
        if self.path in {"/healthz", "/readyz", "/admin/stats"}:
            self._send(
                HTTPStatus.OK,
                {
                    "status": "ok",
                    "scripted": True,
                    "calls": self.server.calls,
                    "failed_calls": self.server.failed_calls,
                    "delay_ms": int(self.server.delay_s * 1000),
                },
            )
            return
        self._error(HTTPStatus.NOT_FOUND, "not_found_error", f"no route {self.path}")

    def do_POST(self) -> None:
        arrived = time.time()
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path == "/admin/config":
            self._configure(raw)
            return
        if self.path.split("?")[0] != "/v1/messages":
            self._error(HTTPStatus.NOT_FOUND, "not_found_error", f"no route {self.path}")
            return
        if not (self.headers.get("x-api-key") or self.headers.get("authorization")):
            self._error(
                HTTPStatus.UNAUTHORIZED, "authentication_error", "x-api-key header is required"
            )
            return
        try:
            request = json.loads(raw)
        except ValueError as err:
            self._error(
                HTTPStatus.BAD_REQUEST, "invalid_request_error", f"invalid JSON body: {err}"
            )
            return
        if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
            self._error(HTTPStatus.BAD_REQUEST, "invalid_request_error", "messages: field required")
            return
        if self.server.arrivals is not None:
            self.server.record_arrival(arrived, request)
        with self.server.lock:
            self.server.calls += 1
            fail_status = None
            if self.server.fail_remaining > 0:
                self.server.fail_remaining -= 1
                self.server.failed_calls += 1
                fail_status = self.server.fail_status
        if self.server.delay_s:
            time.sleep(self.server.delay_s)
        if fail_status is not None:
            kind = {429: "rate_limit_error", 529: "overloaded_error"}.get(fail_status, "api_error")
            # 529 (overloaded) is Anthropic's own status: not in http.HTTPStatus.
            self._error(fail_status, kind, f"{LABEL} injected failure {fail_status}")
            return
        content, stop_reason = reply_for(request)
        message = {
            "id": f"msg_scripted_{uuid.uuid4().hex[:20]}",
            "type": "message",
            "role": "assistant",
            "model": str(request.get("model", "scripted")),
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": estimate_tokens(
                    [request.get("system"), request.get("tools"), request.get("messages")]
                ),
                "output_tokens": estimate_tokens(content),
            },
        }
        if request.get("stream") is True:
            self._stream(message)
            return
        self._send(HTTPStatus.OK, message)

    def _stream(self, message: dict[str, Any]) -> None:
        """The same reply as server-sent events, in the order the Messages API sends them."""
        self.send_response(HTTPStatus.OK)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.send_header("request-id", f"req_scripted_{uuid.uuid4().hex[:12]}")
        self.end_headers()
        self.close_connection = True

        def event(kind: str, data: dict[str, Any]) -> None:
            payload = json.dumps({"type": kind, **data})
            self.wfile.write(f"event: {kind}\ndata: {payload}\n\n".encode())
            self.wfile.flush()

        usage = message["usage"]
        start = {**message, "content": [], "stop_reason": None}
        start["usage"] = {"input_tokens": usage["input_tokens"], "output_tokens": 1}
        event("message_start", {"message": start})
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                event(
                    "content_block_start",
                    {"index": index, "content_block": {"type": "text", "text": ""}},
                )
                words = block["text"].split(" ")
                for n, word in enumerate(words):
                    piece = word if n == len(words) - 1 else word + " "
                    event(
                        "content_block_delta",
                        {"index": index, "delta": {"type": "text_delta", "text": piece}},
                    )
            else:
                event(
                    "content_block_start",
                    {"index": index, "content_block": {**block, "input": {}}},
                )
                partial = json.dumps(block["input"])
                event(
                    "content_block_delta",
                    {
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": partial},
                    },
                )
            event("content_block_stop", {"index": index})
        event(
            "message_delta",
            {
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
        event("message_stop", {})


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    delay_ms: int | None = Field(None, ge=0, le=600_000)
    fail_status: int = Field(529, ge=400, le=599)
    fail_count: int = Field(0, ge=0)


class ScriptedServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def __init__(
        self, address: tuple[str, int], delay_ms: int = 0, arrivals: TextIO | None = None
    ) -> None:
        super().__init__(address, ScriptedHandler)
        self.delay_s = max(delay_ms, 0) / 1000
        self.calls = 0
        self.failed_calls = 0
        self.fail_remaining = 0
        self.fail_status = 529
        self.lock = threading.Lock()
        self.arrivals = arrivals

    def record_arrival(self, at: float, request: dict[str, Any]) -> None:
        """One line of the ``--arrivals`` log for a Messages-API request."""
        messages = request.get("messages", [])
        line = json.dumps(
            {
                "at": at,
                "script": script_for(request),
                "results": len(_tool_results(messages)),
                "subject": _subject(_first_user_text(messages), 200),
            }
        )
        with self.lock:
            if self.arrivals is not None:
                self.arrivals.write(line + "\n")
                self.arrivals.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Scripted Anthropic Messages-API server")
    parser.add_argument("--host", default=os.environ.get("SCRIPTED_LLM_HOST", "127.0.0.1"))
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("SCRIPTED_LLM_PORT", "8090"))
    )
    parser.add_argument(
        "--delay-ms", type=int, default=int(os.environ.get("SCRIPTED_LLM_DELAY_MS", "0") or 0)
    )
    parser.add_argument(
        "--arrivals",
        type=argparse.FileType("a", encoding="utf-8"),
        help="append a JSON line per Messages-API request as it arrives",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    server = ScriptedServer((args.host, args.port), delay_ms=args.delay_ms, arrivals=args.arrivals)
    print(
        json.dumps(
            {
                "event": "scripted model listening",
                "address": f"http://{args.host}:{server.server_address[1]}",
                "delay_ms": args.delay_ms,
                "note": "replies are scripted, not a real model",
            }
        ),
        flush=True,
    )
    freeze_startup_heap()
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if args.arrivals is not None:
            args.arrivals.close()


if __name__ == "__main__":
    main()
