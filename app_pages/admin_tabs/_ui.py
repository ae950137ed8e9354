"""Small UI helpers the admin tabs share: data shown as plain text, and table thumbnails."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import streamlit as st

from captioner.images import ImageError, decode, read_file

_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~=:$&^\"'])")


def plain(text: str) -> str:
    """Text from a user or a file, escaped so Streamlit's Markdown shows it exactly as written (no bold, no links)."""
    return _MARKDOWN.sub(r"\\\1", str(text)).replace("\n", "  \n")


@st.cache_data(max_entries=5000, show_spinner=False)
def _thumbnail(path: str, mtime_ns: int) -> str | None:
    try:
        image = decode(read_file(Path(path)), max_side=256).image
    except ImageError:
        return None
    except Exception:  # a thumbnail is decoration: a file the decoder trips on must not break the review table
        return None
    image.thumbnail((72, 72))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def thumbnail(path: Path | None) -> str | None:
    """A small JPEG data URI of a stored image (path already checked to be inside data/images), or None."""
    if path is None:
        return None
    try:
        return _thumbnail(str(path), path.stat().st_mtime_ns)
    except OSError:
        return None
