"""MkDocs hook: our docstrings use Sphinx roles (:class:`X`, :meth:`Y`) for readers of the
source; on the site, show them as the code they name."""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:class|meth|func|attr|mod|data|exc|obj):(?=<code>)")


def on_page_content(html: str, **_kwargs: Any) -> str:
    return _ROLE.sub("", html)
