"""A user's greeting (their "interactive file", spec section 10) as HTML.

The greeting is plain text with a small, safe subset of Markdown:

- a blank line starts a new paragraph, a single line break is kept;
- ``**bold**``, ``*emphasis*``, `` `code` ``;
- ``[text](https://...)`` links (``http``, ``https`` and ``mailto`` only),
  opened with ``rel="nofollow noopener noreferrer"``.

Nothing else is markup: the result is a tree of ``twisted.web.template``
tags whose text is escaped when flattened, so no HTML, script or attribute
a user writes reaches a visitor's browser as anything but text.  The length
is bounded by the service (``MAX_GREETING``).
"""

from __future__ import annotations

import re
from typing import Any, List

from twisted.web.template import Tag, tags

_INLINE = re.compile(
    r"\*\*(?P<strong>[^*\n]+?)\*\*"
    r"|\*(?P<em>[^*\n]+?)\*"
    r"|`(?P<code>[^`\n]+?)`"
    r"|\[(?P<text>[^\]\n]{1,200})\]\((?P<href>(?:https?://|mailto:)[^\s()<>\"']{1,500})\)")


def inline(text: str) -> List[Any]:
    """The inline markup of one line: strings and tags."""
    out: List[Any] = []
    at = 0
    for match in _INLINE.finditer(text):
        if match.start() > at:
            out.append(text[at:match.start()])
        if match.group("strong") is not None:
            out.append(tags.strong(match.group("strong")))
        elif match.group("em") is not None:
            out.append(tags.em(match.group("em")))
        elif match.group("code") is not None:
            out.append(tags.code(match.group("code")))
        else:
            out.append(tags.a(match.group("text"), href=match.group("href"),
                              rel="nofollow noopener noreferrer"))
        at = match.end()
    if at < len(text):
        out.append(text[at:])
    return out


def render(text: str) -> List[Tag]:
    """The paragraphs of ``text``."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", text.strip()):
        if not block.strip():
            continue
        children: List[Any] = []
        for i, line in enumerate(block.split("\n")):
            if i:
                children.append(tags.br())
            children.extend(inline(line))
        paragraphs.append(tags.p(*children))
    return paragraphs
