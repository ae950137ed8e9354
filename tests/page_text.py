"""What a page shows: Streamlit elements hold escaped Markdown (user and file text is escaped by the pages)."""

import re


def shown(markdown: str) -> str:
    """What a Markdown element shows: its backslash escapes undone."""
    return re.sub(r"\\(.)", r"\1", markdown)
