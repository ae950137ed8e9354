"""Table thumbnails for the admin tabs (plain text for every page is pages/ui/text.py)."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

from captioner.images import decode, read_file


@lru_cache(maxsize=5000)  # process-wide, safe to call from worker threads (unlike st.cache_data)
def _thumbnail(path: str, mtime_ns: int) -> str | None:
    try:
        image = decode(read_file(Path(path)), max_side=256).image
    except Exception:  # ImageError, or whatever a hostile file makes a decoder raise: a thumbnail is decoration
        return None
    image.thumbnail((72, 72))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _one(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return _thumbnail(str(path), path.stat().st_mtime_ns)
    except OSError:
        return None


def thumbnails(paths: list[Path | None]) -> list[str | None]:
    """Small JPEG data URIs of stored images (paths already checked to be inside data/images; None: no image),
    decoded a few at a time: a first look at a page of large photos should not take a second per row."""
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="thumbnail") as pool:
        return list(pool.map(_one, paths))
