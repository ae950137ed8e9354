"""Export approved feedback: a Hugging Face `imagefolder` dataset (images + metadata.jsonl) or plain JSONL."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from .feedback import FeedbackLog, FeedbackRow

FORMATS = ("hf", "jsonl")


class ExportError(ValueError):
    """An export that cannot be written; the message says why."""


def approved_rows(log: FeedbackLog) -> list[FeedbackRow]:
    """Approved rows of every task, in file order."""
    rows, _ = log.read()
    return [row for row in rows if row.status == "approved"]


def export(log: FeedbackLog, out_dir: Path, fmt: str) -> int:
    """Write every approved row to out_dir (which must not exist yet, or be empty); returns the row count.

    hf: out_dir/train/ holds one image file per row and metadata.jsonl (`file_name`, `text` = the correction,
    and the row's other fields), so `datasets.load_dataset("imagefolder", data_dir=out_dir)` reads it.
    jsonl: out_dir/approved.jsonl (every field, `image` relative to out_dir) and out_dir/images/, each image once.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use {' or '.join(FORMATS)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"{out_dir} already exists and is not an empty folder")
    rows = approved_rows(log)
    if not rows:
        raise ExportError("there are no approved rows to export")
    missing = [row.image_path for row in rows if not (log.data_dir / row.image_path).is_file()]
    if missing:
        raise ExportError(f"{len(missing)} approved row(s) point at missing images, e.g. {missing[0]}")
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    (_write_imagefolder if fmt == "hf" else _write_jsonl)(log, rows, staging)
    if out_dir.exists():
        out_dir.rmdir()
    staging.rename(out_dir)
    return len(rows)


def _place(source: Path, target: Path) -> None:
    """Hard-link where the file system allows it (the same bytes, no copy), else copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _write_imagefolder(log: FeedbackLog, rows: list[FeedbackRow], folder: Path) -> None:
    split = folder / "train"
    lines = []
    for row in rows:
        name = f"{row.id}{Path(row.image_path).suffix}"  # one file per row: imagefolder keys metadata by file
        _place(log.data_dir / row.image_path, split / name)
        lines.append(json.dumps({"file_name": name, "text": row.correction, **asdict(row)}, ensure_ascii=False))
    (split / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_jsonl(log: FeedbackLog, rows: list[FeedbackRow], folder: Path) -> None:
    lines = []
    for row in rows:
        target = folder / row.image_path
        if not target.exists():
            _place(log.data_dir / row.image_path, target)
        lines.append(json.dumps({**asdict(row), "image": row.image_path}, ensure_ascii=False))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "approved.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
