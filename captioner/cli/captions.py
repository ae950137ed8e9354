"""`caption`: caption image files and folders, optionally restyled; `ask`: answer a question about an image."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..caption import GenerationOptions, OptionsError, caption_images, check_options, format_captions
from ..chat import ChatError, answer
from ..images import ImageError, decode, read_file
from ..restyle import detail_facts, restyle_batch
from ..settings import Settings
from ..styles import DETAILED, StyleError, style_for, style_notice
from .common import UserError, say
from .inputs import expand_paths, refuse_an_input_as_output
from .output import open_output, refuse_an_output_with_no_folder
from .progress import Progress
from .serving import load_for_cli


CHUNK_FILES = 512  # files a chunk holds at most: three chunks in memory, so any folder captions in bounded memory
CHUNK_BYTES = 128 * 2**20  # ... and at most this many of their bytes (camera photos are big)
NEXT_CHUNK_AT = 256  # files a chunk has left when the next one is given to the engine: enough to keep the model busy
# while the next one's first images are prepared, few enough that a chunk is not slowed by the next one's batches
# (the engine shares its batches among jobs: two whole chunks at once finish together, twice as late)
NOTHING_TO_CAPTION = 3  # the exit status when the inputs hold no file at all: a script tells it from success (0),
# a failed input (1) and a usage error (2), as grep's 1 tells "no match" from a match


def cmd_caption(args, settings: Settings) -> int:
    options = GenerationOptions(
        num_beams=args.num_beams, max_new_tokens=args.max_new_tokens, min_new_tokens=args.min_new_tokens,
        repetition_penalty=args.repetition_penalty, prompt=args.prompt,
    )  # fmt: skip
    try:
        options.validate()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, not {args.batch_size}")
    style = chosen_style(args)
    if args.out == Path("-"):  # the usual name for standard output (a file named so is ./-)
        args.out = None
    paths, failed = expand_paths(args.paths)
    refuse_an_input_as_output(args.out, paths)
    refuse_an_output_with_no_folder(args.out)  # before a model that may take minutes to load
    if not paths:  # an empty folder (a drive not mounted?) or list: no model is loaded and --out is not emptied
        kept = f"; --out {args.out} is left as it was" if args.out else ""
        say(f"nothing to caption: the inputs hold no image files{kept}")
        return 1 if failed else NOTHING_TO_CAPTION
    loaded = load_for_cli("caption", args.model, settings)
    try:
        check_options(loaded, options)  # one error up front, not the same one on every image
    except OptionsError as exc:
        raise UserError(str(exc)) from None
    styling = Styling.load(style, args.style_model, settings)  # before any captioning: a missing rewriter is
    # one error up front, not after the first chunk's work
    first = True
    try:
        with open_output(args.out) as out, Progress.for_run(len(paths), args.progress) as progress:
            for chunk, results in captioned_chunks(loaded, paths, options, args.batch_size, progress):
                rows, chunk_failed = chunk_rows(chunk, results, styling, loaded)  # an interrupted run keeps the
                with progress.aside() if out.isatty() else contextlib.nullcontext():  # chunks it wrote; rows on
                    out.write(format_captions(rows, args.format, header=first))  # the terminal never follow the
                    out.flush()  # progress line's text
                failed, first = failed or chunk_failed, False
    except BrokenPipeError:  # the reader stopped reading (`| head`): nothing to say, the rest is not wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the flush at exit does not complain
        return 1
    except OSError as exc:  # a full disk, a removed drive: what was written before stays (--out says where)
        said = f"{args.out}: cannot be written" if args.out else "standard output: cannot be written"
        kept = "no row was written" if first else "the rows before were written"  # first: no chunk's rows went out
        say(f"{said} ({exc.strerror or exc})" + ("" if args.out else f"; {kept}"))
        return 1
    return 1 if failed else 0


def chunk_rows(chunk: list, results: list, styling: "Styling", loaded) -> tuple[list[dict], bool]:
    """Rows for a chunk of (path, ImageInput | ImageError) and its readable files' results, in order, each naming the
    model and version that captioned it (styled when a style is asked for); True when any image or styling failed."""
    results = iter(results)
    rows, captioned = [], []
    for path, item in chunk:
        if isinstance(item, ImageError):  # never reached the model: the run's model, as the engine says of its errors
            made_by = {"model": loaded.name, "model_version": loaded.version}
            row, result = {"path": str(path), "caption": None, "score": None, "error": item.reason, **made_by}, None
        else:
            result = next(results)
            row = {"path": str(path), "caption": result.caption, "score": result.score, "error": result.error,
                   "model": result.model, "model_version": result.model_version}  # fmt: skip
        rows.append(row)
        if row["error"]:
            say(f"{path}: {row['error']}")
        else:
            captioned.append((row, result))
    styled_ok = True
    if not styling.style.plain:
        for row in rows:
            row["styled"] = None  # every line has the key; a failed image or styling leaves it null
        styled_ok = styling.add(captioned) if captioned else True
    return rows, any(row["error"] for row in rows) or not styled_ok


def captioned_chunks(loaded, paths: list[Path], options, batch_size: int | None, counted: Progress | None = None):
    """(chunk, results of its readable files) in order, the files done counted as they go. The engine is given the
    next chunk while this one's last NEXT_CHUNK_AT files are captioned (it never waits for work at a chunk's end),
    and the chunk after that is read meanwhile."""
    stop, counted = threading.Event(), counted or Progress(len(paths))

    def caption(chunk: list, nearly_done: threading.Event) -> list:
        part, unreadable = object(), sum(isinstance(item, ImageError) for _, item in chunk)  # done when read
        counted.set(part, unreadable)

        def progress(done: int, total: int) -> None:
            if stop.is_set():
                raise Abandoned  # the caller stopped (Ctrl-C, an error): the engine drops what has not started
            counted.set(part, unreadable + done)
            if total - done <= NEXT_CHUNK_AT:
                nearly_done.set()

        readable = [item for _, item in chunk if not isinstance(item, ImageError)]
        try:
            return caption_images(loaded, readable, options, batch_size=batch_size, on_progress=progress)
        finally:
            nearly_done.set()

    with ThreadPoolExecutor(2, "caption-ahead") as captioner:
        try:
            waiting, nearly_done = deque(), threading.Event()
            nearly_done.set()
            for chunk in read_ahead(paths):
                nearly_done.wait()  # the chunk before is near its end
                nearly_done = threading.Event()
                waiting.append((chunk, captioner.submit(caption, chunk, nearly_done)))
                if len(waiting) == 2:
                    chunk, job = waiting.popleft()
                    yield chunk, job.result()
            while waiting:
                chunk, job = waiting.popleft()
                yield chunk, job.result()
        finally:
            stop.set()


class Abandoned(Exception):
    """Raised inside a chunk's captioning to stop it."""


