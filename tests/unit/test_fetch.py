from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from agentmesh_researcher.fetch import fetch_url_tool, host_allowed, html_to_text
from agentmesh_shared.agent import ToolContext
from agentmesh_shared.settings import load_settings

PAGE = b"<html><head><style>x{}</style><script>var a</script></head><body><h1>Title</h1><p>Body text</p></body></html>"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.end_headers()
        self.wfile.write(PAGE if self.path == "/" else b"z" * 100_000)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


CTX = ToolContext(task_id="t", subtask_id="s", tool_use_id="u", step=1)


def test_html_is_reduced_to_text() -> None:
    assert html_to_text(PAGE.decode()) == "Title Body text"


def test_allowlist_globs() -> None:
    assert host_allowed("https://docs.python.org/x", "")
    assert host_allowed("https://docs.python.org/x", "*.python.org, example.com")
    assert not host_allowed("https://evil.example.net/", "*.python.org,example.com")


def test_fetch_reads_a_real_page_and_bounds_its_size(site: str) -> None:
    with httpx.Client() as client:
        tool = fetch_url_tool(load_settings(fetch_max_bytes=1000), client)
        page = tool.invoke({"url": site + "/"}, CTX)
        assert not page.is_error and "Title Body text" in page.content
        big = tool.invoke({"url": site + "/big"}, CTX)
        assert big.content.count("z") == 1000
        denied = fetch_url_tool(load_settings(fetch_allowlist="example.com"), client).invoke(
            {"url": site + "/"}, CTX
        )
        assert denied.is_error and "ALLOWLIST" in denied.content
        bad = tool.invoke({"url": "ftp://x"}, CTX)
        assert bad.is_error
