"""Export approved feedback: a Hugging Face dataset folder (captions and Q&A apart) or plain JSONL.

Every image is copied from data/images only (a row whose path leads anywhere else, or whose image is missing, is
reported and left out, never followed); file names come from row ids, which the log only accepts as safe names.
The export is written into a staging folder and renamed into place when complete; the writer claims it (and a zip
being written) with a lock beside it, so the next export removes what an export killed midway left, and only that.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import zipfile
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .feedback import FeedbackError, FeedbackLog, FeedbackRow
from .feedback_csv import FIELDS, SAFE_NAME
from .files import discard_folder, publish_folder, staging_path
from .partials import claimed, remove_abandoned

FORMATS = ("hf", "jsonl")
CONFIGS = {"caption": "captions", "qa": "qa", "style": "styles"}  # task -> the dataset config (folder) its rows go to
TIMES = ("created_at", "reviewed_at")
DEFLATED = {".jsonl", ".md", ".json"}  # text; images and parquet are compressed already: deflating them again
# took eight times as long as the export itself (300 photos: 18 s of zipping) and saved about nothing
Progress = Callable[[int, int], None]  # (done, total)
STAGED = re.compile(r"\.(?P<target>.+)\.[0-9a-f]{12}\.partial")  # export()'s staging folder (files.staging_path)
ZIPPING = re.compile(r".+\.zip\.partial")  # zip_export's archive while it is written


class ExportError(ValueError):
    """An export that cannot be written; the message says why."""


@dataclass
class ExportReport:
    """What an export wrote, and the approved rows it left out (one line each: the row and the reason)."""

    out_dir: Path
    count: int = 0
    by_config: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # what exports killed midway had left beside out_dir


def approved_rows(log: FeedbackLog) -> list[FeedbackRow]:
    """Approved rows of every task, in file order."""
    rows, _ = log.read()
    return [row for row in rows if row.status == "approved"]


def export(log: FeedbackLog, out_dir: Path, fmt: str, on_progress: Progress | None = None) -> ExportReport:
    """Write every approved row to out_dir (which must not exist yet, or be an empty folder).

    hf: out_dir/captions/train/ (caption rows) and out_dir/qa/train/ (Q&A rows), each one image file per row and
    metadata.parquet (`file_name`, `text` = the correction, the row's other fields; times as UTC timestamps,
    `image_path` inside the export), and a README.md naming both configs: `datasets.load_dataset(out_dir)` gives
    the captions, `load_dataset(out_dir, "qa")` the Q&A rows, `load_dataset("imagefolder", data_dir=out_dir/"captions")`
    the captions too.
    jsonl: out_dir/approved.jsonl (every field of every task, `image` relative to out_dir) and out_dir/images/.
    on_progress(done, total) is called as the rows' images are copied.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use {' or '.join(FORMATS)}")
    out_dir = Path(out_dir)
    if out_dir.is_symlink() or (out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir()))):
        raise ExportError(f"{out_dir} already exists and is not an empty folder")
    rows = approved_rows(log)
    if not rows:
        raise ExportError("there are no approved rows to export")
    report = ExportReport(out_dir)
    sources: list[tuple[FeedbackRow, Path]] = []
    for row in rows:
        try:
            if not SAFE_NAME.match(row.id):
                raise FeedbackError(f"row id {row.id[:40]!r} is not a safe file name")
            sources.append((row, log.image_file(row)))
        except FeedbackError as exc:
            report.skipped.append(str(exc))
    if not sources:
        raise ExportError(f"none of the {len(rows)} approved rows can be exported: {report.skipped[0]}")
    report.removed = remove_dead_exports(out_dir.parent)  # before this export's own partial exists
    staging = staging_path(out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        with claimed(staging):
            staging.mkdir()
            _write_staged(sources, fmt, staging, report, _counter(len(sources), on_progress))
    except OSError as exc:  # a read-only, full or missing place: nothing was written
        raise ExportError(f"cannot write the export into {out_dir.parent}: {exc.strerror or exc}") from None
    report.count = len(sources)
    return report


def _write_staged(sources: list[tuple[FeedbackRow, Path]], fmt: str, staging: Path, report: ExportReport, tick) -> None:
    """Write the export into staging and publish it as report.out_dir; on any failure staging is removed."""
    try:
        (_write_hf if fmt == "hf" else _write_jsonl)(sources, staging, report, tick)
        publish_folder(staging, report.out_dir)
    except OSError as exc:
        discard_folder(staging)
        raise ExportError(
            f"the export into {report.out_dir} could not be written: {exc.strerror or exc}; nothing was kept"
        ) from None
    except BaseException:
        discard_folder(staging)
        raise


def remove_dead_exports(folder: Path) -> list[str]:
    """Remove what exports killed midway left in folder: staging folders, half-written zips, and the empty folder
    made for such an export; another session's export still running is left alone. Returns the names removed."""
    folder = Path(folder)
    try:
        names = sorted(os.listdir(folder))
    except OSError:  # no folder yet (a first export), or one that cannot be listed: nothing to tell apart
        return []
    partials = [folder / name for name in names if STAGED.fullmatch(name) or ZIPPING.fullmatch(name)]
    removed = []
    for partial in remove_abandoned(partials):
        removed.append(partial.name)
        staged = STAGED.fullmatch(partial.name)
        with suppress(OSError):  # rmdir removes only an empty folder: a finished export is never touched
            if staged and (folder / staged["target"]).is_dir():
                (folder / staged["target"]).rmdir()
                removed.append(staged["target"])
    return removed


def new_export_folder(exports_dir: Path, fmt: str) -> Path:
    """A new, empty folder for one export, named by the time and format (`20261207-190923-hf`, then `-2`, `-3`... for
    others made in the same second, by this or another session): made here, so no two exports ever share one."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use {' or '.join(FORMATS)}")
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{fmt}"
    try:
        Path(exports_dir).mkdir(parents=True, exist_ok=True)
        for number in range(1, 1000):
            folder = Path(exports_dir) / (stem if number == 1 else f"{stem}-{number}")
            if folder.with_name(folder.name + ".zip").exists():
                continue  # a zip kept after its folder was removed: never overwritten
            try:
                folder.mkdir()
                return folder
            except FileExistsError:
                continue
    except OSError as exc:
        raise ExportError(f"cannot make a folder for the export in {exports_dir}: {exc.strerror or exc}") from None
    raise ExportError(f"{exports_dir} already holds 999 exports named {stem}: remove some")


def _counter(total: int, on_progress: Progress | None) -> Callable[[], None]:
    """A tick per row copied, passed on to on_progress about 200 times in all (a page redraw per row is slow)."""
    done, every = 0, max(1, total // 200)

    def tick() -> None:
        nonlocal done
        done += 1
        if on_progress and (done % every == 0 or done == total):
            on_progress(done, total)

    return tick


def zip_export(folder: Path, on_progress: Progress | None = None) -> Path:
    """folder.zip beside the export (written under a temporary name, renamed when complete): text deflated, images
    and parquet stored as they are. on_progress(done, total) counts the files."""
    folder = Path(folder)
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    archive, partial = folder.with_name(folder.name + ".zip"), folder.with_name(folder.name + ".zip.partial")
    tick = _counter(len(files), on_progress)
    with claimed(partial):
        try:
            with zipfile.ZipFile(partial, "w") as bundle:
                for path in files:
                    method = zipfile.ZIP_DEFLATED if path.suffix.lower() in DEFLATED else zipfile.ZIP_STORED
                    bundle.write(path, path.relative_to(folder).as_posix(), compress_type=method)
                    tick()
            os.replace(partial, archive)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    return archive


def _write_hf(sources: list[tuple[FeedbackRow, Path]], folder: Path, report: ExportReport, tick) -> None:
    for task, config in CONFIGS.items():
        mine = [(row, path) for row, path in sources if row.task == task]
        if not mine:
            continue
        split = folder / config / "train"
        split.mkdir(parents=True)
        records = []
        for row, path in mine:
            name = f"{row.id}{path.suffix.lower()}"  # one file per row: imagefolder keys metadata by file name
            shutil.copyfile(path, split / name)
            tick()
            records.append({"file_name": name, "text": row.correction, **row._asdict(), "image_path": f"{config}/train/{name}"})
        pq.write_table(_table(records), split / "metadata.parquet")
        report.by_config[config] = len(mine)
    (folder / "README.md").write_text(_card(report.by_config), encoding="utf-8")


def _table(records: list[dict]) -> pa.Table:
    """Metadata with typed columns: times as UTC timestamps (time zone kept), the score as a number."""
    columns = {name: [r[name] for r in records] for name in records[0]}
    for name in TIMES:
        columns[name] = pa.array([_utc(value) for value in columns[name]], pa.timestamp("s", tz="UTC"))
    columns["score"] = pa.array([float(v) if v else None for v in columns["score"]], pa.float64())
    return pa.table(columns)


def _utc(text: str) -> datetime | None:
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def _card(by_config: dict[str, int]) -> str:
    """A dataset card whose front matter names the configs, so load_dataset(folder[, config]) finds them."""
    lines = ["---", "configs:"]
    for config in by_config:  # only captions are the default: load_dataset(folder) must never give Q&A or styles
        lines += [f"- config_name: {config}", f"  data_dir: {config}"] + (["  default: true"] if config == "captions" else [])
    lines += ["---", "", "# Approved feedback", "", "Exported from the image captioning studio's feedback log.", ""]
    lines += [f"- `{config}`: {count} rows (`text` is the approved correction)" for config, count in by_config.items()]
    return "\n".join(lines) + "\n"


def _write_jsonl(sources: list[tuple[FeedbackRow, Path]], folder: Path, report: ExportReport, tick) -> None:
    lines = []
    for row, path in sources:
        target = folder / row.image_path  # images/<file>: the log only accepts that shape
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        tick()
        lines.append(json.dumps({**{name: getattr(row, name) for name in FIELDS}, "image": row.image_path}, ensure_ascii=False))
    (folder / "approved.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    report.by_config["all"] = len(sources)
