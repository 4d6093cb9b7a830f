"""Item titles as an LLM sees them: clean, present, and unique.

Prompts list candidate titles one per line (SEPARATOR). Normalization collapses every
whitespace run, newlines included, to one space, so no title can contain the separator
and a listed title is never ambiguous.
"""

from __future__ import annotations

import html
import re

SEPARATOR = "\n"
_WS = re.compile(r"\s+")


def normalize_title(raw: object) -> str:
    """HTML-unescape and collapse whitespace; '' when there is no usable title."""
    if raw is None or (isinstance(raw, float) and raw != raw):  # None or NaN
        return ""
    text = html.unescape(str(raw))
    return _WS.sub(" ", text).strip()


def unique_titles(titles: dict[str, str]) -> dict[str, str]:
    """Make duplicate titles unique deterministically.

    Items sharing a title are ordered by id (shorter ids first, then lexicographically,
    so '9' < '10'); the first keeps the title, the others get ' (2)', ' (3)', ... with a
    suffix skipped if it would collide with another existing title.
    """
    by_title: dict[str, list[str]] = {}
    for item, title in titles.items():
        by_title.setdefault(title, []).append(item)
    taken = set(by_title)
    out: dict[str, str] = {}
    for title in sorted(by_title):
        items = sorted(by_title[title], key=lambda i: (len(i), i))
        out[items[0]] = title
        n = 2
        for item in items[1:]:
            while f"{title} ({n})" in taken:
                n += 1
            new = f"{title} ({n})"
            taken.add(new)
            out[item] = new
            n += 1
    return out
