"""Fetching http(s) URLs for the researcher: a page is an attacker's, and so is its URL.

Every hop is checked before it is requested: redirects are followed here, not by the
client, so a redirect to a refused host is refused like the first URL. Refused with a
reason: schemes other than http(s), credentials in the URL, IP literals, single-label
names (the mesh's own services: orchestrator, broker, memory, ...) and local suffixes,
and hosts not in ``AGENTMESH_FETCH_ALLOWLIST`` (empty means no fetching at all). The
whole fetch, every hop, is bounded by ``AGENTMESH_FETCH_TIMEOUT_S`` and the body by
``AGENTMESH_FETCH_MAX_BYTES``.

In the mesh every fetch leaves through the egress proxy (``AGENTMESH_EGRESS_PROXY``
with the researcher's own proxy password), which resolves the name and refuses
private, loopback and link-local destinations itself; without a proxy the name is
resolved here and any address that is not global is refused.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import socket
import time
from collections.abc import Callable
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

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


LOCAL_SUFFIXES = (".localhost", ".local", ".localdomain", ".internal", ".home.arpa", ".arpa")
# The mesh's service names, named in the refusal (they are single-label names anyway).
MESH_SERVICES = frozenset(
    {
        "orchestrator",
        "researcher",
        "coder",
        "broker",
        "memory",
        "otel-collector",
        "gateway",
        "egress",
        "llm",
        "flower",
        "sandbox",
        "localhost",
    }
)

Resolver = Callable[[str], list[str]]


class FetchRefusedError(ToolError):
    """The URL (or a hop it redirected to) may not be fetched; the message says why."""


def _patterns(allowlist: str) -> list[str]:
    return [p.strip().lower().rstrip(".") for p in allowlist.split(",") if p.strip()]


def host_allowed(url: str, allowlist: str) -> bool:
    """Whether the URL's host matches one of the allowlist's globs (none: nothing is)."""
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    return any(fnmatch.fnmatch(host, p) for p in _patterns(allowlist))


def refusal(url: str, allowlist: str) -> str | None:
    """Why this URL may not be fetched, or None. No network is used."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower().rstrip(".")
        _ = parts.port
    except ValueError as err:
        return f"not a valid URL ({err})"
    if parts.scheme not in {"http", "https"}:
        return f"only http and https URLs are fetched, not {parts.scheme or 'no scheme'}"
    if parts.username is not None or parts.password is not None:
        return "URLs with credentials are not fetched"
    if not host:
        return "the URL has no host"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return f"{host} is an IP literal: only allowlisted host names are fetched"
    if host in MESH_SERVICES:
        return f"{host} is one of the mesh's own services"
    if "." not in host or host.replace(".", "").isdigit():
        return f"{host} is a single-label or numeric name (local or one of the mesh's services)"
    if host.endswith(LOCAL_SUFFIXES):
        return f"{host} is a local name"
    if not _patterns(allowlist):
        return "fetching is off: AGENTMESH_FETCH_ALLOWLIST is empty (set it to the hosts to allow)"
    if not host_allowed(url, allowlist):
        return f"{host} is not in AGENTMESH_FETCH_ALLOWLIST"
    return None


def resolve_host(host: str) -> list[str]:
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _non_global(host: str, resolve: Resolver) -> str | None:
    try:
        addresses = resolve(host)
    except OSError as err:
        return f"{host} does not resolve ({err})"
    for address in addresses:
        if not ipaddress.ip_address(address.split("%")[0]).is_global:
            return f"{host} resolves to {address}, not a public address"
    return None


def _proxy_refusal(response: httpx.Response) -> str | None:
    """The egress proxy's own refusal (Squid marks its error pages with X-Squid-Error)."""
    squid_error = response.headers.get("x-squid-error")
    if squid_error and response.status_code in {403, 407}:
        return f"the egress proxy refused it ({squid_error.split()[0]})"
    return None


def fetch_url_tool(
    settings: Settings,
    client: httpx.Client,
    *,
    resolve: Resolver = resolve_host,
) -> Tool[FetchInput]:
    """``client`` must not follow redirects itself (every hop is checked here)."""
    via_proxy = settings.egress_proxy is not None

    def check(url: str) -> None:
        reason = refusal(url, settings.fetch_allowlist)
        if reason is None and not via_proxy:
            reason = _non_global((urlsplit(url).hostname or "").rstrip("."), resolve)
        if reason is not None:
            raise FetchRefusedError(f"refused {url}: {reason}")

    def fetch(args: FetchInput, ctx: ToolContext) -> str:
        url = first = str(args.url)
        deadline = time.monotonic() + settings.fetch_timeout_s
        for _hop in range(settings.fetch_max_redirects + 1):
            check(url)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ToolError(f"fetching {first} took over {settings.fetch_timeout_s} s")
            try:
                with client.stream("GET", url, timeout=remaining) as response:
                    refused = _proxy_refusal(response)
                    if refused is not None:
                        raise FetchRefusedError(f"refused {url}: {refused}")
                    if response.is_redirect:
                        url = urljoin(url, response.headers.get("location", ""))
                        continue
                    body = bytearray()
                    for chunk in response.iter_bytes():
                        body.extend(chunk)
                        if len(body) >= settings.fetch_max_bytes:
                            break
                        if time.monotonic() > deadline:
                            msg = f"fetching {first} took over {settings.fetch_timeout_s} s"
                            raise ToolError(msg)
                    status = response.status_code
                    ctype = response.headers.get("content-type", "")
            except httpx.ProxyError as err:
                raise FetchRefusedError(
                    f"refused {url}: the egress proxy refused it ({err})"
                ) from err
            except httpx.HTTPError as err:
                raise ToolError(f"fetching {url} failed: {err}") from err
            text = bytes(body[: settings.fetch_max_bytes]).decode("utf-8", errors="replace")
            if "html" in ctype:
                text = html_to_text(text)
            return f"HTTP {status} {ctype} ({url})\n{text[:20_000]}"
        raise ToolError(f"fetching {first}: more than {settings.fetch_max_redirects} redirects")

    return Tool(
        name="fetch_url",
        description=(
            "Fetch an http(s) URL of an allowlisted host and return its text "
            "(HTML is reduced to text)."
        ),
        input_model=FetchInput,
        fn=fetch,
    )


def fetch_client(settings: Settings) -> httpx.Client:
    """The researcher's client: through the egress proxy if set, never following redirects."""
    return httpx.Client(proxy=settings.egress_proxy_url(), trust_env=False, follow_redirects=False)
