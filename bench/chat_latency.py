"""Chat latency: time to first token and tokens/s of this project's streaming path against plain generate.

    python bench/chat_latency.py                      # CPU, the embedded demo Q&A model (one-word answers)
    python bench/chat_latency.py --tiny blip2         # CPU, the test suite's tiny random BLIP-2 (long answers)
    python bench/chat_latency.py --model Salesforce/blip2-opt-2.7b --device cuda

Both ways run the same loaded model on the same image and question with greedy decoding, so they produce
the same tokens; plain generate returns nothing until the whole answer is done.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from captioner.chat import answer, build_inputs  # noqa: E402
from captioner.demo.world import render  # noqa: E402
from captioner.models import load_chat_model  # noqa: E402
from captioner.settings import Settings  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--tiny", choices=["blip2", "llava"], help="build the test suite's tiny random model instead")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--question", default="what color is the shape?")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--runs", type=int, default=5)
    return parser.parse_args()


def plain_generate(loaded, image, question, max_new_tokens):
    """The plain transformers way: the same inputs, generate, decode; the text exists only at the end."""
    import torch

    started = time.perf_counter()
    inputs = build_inputs(loaded, image, [], question, max_new_tokens)[0].to(loaded.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(loaded.dtype)
    with torch.inference_mode():
        out = loaded.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    prompt_length = 0 if loaded.family == "BlipForQuestionAnswering" else inputs["input_ids"].shape[1]
    text = loaded.processor.tokenizer.decode(out[0][prompt_length:], skip_special_tokens=True)
    elapsed = time.perf_counter() - started
    return elapsed, elapsed, count_tokens(loaded, text), text


def streaming(loaded, image, question, max_new_tokens):
    """This project's way: chat.answer streams text as each token is decoded."""
    started, first = time.perf_counter(), None
    stream = answer(loaded, image, [], question, max_new_tokens=max_new_tokens)
    for _ in stream:
        first = first or time.perf_counter() - started
    elapsed = time.perf_counter() - started
    return first or elapsed, elapsed, count_tokens(loaded, stream.text), stream.text


def count_tokens(loaded, text: str) -> int:
    """Answer tokens, counted the same way for both."""
    return len(loaded.processor.tokenizer(text, add_special_tokens=False).input_ids)


def main():
    args = parse_args()
    settings = Settings(home=Path.cwd(), device=args.device)
    spec = args.model
    if args.tiny:
        import tiny_models

        spec = str(getattr(tiny_models, f"build_{args.tiny}")(Path(tempfile.mkdtemp())))
    loaded = load_chat_model(spec, settings, fallback=False)
    image = render("circle", "red", 256, (40, 40, 200, 200))
    rows = {}
    for name, way in (("plain generate", plain_generate), ("captioner streaming", streaming)):
        way(loaded, image, args.question, args.max_new_tokens)  # warm-up
        runs = [way(loaded, image, args.question, args.max_new_tokens) for _ in range(args.runs)]
        ttft = statistics.median(r[0] for r in runs)
        total = statistics.median(r[1] for r in runs)
        tokens = runs[0][2]
        rows[name] = (ttft, total, tokens, runs[0][3])
    print(f"model {loaded.name} ({loaded.family}, {loaded.version}) on {loaded.device} {loaded.dtype}; "
          f"median of {args.runs} runs; answer: {rows['plain generate'][3][:60]!r}")  # fmt: skip
    print(f"{'way':<24}{'first token ms':>16}{'total ms':>12}{'tokens':>8}{'tokens/s':>10}")
    for name, (ttft, total, tokens, _) in rows.items():
        print(f"{name:<24}{ttft * 1000:>16.1f}{total * 1000:>12.1f}{tokens:>8}{tokens / total:>10.1f}")
    plain, ours = rows["plain generate"], rows["captioner streaming"]
    print(f"first text {plain[0] / ours[0]:.1f}x sooner; throughput {ours[2] / ours[1] / (plain[2] / plain[1]):.2f}x of plain")


if __name__ == "__main__":
    main()
