"""Fetching http(s) URLs for the researcher: allowlisted hosts, bounded size and time.

``httpx`` honours ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` from the environment, so
in the mesh every fetch leaves through the egress proxy when one is configured.
"""

from __future__ import annotations

import fnmatch
from html.parser import HTMLParser
from urllib.parse import urlsplit

import httpx
from agentmesh_shared.agent import Tool, ToolContext, ToolError
from agentmesh_shared.settings import Settings
from pydantic import BaseModel, Field, HttpUrl


class FetchInput(BaseModel):
    url: HttpUrl = Field(description="an http or https URL")


class _TextExtractor(HTMLParser):
    SKIP = frozenset({"script", "style", "noscript", "template"})

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self._skipping += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP and self._skipping:
            self._skipping -= 1

    def handle_data(self, data: str) -> None:
        if not self._skipping and data.strip():
            self.parts.append(data.strip())


def html_to_text(html: str) -> str:
    parser = _TextExtractor()
    parser.feed(html)
    return " ".join(parser.parts)


def host_allowed(url: str, allowlist: str) -> bool:
    patterns = [p.strip().lower() for p in allowlist.split(",") if p.strip()]
    if not patterns:
        return True
    host = (urlsplit(url).hostname or "").lower()
    return any(fnmatch.fnmatch(host, p) for p in patterns)


def fetch_url_tool(settings: Settings, client: httpx.Client) -> Tool[FetchInput]:
    def fetch(args: FetchInput, ctx: ToolContext) -> str:
        url = str(args.url)
        if not host_allowed(url, settings.fetch_allowlist):
            raise ToolError(f"host of {url} is not in AGENTMESH_FETCH_ALLOWLIST")
        try:
            with client.stream("GET", url, timeout=settings.fetch_timeout_s) as response:
                body = bytearray()
                for chunk in response.iter_bytes():
                    body.extend(chunk)
                    if len(body) >= settings.fetch_max_bytes:
                        break
                status = response.status_code
                ctype = response.headers.get("content-type", "")
        except httpx.HTTPError as err:
            raise ToolError(f"fetching {url} failed: {err}") from err
        text = bytes(body[: settings.fetch_max_bytes]).decode("utf-8", errors="replace")
        if "html" in ctype:
            text = html_to_text(text)
        return f"HTTP {status} {ctype}\n{text[:20_000]}"

    return Tool(
        name="fetch_url",
        description="Fetch an http(s) URL and return its text (HTML is reduced to text).",
        input_model=FetchInput,
        fn=fetch,
    )
