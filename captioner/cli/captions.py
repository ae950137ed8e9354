"""`caption`: caption image files and folders, optionally restyled; `ask`: answer a question about an image."""

from __future__ import annotations

import sys
from pathlib import Path

from ..caption import GenerationOptions, caption_images, format_captions
from ..chat import ChatError, answer
from ..images import UPLOAD_TYPES, ImageError, decode, read_file
from ..restyle import detail_facts, restyle_batch
from ..settings import Settings
from ..styles import DETAILED, StyleError, style_for, style_notice
from .common import UserError, say
from .serving import load_for_cli


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
    paths = expand_paths(args.paths)
    loaded = load_for_cli("caption", args.model, settings)
    inputs, results_by_index = [], {}
    for index, path in enumerate(paths):
        try:
            inputs.append((index, read_file(path)))
        except ImageError as exc:
            results_by_index[index] = {"path": str(path), "caption": None, "score": None, "error": exc.reason}
    results = caption_images(loaded, [item for _, item in inputs], options, batch_size=args.batch_size)
    for (index, _), result in zip(inputs, results):
        results_by_index[index] = {"path": str(paths[index]), "caption": result.caption, "score": result.score, "error": result.error}
    ordered = [results_by_index[i] for i in range(len(paths))]
    for row in ordered:
        if row["error"]:
            say(f"{row['path']}: {row['error']}")
    styled_ok = True
    if not style.plain:
        for row in ordered:
            row["styled"] = None  # every line has the key; a failed image or styling leaves it null
        captioned = [(results_by_index[index], result) for (index, _), result in zip(inputs, results) if result.ok]
        styled_ok = add_styled(captioned, style, args, settings)
    write_captions(ordered, args.format, args.out)
    return 1 if any(row["error"] for row in ordered) or not styled_ok else 0


def chosen_style(args):
    """The --style / --style-instruction asked for (plain when neither)."""
    try:
        style = style_for(args.style, args.style_instruction)
    except StyleError as exc:
        raise UserError(str(exc)) from None
    if args.style_model and style.plain:
        raise UserError("--style-model rewrites captions in a style: give --style (not plain) or --style-instruction")
    return style


def add_styled(captioned: list[tuple[dict, object]], style, args, settings: Settings) -> bool:
    """Each captioned (row, result)'s caption in the style, under "styled"; False (said on stderr) if that failed."""
    rewriter = load_for_cli("style", args.style_model, settings)
    notice = style_notice(rewriter, style)
    if notice:
        say(f"note: {notice}")
    results = [result for _, result in captioned]
    try:
        facts = None
        if style.name == DETAILED:
            qa = load_for_cli("qa", None, settings)
            facts = detail_facts(qa, [decode(result.source, max_side=768).image for result in results])
        styled = restyle_batch(rewriter, [result.caption for result in results], style, facts)
    except StyleError as exc:
        say(f"styling failed: {exc}")
        return False
    for (row, _), text in zip(captioned, styled):
        row["styled"] = text
    return True


def cmd_ask(args, settings: Settings) -> int:
    if not args.question.strip():
        raise UserError("the question is empty")
    if not 1 <= args.max_new_tokens <= 1024:
        raise UserError(f"--max-new-tokens must be 1 to 1024, not {args.max_new_tokens}")
    try:
        picture = decode(read_file(args.image), max_side=768)
    except ImageError as exc:
        say(str(exc))
        return 1
    loaded = load_for_cli("qa", args.model, settings)
    try:
        with answer(loaded, picture.image, [], args.question, max_new_tokens=args.max_new_tokens) as stream:
            for notice in stream.notices:
                say(f"note: {notice}")
            for chunk in stream:
                sys.stdout.write(chunk)
                sys.stdout.flush()
    except ChatError as exc:
        raise UserError(str(exc)) from None
    sys.stdout.write("\n")
    return 0


def expand_paths(raw: list[str]) -> list[Path]:
    """Files as given; folders replaced by the image files inside them, sorted."""
    paths: list[Path] = []
    for item in raw:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower().lstrip(".") in UPLOAD_TYPES)
            if not found:
                say(f"{path}: folder holds no image files")
            paths.extend(found)
        else:
            paths.append(path)
    return paths


def write_captions(rows: list[dict], fmt: str, out: Path | None) -> None:
    """The rows in the asked format, to the --out file or stdout."""
    text = format_captions(rows, fmt)
    if out:
        out.write_text(text, encoding="utf-8", newline="")
    else:
        sys.stdout.write(text)
