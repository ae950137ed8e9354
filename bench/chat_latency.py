"""Chat latency: time to first text and tokens/s of this project's streaming answer beside plain `generate`,
the stock `TextIteratorStreamer`, and an OpenAI-compatible endpoint (`transformers serve` on this machine).

    python -m bench.chat_latency                               # CPU, the embedded demo Q&A model (one-word answers)
    python -m bench.chat_latency --tiny llava                  # the test suite's tiny LLaVA, endpoint column too
    python -m bench.chat_latency --random blip2 --size small   # random weights, OPT-125m-sized language model
    python -m bench.chat_latency --random llava --size small   # the same size as a chat-template model, + endpoint
    python -m bench.chat_latency --random blip2 --size opt-2.7b --device cuda   # BLIP-2 OPT-2.7b size on a GPU

Every way runs the same loaded model (saved, then loaded through `load_chat_model`) on the same image and
question, greedy, so they produce the same tokens. Plain generate shows nothing until the whole answer is
done; "prefill" is plain generate stopped after its first token. Targets (issue 12): streaming reaches
>= 0.95x plain's tokens/s, and its first text comes no later than prefill plus one token.
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import statistics
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from bench.random_models import build_random
from captioner.chat import VQA, answer, build_inputs
from captioner.demo.world import render
from captioner.models import load_chat_model
from captioner.settings import Settings


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo", help="a Q&A model spec (ignored with --tiny or --random)")
    parser.add_argument("--tiny", choices=["blip2", "llava"], help="build the test suite's tiny random model instead")
    parser.add_argument("--random", choices=["blip2", "llava"], help="build a random-weight model of --size")
    parser.add_argument("--size", choices=["small", "opt-2.7b"], default="small")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--quantize", default="none", choices=["none", "8bit", "4bit"], help="bitsandbytes, CUDA only")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads here and in the endpoint server (1: on a busy 2-core machine more threads spin)")
    parser.add_argument("--question", default="what color is the shape?")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-endpoint", action="store_true", help="skip the transformers serve column")
    parser.add_argument("--models-dir", type=Path, help="build the --random model here once and reuse it in later runs")
    return parser.parse_args()


def plain_generate(loaded, image, question, max_new_tokens):
    """The plain transformers way: the same inputs, generate, decode; the text exists only at the end."""
    import torch

    started = time.perf_counter()
    inputs = build_inputs(loaded, image, [], question, max_new_tokens)[0].to(loaded.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(loaded.dtype)
    with torch.inference_mode():
        out = loaded.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    prompt_length = 0 if loaded.family == VQA else inputs["input_ids"].shape[1]
    text = loaded.processor.tokenizer.decode(out[0][prompt_length:], skip_special_tokens=True)
    _sync(loaded)
    elapsed = time.perf_counter() - started
    return elapsed, elapsed, text


def stock_streamer(loaded, image, question, max_new_tokens):
    """The transformers docs' way: generate in a new thread, a stock TextIteratorStreamer (text at word ends)."""
    import torch
    from transformers import TextIteratorStreamer

    started, first = time.perf_counter(), None
    inputs = build_inputs(loaded, image, [], question, max_new_tokens)[0].to(loaded.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(loaded.dtype)
    streamer = TextIteratorStreamer(loaded.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)

    def run():
        with torch.inference_mode():
            loaded.model.generate(**inputs, streamer=streamer, max_new_tokens=max_new_tokens, do_sample=False)

    worker = threading.Thread(target=run)
    worker.start()
    text = ""
    for piece in streamer:
        if piece and first is None:
            first = time.perf_counter() - started
        text += piece
    worker.join()
    elapsed = time.perf_counter() - started
    return first or elapsed, elapsed, text


def captioner_streaming(loaded, image, question, max_new_tokens):
    """This project's way: chat.answer streams text as each token is decoded."""
    started, first = time.perf_counter(), None
    stream = answer(loaded, image, [], question, max_new_tokens=max_new_tokens)
    for _ in stream:
        first = first or time.perf_counter() - started
    elapsed = time.perf_counter() - started
    return first or elapsed, elapsed, stream.text


def _sync(loaded) -> None:
    if loaded.device.type == "cuda":
        import torch

        torch.cuda.synchronize(loaded.device)


def count_tokens(loaded, text: str) -> int:
    """Answer tokens, counted the same way for every way."""
    return len(loaded.processor.tokenizer(text, add_special_tokens=False).input_ids)


def measure(ways: dict, loaded, image, args) -> tuple[dict, dict]:
    """Each way once to warm up, then the ways taken in turn, run after run, so machine noise hits them alike.
    Returns {way: (median first text s, median total s, tokens, answer)} and {way: [(first, total), ...]}."""
    for way, max_new_tokens in ways.values():
        way(loaded, image, args.question, max_new_tokens)
    runs = {name: [] for name in ways}
    for _ in range(args.runs):
        for name, (way, max_new_tokens) in ways.items():
            runs[name].append(way(loaded, image, args.question, max_new_tokens))
    rows = {
        name: (statistics.median(r[0] for r in done), statistics.median(r[1] for r in done), count_tokens(loaded, done[0][2]), done[0][2])
        for name, done in runs.items()
    }  # fmt: skip
    return rows, {name: [(r[0], r[1]) for r in done] for name, done in runs.items()}


def paired(runs: dict, way: str, reference: str, pick) -> float:
    """Median over runs of pick(way's run, reference's run of the same round): neighbours in time share the load."""
    return statistics.median(pick(mine, theirs) for mine, theirs in zip(runs[way], runs[reference]))


def main():
    import torch

    args = parse_args()
    torch.set_num_threads(args.threads)
    settings = Settings(home=Path.cwd(), device=args.device, dtype=args.dtype, quantize=args.quantize)
    spec, folder = args.model, None
    work = Path(tempfile.mkdtemp(prefix="chat-bench-"))
    atexit.register(shutil.rmtree, work, True)  # a random opt-2.7b is 7.7 GB: never left behind in /tmp
    if args.tiny:
        from tests import tiny_models

        folder = getattr(tiny_models, f"build_{args.tiny}")(work / "model")
    elif args.random:
        folder = random_model(args, work)
    if folder is not None:
        spec = str(folder)
    loaded = load_chat_model(spec, settings)
    image = render("circle", "red", 256, (40, 40, 200, 200))
    n = args.max_new_tokens
    ways = {"plain generate": (plain_generate, n), "stock TextIteratorStreamer": (stock_streamer, n),
            "captioner streaming": (captioner_streaming, n), "prefill": (plain_generate, 1)}  # fmt: skip
    with endpoint_way(args, loaded, folder) as (endpoint, note):
        if endpoint:
            ways["endpoint (transformers serve)"] = (endpoint, n)
        rows, runs = measure(ways, loaded, image, args)
    prefill = rows.pop("prefill")[1]
    print(f"model {loaded.name} ({loaded.family}, {sum(p.numel() for p in loaded.model.parameters()) / 1e6:.0f}M parameters) "
          f"on {loaded.device} {loaded.dtype}{'' if args.quantize == 'none' else ' ' + args.quantize}, "
          f"{torch.cuda.max_memory_allocated() / 2**30 if torch.device(loaded.device).type == 'cuda' else 0:.2f} GiB CUDA peak, "
          f"{args.threads} CPU thread(s); median of {args.runs} runs, ways in turn; "
          f"answer: {rows['plain generate'][3][:40]!r}")  # fmt: skip
    print(f"{'way':<31}{'first text ms':>14}{'total ms':>10}{'tokens':>8}{'tokens/s':>10}{'vs plain':>10}")
    for name, (ttft, total, tokens, _) in rows.items():
        speed = paired(runs, name, "plain generate", lambda mine, plain: plain[1] / mine[1]) * tokens / rows["plain generate"][2]
        print(f"{name:<31}{ttft * 1000:>14.1f}{total * 1000:>10.1f}{tokens:>8}{tokens / total:>10.1f}{speed:>9.2f}x")
    if note:
        print(note)
    per_token = (rows["plain generate"][1] - prefill) / (max(rows["plain generate"][2], 2) - 1)
    throughput = paired(runs, "captioner streaming", "plain generate", lambda mine, plain: plain[1] / mine[1])
    first = paired(runs, "captioner streaming", "prefill", lambda mine, prefill_run: mine[0] - prefill_run[1])
    print(f"prefill (plain generate, 1 token) {prefill * 1000:.1f} ms; one more token {per_token * 1000:.1f} ms")
    print(f"captioner streaming: throughput {throughput:.2f}x plain (target >= 0.95); first text {first * 1000:+.1f} ms "
          f"after the prefill of the same round, one token being {per_token * 1000:.1f} ms (target: at most one token)")
    print("(vs plain and these two: medians of per-round pairs; columns: medians of each way's runs)")


def random_model(args, work: Path) -> Path:
    """The --random model's folder: built in work, or built once in --models-dir (a random opt-2.7b takes a GPU
    session minutes to initialise and save, and the quantized steps load the same one)."""
    if not args.models_dir:
        return build_random(args.random, args.size, work / "model")
    folder = args.models_dir / f"{args.random}-{args.size}"
    if not (folder / "complete").exists():  # a build cut short is built again
        shutil.rmtree(folder, ignore_errors=True)
        build_random(args.random, args.size, folder)
        (folder / "complete").touch()
    return folder


@contextmanager
def endpoint_way(args, loaded, folder):
    """`transformers serve` on this machine serving the same model folder, asked through the endpoint backend."""
    if args.no_endpoint:
        yield None, ""
        return
    if folder is None or loaded.family != "AutoModelForImageTextToText":
        yield None, "endpoint: skipped (transformers serve needs a chat-template model folder: --tiny llava or --random llava)"
        return
    from tests.chat_servers import transformers_serve

    device = "cpu" if loaded.device.type == "cpu" else str(loaded.device)
    dtype = str(loaded.dtype).removeprefix("torch.")  # the dtype the in-process ways run in, not the file's
    with transformers_serve(Path(tempfile.mkdtemp(prefix="chat-bench-serve-")) / "serve.log", threads=args.threads, preload=str(folder),
                            device=device, dtype=dtype) as url:  # fmt: skip
        settings = Settings(home=Path.cwd(), openai_base_url=url, openai_timeout=600)
        served = load_chat_model(f"openai:{folder}", settings)
        yield (lambda _, picture, question, max_new_tokens: captioner_streaming(served, picture, question, max_new_tokens)), ""


if __name__ == "__main__":
    main()
