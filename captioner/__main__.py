"""The command line: `python -m captioner caption|feedback|demo ...` (commands in README.md, layout in ARCHITECTURE.md)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from . import runtime
from .settings import Settings, SettingsError
from .styles import DETAILED, STYLES, StyleError, style_for, style_notice

PROG = "captioner"


class UserError(Exception):
    """A problem with what the user asked for: reported as one line on stderr, no traceback."""


def say(message: str) -> None:
    """One line on stderr, prefixed with the program name."""
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m {PROG}", description="Image captioning studio")
    commands = parser.add_subparsers(dest="command", required=True)

    cap = commands.add_parser("caption", help="caption image files (folders are searched for images)")
    cap.add_argument("paths", nargs="+", metavar="PATH")
    cap.add_argument("--model", help="model spec (default: CAPTIONER_CAPTION_MODEL or the BLIP base model)")
    cap.add_argument("--batch-size", type=int, help="most images per model call (default: the engine's memory budget)")
    cap.add_argument("--max-new-tokens", type=int, default=30)
    cap.add_argument("--min-new-tokens", type=int, default=0)
    cap.add_argument("--num-beams", type=int, default=3)
    cap.add_argument("--repetition-penalty", type=float, default=1.0)
    cap.add_argument("--prompt", default="", help="caption prefix (conditional captioning)")
    cap.add_argument("--format", choices=["jsonl", "csv", "txt"], default="jsonl")
    cap.add_argument("--out", type=Path, help="write here instead of stdout")
    styling = cap.add_mutually_exclusive_group()
    styling.add_argument("--style", choices=STYLES, help="also rewrite each caption in a style (output: \"styled\")")
    styling.add_argument("--style-instruction", metavar="TEXT", help="your own style instruction instead of --style")
    cap.add_argument("--style-model", help="caption rewriter spec (default: CAPTIONER_STYLE_MODEL; demo works offline)")

    ask = commands.add_parser("ask", help="answer a question about an image")
    ask.add_argument("image", type=Path)
    ask.add_argument("question")
    ask.add_argument("--model", help="Q&A model spec, or openai:MODEL (default: CAPTIONER_QA_MODEL or BLIP VQA base)")
    ask.add_argument("--max-new-tokens", type=int, default=64)

    index = commands.add_parser("index", help="build or update the search index of a gallery folder")
    index.add_argument("folder", type=Path)
    index.add_argument("--model", help="search model spec (default: CAPTIONER_SEARCH_MODEL or ViT-B-32)")
    index.add_argument("--follow-links", action="store_true",
                       help="also index files that symbolic links lead to outside the folder (CAPTIONER_GALLERY_FOLLOW_LINKS=1)")
    search = commands.add_parser("search", help="find gallery images similar to a text or an image")
    query = search.add_mutually_exclusive_group(required=True)
    query.add_argument("--text")
    query.add_argument("--image", type=Path)
    search.add_argument("-k", type=int, default=10, help="how many results")
    search.add_argument("--model", help="search model spec (default: CAPTIONER_SEARCH_MODEL or ViT-B-32)")
    search.add_argument("--gallery", type=Path, help="gallery folder (default: CAPTIONER_GALLERY or data/gallery)")
    search.add_argument("--format", choices=["jsonl"], default="jsonl")
    search.add_argument("--follow-links", action="store_true", help="as for index, when the index is built first")

    feedback = commands.add_parser("feedback", help="the feedback log").add_subparsers(dest="action", required=True)
    add = feedback.add_parser("add", help="log a correction of an image's caption or answer")
    add.add_argument("image", type=Path)
    add.add_argument("--correction", required=True)
    add.add_argument("--model-output", default="", help="what the model said (equal to --correction: a confirmation)")
    add.add_argument("--task", choices=["caption", "qa"], default="caption")
    add.add_argument("--prompt", default="", help="the question (qa) or caption prefix")
    add.add_argument("--status", choices=["pending", "approved"], default="pending")
    add.add_argument("--model", default="", help="the model spec that made the output")
    add.add_argument("--model-version", default="")
    add.add_argument("--notes", default="")
    export = feedback.add_parser("export", help="write the approved rows as a dataset")
    export.add_argument("--format", choices=["hf", "jsonl"], required=True, help="hf: an imagefolder dataset")
    export.add_argument("--out", type=Path, required=True, help="a new (or empty) folder")
    feedback.add_parser("repair", help="move broken records of feedback.csv aside into feedback-broken.csv (kept)")
    listing = feedback.add_parser("list", help="print the logged rows")
    listing.add_argument("--status", choices=["pending", "approved", "rejected"])
    listing.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")

    models = commands.add_parser("models", help="fine-tuned captioner versions").add_subparsers(dest="action", required=True)
    models.add_parser("list", help="list versions; * marks the live one")
    activate = models.add_parser("activate", help="make a version live (it must load and pass the check set)")
    activate.add_argument("version")
    models.add_parser("rollback", help="make the version before the live one live (or the default model)")

    demo = commands.add_parser("demo", help="the embedded demo world").add_subparsers(dest="action", required=True)
    build = demo.add_parser("build", help="retrain the embedded demo models from a fixed seed")
    build.add_argument("--out", type=Path, help="write the models here instead of into the package")
    build.add_argument("--steps", type=int, help="training steps (default: the recipe's)")
    build.add_argument("--seed", type=int, default=0)
    pictures = demo.add_parser("images", help="write demo-world images and their captions")
    pictures.add_argument("outdir", type=Path)
    pictures.add_argument("--n", type=int, default=12)
    pictures.add_argument("--seed", type=int, default=0)
    pictures.add_argument("--shapes", default="circle,square,triangle", help="comma list, e.g. star")
    pictures.add_argument("--colors", default="red,green,blue,yellow")
    pictures.add_argument("--format", choices=["png", "jpg"], default="png")
    return parser


def main(argv: list[str] | None = None) -> int:
    runtime.configure("cli")  # threads and OpenMP wait policy, before any command loads torch
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        handler = {
            "caption": cmd_caption, "ask": cmd_ask, "index": cmd_index, "search": cmd_search,
            "feedback": cmd_feedback, "models": cmd_models, "demo": cmd_demo,
        }[args.command]  # fmt: skip
        return handler(args, settings)
    except (UserError, SettingsError) as exc:
        say(str(exc))
        return 2
    except KeyboardInterrupt:
        say("interrupted")
        return 130


def cmd_caption(args, settings: Settings) -> int:
    from .caption import GenerationOptions, caption_images
    from .images import ImageError, read_file
    from .models import live_caption_spec, load_captioner

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
    loaded = load_for_cli(load_captioner, args.model, live_caption_spec(settings), settings)
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
    from .images import decode
    from .models import load_chat_model, load_style_model
    from .restyle import detail_facts, restyle_batch

    rewriter = load_for_cli(load_style_model, args.style_model, settings.style_model, settings)
    notice = style_notice(rewriter, style)
    if notice:
        say(f"note: {notice}")
    results = [result for _, result in captioned]
    try:
        facts = None
        if style.name == DETAILED:
            qa = load_for_cli(load_chat_model, None, settings.qa_model, settings)
            facts = detail_facts(qa, [decode(result.source, max_side=768).image for result in results])
        styled = restyle_batch(rewriter, [result.caption for result in results], style, facts)
    except StyleError as exc:
        say(f"styling failed: {exc}")
        return False
    for (row, _), text in zip(captioned, styled):
        row["styled"] = text
    return True


def cmd_ask(args, settings: Settings) -> int:
    from .chat import ChatError, answer
    from .images import ImageError, decode, read_file
    from .models import load_chat_model

    if not args.question.strip():
        raise UserError("the question is empty")
    if not 1 <= args.max_new_tokens <= 1024:
        raise UserError(f"--max-new-tokens must be 1 to 1024, not {args.max_new_tokens}")
    try:
        picture = decode(read_file(args.image), max_side=768)
    except ImageError as exc:
        say(str(exc))
        return 1
    loaded = load_for_cli(load_chat_model, args.model, settings.qa_model, settings)
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


def load_for_cli(load, explicit: str | None, default: str, settings: Settings):
    """Load the model a command needs; the default (not an explicit --model) may fall back, saying so."""
    from .models import ModelError

    try:
        loaded = load(explicit or default, settings, fallback=explicit is None)
    except ModelError as exc:
        raise UserError(str(exc)) from None
    if loaded.fallback_reason:
        say(f"note: {loaded.fallback_reason}")
    return loaded


def load_search_model(args, settings: Settings):
    from .embed import load_embedder

    return load_for_cli(load_embedder, args.model, settings.search_model, settings)


def report_update(report) -> None:
    if report.rebuilt_because:
        say(f"rebuilt the index: {report.rebuilt_because}")
    if report.rewritten_because:
        say(f"rewrote the index's vectors: {report.rewritten_because}")
    for path, reason in report.ignored:
        say(f"ignored {path}: {reason}")
    for path, reason in report.skipped:
        say(f"skipped {path}: {reason}")
    say(
        f"index: {report.added} added, {report.changed} changed, {report.removed} removed, "
        f"{report.unchanged} unchanged; {report.embedded} embedded, {report.reused} duplicates reused, "
        f"{len(report.skipped)} skipped, {len(report.ignored)} ignored ({report.seconds:.1f}s)"
    )


def cmd_index(args, settings: Settings) -> int:
    from tqdm import tqdm

    from .index import IndexProblem, update_index

    loaded = load_search_model(args, settings)
    bar = tqdm(total=0, unit="img", desc="embedding", file=sys.stderr, disable=None)

    def progress(done, total, rate):
        bar.total = total
        bar.update(done - bar.n)

    try:
        index, report = update_index(
            loaded, args.folder, settings.data_dir, on_progress=progress,
            follow_links=args.follow_links or settings.gallery_follow_links,
        )  # fmt: skip
    except IndexProblem as exc:
        raise UserError(str(exc)) from None
    finally:
        bar.close()
    report_update(report)
    say(f"{len(index)} images indexed ({index.kind} index) for {args.folder}")
    return 1 if report.skipped else 0


def cmd_search(args, settings: Settings) -> int:
    from .images import ImageError, read_file
    from .index import IndexProblem, SearchError, open_or_build, search_image, search_text

    if not 1 <= args.k <= 1000:
        raise UserError(f"-k must be 1 to 1000, not {args.k}")
    if args.text is not None and not args.text.strip():
        raise UserError("the text query is empty")
    loaded = load_search_model(args, settings)
    gallery = args.gallery or settings.gallery
    try:
        index, report = open_or_build(
            loaded, gallery, settings.data_dir, follow_links=args.follow_links or settings.gallery_follow_links
        )
        if report:
            report_update(report)
        hits = search_text(loaded, index, args.text, args.k) if args.text is not None else search_image(
            loaded, index, read_file(args.image), args.k
        )
    except (IndexProblem, SearchError) as exc:
        raise UserError(str(exc)) from None
    except ImageError as exc:
        say(str(exc))
        return 1
    for hit in hits:
        print(json.dumps({"path": str(hit.path), "score": round(hit.score, 6)}, ensure_ascii=False))
    return 0


def expand_paths(raw: list[str]) -> list[Path]:
    """Files as given; folders replaced by the image files inside them, sorted."""
    from .images import UPLOAD_TYPES

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
    from .caption import format_captions

    text = format_captions(rows, fmt)
    if out:
        out.write_text(text, encoding="utf-8", newline="")
    else:
        sys.stdout.write(text)


def cmd_feedback(args, settings: Settings) -> int:
    from .feedback import FIELDS, FeedbackError, FeedbackLog

    log = FeedbackLog(settings.data_dir)
    try:
        return feedback_action(args, log, FIELDS)
    except FeedbackError as exc:  # a bad correction, or the log locked by another writer for too long
        raise UserError(str(exc)) from None


def feedback_action(args, log, fields) -> int:
    if args.action == "add":
        from .images import ImageError, decode, read_file

        try:
            decoded = decode(read_file(args.image))
        except ImageError as exc:
            raise UserError(str(exc)) from None
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
        from .export import ExportError, export

        try:
            report = export(log, args.out, args.format)
        except ExportError as exc:
            raise UserError(str(exc)) from None
        for reason in report.skipped:
            say(f"left out: {reason}")
        say(f"exported {report.count} approved rows to {args.out} ({', '.join(f'{k}: {n}' for k, n in report.by_config.items())})")
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
        writer.writerows(rows)
    return 1 if problems else 0


def cmd_models(args, settings: Settings) -> int:
    from . import registry

    if args.action == "list":
        live = registry.active_version(settings.models_dir)
        versions = registry.list_versions(settings.models_dir)
        print(f"{'':2}{'version':<9}{'created':<27}{'rows':>6}  {'held-out exact before -> after':<32}base")
        for v in versions:
            before, after = v.heldout
            change = f"{before.get('exact_match')} -> {after.get('exact_match')}"
            print(f"{'*' if v.name == live else ' ':2}{v.name:<9}{v.created:<27}{v.rows_used:>6}  {change:<32}{v.base}")
        if live is None:
            print(f"* default model: {settings.caption_model}")
        elif live not in {v.name for v in versions}:
            say(f"models/active.json names {live}, which is missing")
            return 1
        return 0
    try:
        target = args.version if args.action == "activate" else registry.previous_version(settings.models_dir)
        registry.activate_checked(settings, target)
    except registry.RegistryError as exc:
        raise UserError(str(exc)) from None
    say(f"live: {target or 'the default model (' + settings.caption_model + ')'}")
    return 0


def cmd_demo(args, settings: Settings) -> int:
    if args.action == "images":
        from .demo.world import ALL_COLORS, ALL_SHAPES, write_images

        shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
        colors = [c.strip() for c in args.colors.split(",") if c.strip()]
        unknown = [s for s in shapes if s not in ALL_SHAPES] + [c for c in colors if c not in ALL_COLORS]
        if unknown or not shapes or not colors or args.n < 1:
            raise UserError(
                f"unknown or empty shapes/colors {unknown or ''} (shapes: {', '.join(ALL_SHAPES)}; "
                f"colors: {', '.join(ALL_COLORS)}; --n at least 1)"
            )
        written = write_images(args.outdir, args.n, args.seed, shapes, colors, args.format)
        say(f"wrote {len(written)} images and captions.jsonl to {args.outdir}")
        return 0
    from .demo.train import build_all

    build_all(out_dir=args.out, seed=args.seed, steps=args.steps, log=say)
    return 0


if __name__ == "__main__":
    sys.exit(main())
