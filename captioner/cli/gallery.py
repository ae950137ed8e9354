"""`index` and `search`: the gallery's search index and queries against it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm import tqdm

from ..files import has_undecodable
from ..images import ImageError, read_file
from ..index import IndexProblem, SearchError, open_or_build, search_image, search_text, text_is_cut, update_index, waiting_note
from ..settings import Settings
from .common import UserError, say
from .serving import load_for_cli


NAMED_PER_REASON = 3  # ignored files named on stderr for each reason (the search page lists them all)


def load_search_model(args, settings: Settings):
    """The search model: --model exactly, else the configured one (a fallback said on stderr)."""
    return load_for_cli("search", args.model, settings)


def report_update(report) -> None:
    """What an index update did, on stderr."""
    if report.rebuilt_because:
        say(f"rebuilt the index: {report.rebuilt_because}")
    if report.rewritten_because:
        say(f"rewrote the index's vectors: {report.rewritten_because}")
    by_reason: dict[str, list[str]] = {}
    for path, reason in report.ignored:
        by_reason.setdefault(reason, []).append(path)
    for reason, paths in by_reason.items():  # a few named per reason: thousands of RAW files must not bury the rest
        for path in paths[:NAMED_PER_REASON]:
            say(f"ignored {path}: {reason}")
        if len(paths) > NAMED_PER_REASON:
            say(f"ignored {len(paths) - NAMED_PER_REASON:,} more: {reason}")
    for path, reason in report.skipped:
        say(f"skipped {path}: {reason}")
    for warning in report.warnings:
        say(f"warning: {warning}")
    if report.resumed:
        say(f"resumed an interrupted update: {report.resumed} image(s) it had embedded were not embedded again")
    say(
        f"index: {report.added} added, {report.changed} changed, {report.removed} removed, "
        f"{report.unchanged} unchanged; {report.embedded} embedded, {report.reused} reused (moved, copied or back), "
        f"{len(report.skipped)} skipped, {len(report.ignored)} ignored ({report.seconds:.1f}s)"
    )


def say_waiting(settings: Settings, gallery: Path, embedder):
    """An on_wait that says on stderr which process's update of this index this one waits for."""
    return lambda: say(waiting_note(settings.data_dir, gallery, embedder))


def cmd_index(args, settings: Settings) -> int:

    loaded = load_search_model(args, settings)
    bar = tqdm(total=0, unit="img", desc="embedding", file=sys.stderr, disable=None)

    def progress(done, total, rate):
        bar.total = total
        bar.update(done - bar.n)

    try:
        index, report = update_index(
            loaded, args.folder, settings.data_dir, on_progress=progress,
            follow_links=args.follow_links or settings.gallery_follow_links,
            on_wait=say_waiting(settings, args.folder, loaded),
        )  # fmt: skip
    except IndexProblem as exc:
        raise UserError(str(exc)) from None
    finally:
        bar.close()
    report_update(report)
    say(f"{len(index)} images indexed ({index.kind} index) for {args.folder}")
    return 1 if report.skipped or report.kept_because else 0


def cmd_search(args, settings: Settings) -> int:
    if not 1 <= args.k <= 1000:
        raise UserError(f"-k must be 1 to 1000, not {args.k}")
    if args.text is not None and not args.text.strip():
        raise UserError("the text query is empty")
    loaded = load_search_model(args, settings)
    gallery = args.gallery or settings.gallery
    try:
        index, report = open_or_build(
            loaded, gallery, settings.data_dir, follow_links=args.follow_links or settings.gallery_follow_links,
            on_wait=say_waiting(settings, gallery, loaded),
        )
        if report:
            report_update(report)
        hits = search_text(loaded, index, args.text, args.k) if args.text is not None else search_image(
            loaded, index, read_file(args.image), args.k
        )
    except (IndexProblem, SearchError) as exc:
        named = "" if args.gallery or Path(gallery).is_dir() else " (CAPTIONER_GALLERY names it; --gallery for this search)"
        raise UserError(f"{exc}{named}") from None
    except ImageError as exc:
        say(str(exc))
        return 1
    if not len(index):
        say(f"note: the index of {gallery} holds no images: nothing to find (a folder without image files? images "
            f"added since the last update are added by `captioner index {gallery}`)")  # fmt: skip
    gone = sum(1 for hit in hits if not hit.path.exists())
    if gone:  # search reads the index as it is: a file deleted, moved, or on a disk not mounted since is still in it
        say(f"note: {gone} of these {len(hits)} files are not in {gallery} any more (deleted, moved, or a disk not "
            f"mounted?): `captioner index {gallery}` brings the index up to date")  # fmt: skip
    if args.text is not None and text_is_cut(loaded, args.text):
        say("note: the search model reads only the start of a long text: the end of this query was left out")
    for hit in hits:
        record = {"path": str(hit.path), "score": round(hit.score, 6)}
        # a file name that is not UTF-8 (os.fsdecode keeps its bytes as \udcXX) goes as escapes json.loads gives back
        print(json.dumps(record, ensure_ascii=has_undecodable(record["path"])))
    return 0
