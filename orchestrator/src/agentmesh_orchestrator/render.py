"""A task's answer as HTML that is safe to show: Markdown rendered, then sanitised.

Answers are model output, and a model can be steered by what it read: treat every
answer as an attacker's. Two walls, both well-kept libraries: markdown-it-py renders
CommonMark with raw HTML switched off (a ``<script>`` or an ``<img onerror=...>`` in
the text comes out as text), and nh3 (the Ammonia sanitiser) keeps only an allowlist
of tags and attributes of what remains, with links limited to http, https and mailto.
The page's Content-Security-Policy (no inline script) is the third.
"""

from __future__ import annotations

import nh3
from markdown_it import MarkdownIt

_TAGS = frozenset(
    {
        "a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6",
        "hr", "li", "ol", "p", "pre", "strong", "table", "tbody", "td", "th", "thead",
        "tr", "ul",
    }
)  # fmt: skip
_ATTRIBUTES = {"a": {"href", "title"}, "td": {"align"}, "th": {"align"}, "ol": {"start"}}
_URL_SCHEMES = frozenset({"http", "https", "mailto"})

_renderer = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable(
    ["table", "strikethrough"]
)


def render_markdown(text: str) -> str:
    """``text`` (Markdown) as sanitised HTML: no script, no event handler, no style."""
    return nh3.clean(
        _renderer.render(text),
        tags=set(_TAGS),
        attributes={tag: set(names) for tag, names in _ATTRIBUTES.items()},
        url_schemes=set(_URL_SCHEMES),
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )
