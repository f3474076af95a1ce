"""The researcher's fetch against a real local HTTP server acting as the egress proxy.

httpx sends proxied http:// requests in absolute form (``GET http://host/path``), so
one local server plays both the proxy and the outside world's hosts; no name is
resolved and nothing leaves the machine.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import httpx
import pytest
from agentmesh_researcher.fetch import (
    fetch_client,
    fetch_url_tool,
    host_allowed,
    html_to_text,
    refusal,
)
from agentmesh_shared.agent import ToolContext
from agentmesh_shared.settings import Settings, load_settings

PAGE = b"<html><head><style>x{}</style><script>var a</script></head><body><h1>Title</h1><p>Body text</p></body></html>"
ALLOW = "allowed.example.test,*.docs.example.test"


class Handler(BaseHTTPRequestHandler):
    """The outside world behind the proxy: answers by host and path of the absolute URL."""

    seen: list[str] = []  # noqa: RUF012 - shared by the test server's threads

    def do_GET(self) -> None:
        Handler.seen.append(self.path)
        url = urlsplit(self.path)
        if url.hostname == "blocked.example.test":
            self.send_response(403)
            self.send_header("x-squid-error", "ERR_ACCESS_DENIED 0")
            self.end_headers()
            return
        routes = {
            "/": (200, PAGE, {}),
            "/big": (200, b"z" * 100_000, {}),
            "/to-denied": (302, b"", {"location": "http://denied.example.test/secret"}),
            "/to-ip": (302, b"", {"location": "http://169.254.169.254/latest/meta-data/"}),
            "/to-mesh": (302, b"", {"location": "http://orchestrator:8080/tasks"}),
            "/to-page": (301, b"", {"location": "/"}),
            "/loop": (302, b"", {"location": "/loop"}),
        }
        status, body, headers = routes.get(url.path, (404, b"no such page", {}))
        self.send_response(status)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def proxy() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


CTX = ToolContext(task_id="t", subtask_id="s", tool_use_id="u", step=1)


def _settings(proxy: str, **overrides: object) -> Settings:
    return load_settings(**{"egress_proxy": proxy, "fetch_allowlist": ALLOW, **overrides})


def _fetch(settings: Settings, url: str) -> tuple[bool, str]:
    with fetch_client(settings) as client:
        outcome = fetch_url_tool(settings, client).invoke({"url": url}, CTX)
    return outcome.is_error, outcome.content


def test_html_is_reduced_to_text() -> None:
    assert html_to_text(PAGE.decode()) == "Title Body text"


def test_allowlist_globs() -> None:
    assert not host_allowed("https://docs.python.org/x", "")
    assert host_allowed("https://docs.python.org/x", "*.python.org, example.com")
    assert not host_allowed("https://evil.example.net/", "*.python.org,example.com")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/", "IP literal"),
        ("http://169.254.169.254/latest/meta-data/", "IP literal"),
        ("http://[::1]:8080/", "IP literal"),
        ("http://orchestrator:8080/tasks", "mesh's own services"),
        ("http://broker:6379/", "mesh's own services"),
        ("http://intranet/", "single-label"),
        ("http://2130706433/", "single-label or numeric"),
        ("http://printer.local/", "local name"),
        ("http://user:pw@allowed.example.test/", "credentials"),
        ("file:///etc/passwd", "only http and https"),
        ("http://denied.example.test/", "not in AGENTMESH_FETCH_ALLOWLIST"),
    ],
)
def test_refused_urls_name_the_reason(url: str, reason: str) -> None:
    found = refusal(url, ALLOW)
    assert found is not None and reason in found


def test_an_empty_allowlist_means_no_fetching_and_names_the_variable() -> None:
    found = refusal("https://allowed.example.test/", "")
    assert found is not None and "AGENTMESH_FETCH_ALLOWLIST is empty" in found


def test_fetch_reads_a_real_page_through_the_proxy_and_bounds_its_size(proxy: str) -> None:
    error, page = _fetch(_settings(proxy, fetch_max_bytes=1000), "http://allowed.example.test/")
    assert not error and "Title Body text" in page
    error, big = _fetch(_settings(proxy, fetch_max_bytes=1000), "http://allowed.example.test/big")
    assert not error and big.count("z") == 1000
    error, page = _fetch(_settings(proxy), "http://x.docs.example.test/to-page")
    assert not error and "Title Body text" in page


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/to-denied", "denied.example.test is not in AGENTMESH_FETCH_ALLOWLIST"),
        ("/to-ip", "169.254.169.254 is an IP literal"),
        ("/to-mesh", "orchestrator is one of the mesh's own services"),
        ("/loop", "more than 5 redirects"),
    ],
)
def test_every_redirect_hop_is_checked(proxy: str, path: str, reason: str) -> None:
    Handler.seen.clear()
    error, text = _fetch(_settings(proxy), "http://allowed.example.test" + path)
    assert error and reason in text
    # The refused hop was never requested.
    assert {urlsplit(s).hostname for s in Handler.seen} == {"allowed.example.test"}


def test_the_proxys_own_refusal_is_reported(proxy: str) -> None:
    error, text = _fetch(
        _settings(proxy, fetch_allowlist="blocked.example.test"), "http://blocked.example.test/"
    )
    assert error and "the egress proxy refused it (ERR_ACCESS_DENIED)" in text


def test_without_a_proxy_a_name_resolving_to_a_private_address_is_refused() -> None:
    settings = load_settings(fetch_allowlist=ALLOW)
    with httpx.Client() as client:
        tool = fetch_url_tool(settings, client, resolve=lambda host: ["10.1.2.3"])
        outcome = tool.invoke({"url": "http://allowed.example.test/"}, CTX)
    assert outcome.is_error and "resolves to 10.1.2.3, not a public address" in outcome.content
