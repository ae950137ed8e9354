"""Captioning for every caller (pages, CLI, finetune, benches): requests go to the loaded captioner's one engine."""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

from .engine import CaptionResult, EngineClosed, engine_for
from .engine.blip_decoder import OptionsError, check_fits
from .engine.pixels import THUMBNAIL_SIDE
from .files import has_undecodable, spreadsheet_safe
from .images import ImageInput
from .models import LoadedModel
from .options import GenerationOptions

__all__ = [
    "CaptionResult", "GenerationOptions", "OptionsError", "THUMBNAIL_SIDE", "caption_images", "caption_stream",
    "check_options", "format_captions",
]  # fmt: skip


def caption_images(
    loaded: LoadedModel,
    inputs: Sequence[ImageInput],
    options: GenerationOptions = GenerationOptions(),
    batch_size: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    thumbnails: bool = False,
    timeout: float | None = None,
) -> list[CaptionResult]:
    """Caption every input through the loaded captioner's shared engine; results in input order, a bad input gets
    an error result and the rest go on. batch_size caps the images per model call (default: the engine's budget).
    on_progress(done, total) is also called every 0.25 s while waiting: raising from it abandons the rest."""
    options.validate()
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch size must be at least 1, not {batch_size}")
    results: list[CaptionResult] = []
    report = (lambda: on_progress(len(results), len(inputs))) if on_progress else None
    for result in caption_stream(loaded, inputs, options, max_batch=batch_size, thumbnails=thumbnails, timeout=timeout, heartbeat=report):
        results.append(result)
        if report:
            report()
    return results


def check_options(loaded: LoadedModel, options: GenerationOptions) -> None:
    """OptionsError when this captioner cannot serve these options for any image (a prompt too long for it)."""
    check_fits(loaded.model, loaded.processor.tokenizer, options)


def caption_stream(
    loaded: LoadedModel, inputs: Sequence[ImageInput], options: GenerationOptions = GenerationOptions(), **job
) -> Iterator[CaptionResult]:
    """Each input's result in input order as it is ready (CaptionEngine.stream's keywords); closing it abandons the rest."""
    while True:
        stream = engine_for(loaded).stream(inputs, options, **job)
        try:
            first = next(stream)
        except StopIteration:
            return
        except EngineClosed:  # retired (a hot-swap) between the lookup and the start: this model gets a fresh engine
            continue
        yield first
        yield from stream
        return


# The caption page's download only: the model and version that wrote each caption (a hot-swap between two
# downloads changes them), and the texts its person saved
PAGE_COLUMNS = ("model", "model_version", "correction", "styled_correction")


def format_captions(rows: list[dict], fmt: str, header: bool = True, styled: bool | None = None) -> str:
    """Rows of {path, caption, score, error} (+ styled, with a style; + the PAGE_COLUMNS, where a row has their key)
    as jsonl (one object per input, in order), csv, or txt (captioned only). The score (mean token log-probability)
    is rounded to 4 decimals; null/empty when there is no caption. header=False leaves out the CSV header (rows
    appended to earlier ones); styled says whether the CSV has a styled column (default: when a row has the key)."""
    import csv
    import io
    import json

    saved = [name for name in PAGE_COLUMNS if any(name in r for r in rows)]
    if fmt == "jsonl":  # a file name that is not UTF-8 (its bytes kept as \udcXX) goes as escapes json.loads gives back
        return "".join(
            json.dumps({"path": r["path"], "caption": r["caption"], **({"styled": r["styled"]} if "styled" in r else {}),
                        "score": _rounded(r.get("score")), **{name: r[name] for name in saved if name in r},
                        **({"error": r["error"]} if r["error"] else {})}, ensure_ascii=has_undecodable(r["path"])) + "\n"
            for r in rows
        )  # fmt: skip
    if fmt == "csv":
        out = io.StringIO(newline="")
        writer = csv.writer(out, lineterminator="\r\n")
        styled = any("styled" in r for r in rows) if styled is None else styled  # only when a style was asked for
        if header:
            writer.writerow(["path", "caption", *(["styled"] if styled else []), "error", "score", *saved])
        writer.writerows([
            [*map(spreadsheet_safe, [r["path"], r["caption"] or "", *([r.get("styled") or ""] if styled else []),
                                     r["error"] or ""]),
             _csv_score(r.get("score")), *(spreadsheet_safe(r.get(name) or "") for name in saved)]
            for r in rows
        ])  # fmt: skip
        return out.getvalue()
    if fmt == "txt":  # one line a captioned image: path, caption (and the styled caption), tab-separated
        fields = [("path", "caption", "styled") if "styled" in r else ("path", "caption") for r in rows]
        return "".join("\t".join(_one_line(r.get(name) or "") for name in names) + "\n"
                       for r, names in zip(rows, fields) if not r["error"])  # fmt: skip
    raise ValueError(f"unknown format {fmt!r}; use jsonl, csv or txt")


def _one_line(text: str) -> str:
    """Text for one tab-separated line: a tab or a line break in it (a file name may hold them) written as \\t, \\n."""
    return str(text).replace("\\", "\\\\").replace("\t", "\\t").replace("\r", "\\r").replace("\n", "\\n")


def _rounded(score: float | None) -> float | None:
    return None if score is None else round(score, 4)


def _csv_score(score: float | None) -> str:
    return "" if score is None else f"{score:.4f}"

