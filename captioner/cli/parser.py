"""The command line's arguments: `python -m captioner caption|ask|index|search|feedback|models|demo ...`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..styles import STYLES
from .common import PROG


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m {PROG}", description="Image captioning studio")
    commands = parser.add_subparsers(dest="command", required=True)

    cap = commands.add_parser("caption", help="caption image files (folders are searched for images)")
    cap.add_argument("paths", nargs="+", metavar="PATH", help="an image file, a folder, a pattern, or - to read the "
                     "paths from standard input (one a line, or NUL-separated as find -print0 writes them)")
    cap.add_argument("--model", help="model spec (default: CAPTIONER_CAPTION_MODEL or the BLIP base model)")
    cap.add_argument("--batch-size", type=int, help="most images per model call (default: the engine's memory budget)")
    cap.add_argument("--max-new-tokens", type=int, default=30)
    cap.add_argument("--min-new-tokens", type=int, default=0)
    cap.add_argument("--num-beams", type=int, default=3)
    cap.add_argument("--repetition-penalty", type=float, default=1.0)
    cap.add_argument("--prompt", default="", help="caption prefix (conditional captioning)")
    cap.add_argument("--format", choices=["jsonl", "csv", "txt"], default="jsonl")
    cap.add_argument("--out", type=Path, help="write here instead of stdout (-: stdout); rows go to OUT.partial "
                     "as they are done, renamed to OUT when the run is complete")
    cap.add_argument("--progress", action=argparse.BooleanOptionalAction, help="files done, rate and time left on "
                     "stderr (default: on a terminal only; --progress elsewhere prints a line every few seconds)")
    styling = cap.add_mutually_exclusive_group()
    styling.add_argument("--style", choices=STYLES, help="also rewrite each caption in a style (output: \"styled\")")
    styling.add_argument("--style-instruction", metavar="TEXT", help="your own style instruction instead of --style")
    cap.add_argument("--style-model", help="caption rewriter spec (default: CAPTIONER_STYLE_MODEL; demo works offline)")

    ask = commands.add_parser("ask", help="answer a question about an image")
    ask.add_argument("image", type=Path)
    ask.add_argument("question")
    ask.add_argument("--model", help="Q&A model spec, or openai:MODEL (default: CAPTIONER_QA_MODEL or BLIP VQA base)")
    ask.add_argument("--max-new-tokens", type=int, default=None, help="at most this many (default 64, or what the model's context holds)")

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
    add.add_argument("--task", choices=["caption", "qa", "style"], default="caption",
                     help="style: a corrected styled caption (never captioner training data)")
    add.add_argument("--prompt", default="", help="the question (qa), the style (style) or the caption prefix")
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
    listed = models.add_parser("list", help="list versions; * marks the live one")
    listed.add_argument("--json", action="store_true", help="one JSON object for scripts: each version with its "
                        "files' problem if any, its scores, and which one serves")
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
