"""Model versions under models/ and the active pointer models/active.json."""

from __future__ import annotations

import json
from pathlib import Path

ACTIVE_FILE = "active.json"


def active_version(models_dir: Path) -> str | None:
    """The version models/active.json names, if it names one whose folder exists."""
    try:
        version = json.loads((Path(models_dir) / ACTIVE_FILE).read_text(encoding="utf-8"))["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return version if isinstance(version, str) and (Path(models_dir) / version).is_dir() else None