def read_ahead(paths: list[Path]):
    """Chunks of (path, ImageInput or the ImageError reading it gave), each read in a thread while the ones before
    are captioned; at most CHUNK_FILES files and CHUNK_BYTES bytes a chunk."""
    queued = iter(paths)

    def read_chunk() -> list:
        chunk, size = [], 0
        for path in queued:
            try:
                item = read_file(path)
                size += len(item.data)
            except ImageError as exc:
                item = exc
            chunk.append((path, item))
            if len(chunk) >= CHUNK_FILES or size >= CHUNK_BYTES:
                break
        return chunk

    with ThreadPoolExecutor(1, "read-ahead") as reader:
        coming = reader.submit(read_chunk)
        while chunk := coming.result():
            coming = reader.submit(read_chunk)
            yield chunk


def chosen_style(args):
    """The --style / --style-instruction asked for (plain when neither)."""
    try:
        style = style_for(args.style, args.style_instruction)
    except StyleError as exc:
        raise UserError(str(exc)) from None
    if args.style_model and style.plain:
        raise UserError("--style-model rewrites captions in a style: give --style (not plain) or --style-instruction")
    return style


@dataclass
class Styling:
    """The style asked for, with its rewriter and (for `detailed`) the Q&A model, loaded once for the whole run."""

    style: object
    rewriter: object = None
    qa: object = None

    @classmethod
    def load(cls, style, style_model: str | None, settings: Settings) -> "Styling":
        if style.plain:
            return cls(style)
        rewriter = load_for_cli("style", style_model, settings)  # UserError (exit 2) when it cannot serve
        notice = style_notice(rewriter, style)
        if notice:
            say(f"note: {notice}")
        qa = None
        if style.name == DETAILED:
            try:
                qa = load_for_cli("qa", None, settings)
            except UserError as exc:  # as the caption page does: the captions are restyled without its facts
                say(f"note: the Q&A model that 'detailed' asks cannot be loaded ({exc}); restyling without its answers")
        return cls(style, rewriter, qa)

    def add(self, captioned: list[tuple[dict, object]]) -> bool:
        """Each captioned (row, result)'s caption in the style, under "styled"; False (said on stderr) if that failed."""
        results = [result for _, result in captioned]
        try:
            facts = None
            if self.qa is not None:
                facts = detail_facts(self.qa, [decode(result.source, max_side=768).image for result in results])
            styled = restyle_batch(self.rewriter, [result.caption for result in results], self.style, facts)
        except StyleError as exc:
            say(f"styling failed: {exc}")
            return False
        for (row, _), text in zip(captioned, styled):
            row["styled"] = text
        return True


def cmd_ask(args, settings: Settings) -> int:
    if not args.question.strip():
        raise UserError("the question is empty")
    if args.max_new_tokens is not None and not 1 <= args.max_new_tokens <= 1024:
        raise UserError(f"--max-new-tokens must be 1 to 1024, not {args.max_new_tokens}")
    try:
        picture = decode(read_file(args.image), max_side=768)
    except ImageError as exc:
        say(str(exc))
        return 1
    loaded = load_for_cli("qa", args.model, settings)
    written = False
    try:
        with answer(loaded, picture.image, [], args.question, max_new_tokens=args.max_new_tokens) as stream:
            said = list(stream.notices)
            for notice in said:
                say(f"note: {notice}")
            for chunk in stream:
                sys.stdout.write(chunk)
                sys.stdout.flush()
                written = True
    except ChatError as exc:  # the model or its server failed while answering: the answer is incomplete
        if written:
            sys.stdout.write("\n")  # the partial answer keeps its own line; the error goes on stderr
            sys.stdout.flush()
        say(str(exc))
        return 1
    sys.stdout.write("\n")
    sys.stdout.flush()
    for notice in stream.notices:  # what a server's model made cut on the way (its context is unknown here)
        if notice not in said:
            say(f"note: {notice}")
    return 0
