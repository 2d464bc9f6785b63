"""MkDocs hook: the package's docstrings name objects with reStructuredText roles (``:func:`name```), which
Markdown leaves as ``:func:`` before the code; drop the role and keep the code."""

from __future__ import annotations

import re
from typing import Any

ROLE = re.compile(r":(?:class|func|mod|meth|data|attr|obj|exc):(<code>)")


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    """The page's HTML without role prefixes in front of inline code."""
    return ROLE.sub(r"\1", html)
