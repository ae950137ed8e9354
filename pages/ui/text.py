"""Text from users and files, shown on a page exactly as written: never as Markdown (no bold, no links, no HTML)."""

from __future__ import annotations

import re

_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~=:$&^\"'])")


def plain(text: object) -> str:
    """Text escaped so Streamlit's Markdown (st.markdown, st.error, st.caption, image captions, widget labels) shows it
    as typed. Character by character, so the chunks of a stream can be escaped one at a time."""
    return _MARKDOWN.sub(r"\\\1", str(text)).replace("\n", "  \n")
