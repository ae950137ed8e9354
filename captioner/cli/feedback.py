"""`feedback add|list|export|repair`: the feedback log from the command line (no torch is loaded)."""

from __future__ import annotations

import csv
import json
import sys

from ..export import ExportError, export
from ..feedback import FIELDS, FeedbackError, FeedbackLog
from ..files import spreadsheet_safe
from ..images import ImageError, decode, read_file
from ..settings import Settings
from .common import UserError, say


def cmd_feedback(args, settings: Settings) -> int:
    log = FeedbackLog(settings.data_dir)
    if args.action in ("list", "export") and (note := settings.no_log_note()):  # an empty answer says where it looked
        say(f"note: {note}")
    try:
        return feedback_action(args, log, FIELDS)
    except FeedbackError as exc:  # a bad correction, or the log locked by another writer for too long
        raise UserError(str(exc)) from None


def feedback_action(args, log, fields) -> int:
    if args.action == "add":

        try:
            decoded = decode(read_file(args.image))
        except ImageError as exc:  # the one input failed (1), as `caption` and `ask` say for a bad image
            say(str(exc))
            return 1
        row, created = log.record(
            decoded.source.data, decoded.extension, task=args.task, model_output=args.model_output,
            correction=args.correction, prompt=args.prompt, model=args.model,
            model_version=args.model_version, status=args.status, notes=args.notes,
        )  # fmt: skip
        if not created:
            say(f"already logged as {row.id}; nothing added")
        print(json.dumps({name: getattr(row, name) for name in fields}, ensure_ascii=False))
        return 0
    if args.action == "export":

        try:
            report = export(log, args.out, args.format)
        except ExportError as exc:
            raise UserError(str(exc)) from None
        if report.removed:
            say(f"removed what an export stopped midway had left in {report.out_dir.parent}: {', '.join(report.removed)}")
        for reason in report.skipped:
            say(f"left out: {reason}")
        configs = ", ".join(f"{config}: {n}" for config, n in report.by_config.items())
        say(f"exported {report.count} approved row{'' if report.count == 1 else 's'} to {args.out} ({configs})")
        return 1 if report.skipped else 0
    if args.action == "repair":
        moved, kept = log.repair(note="feedback repair")
        say(f"moved {moved} broken record(s) into {kept}" if moved else f"{log.csv_path}: no broken records")
        return 0
    rows, problems = log.read()
    for problem in problems:
        say(f"{log.csv_path}: {problem}")
    rows = [row for row in rows if args.status in (None, row.status)]
    if args.format == "jsonl":
        for row in rows:
            print(json.dumps({name: getattr(row, name) for name in fields}, ensure_ascii=False))
    else:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(fields)
        writer.writerows([[value if name == "score" else spreadsheet_safe(value) for name, value in zip(fields, row)]
                          for row in rows])  # fmt: skip
    return 1 if problems else 0
