"""Fine-tuning speed: this project's training beside the seed's loop and a plain LoRA loop, on the same rows.

    python -m bench.finetune_speed                                                      # CPU, the demo captioner
    python -m bench.finetune_speed --config ../shared/blip-base --device cuda --rows 1000  # BLIP-base, random weights
    python -m bench.finetune_speed --busy      # also: a retrain beside a busy app, default threading vs the policy

Each way runs in its own process (its peak memory is its own: RSS on the CPU, allocated CUDA memory on a GPU):
- seed: the loop the project first shipped (kept below): a DataLoader that decodes and preprocesses every
  image in every epoch, fp32 weights under bf16 autocast on a GPU, `loss.item()` and a NaN check every step;
- plain: the textbook LoRA loop: rows preprocessed once and kept on the device, bf16 weights on a GPU, the
  model's own loss, nothing else;
- project: finetune.tensors.to_tensors + finetune.trainer.train (rows decoded once and kept on the device,
  bf16 frozen weights on a GPU, batches mixed from new and old rows, the old ones distilled, augmentation,
  one host sync every 20 steps).
The time counts from the first image decoded to the last step. Rows: star corrections and confirmations of
the known shapes, 3 to 2.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="build this BLIP architecture with random weights instead of demo")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rows", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--busy", action="store_true", help="also time the project's training beside a busy process")
    parser.add_argument("--way", choices=["seed", "plain", "project"], help=argparse.SUPPRESS)  # a child process
    parser.add_argument("--threading", choices=["default", "policy"], default="policy", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def write_rows(folder: Path, n: int) -> None:
    from captioner.demo.quality import demo_inputs

    rows = []
    for shapes, kind, count in ((("star",), "correction", n - 2 * n // 5), (("circle", "square", "triangle"), "confirmation", 2 * n // 5)):
        inputs, samples = demo_inputs(count, seed=len(rows) + 1, shapes=shapes)
        for item, truth in zip(inputs, samples):
            (folder / item.name).write_bytes(item.data)
            rows.append({"path": str(folder / item.name), "caption": truth.caption, "sha256": item.sha256, "kind": kind})
    (folder / "rows.json").write_text(json.dumps(rows))


def load_model(args):
    from captioner.models import load_captioner
    from captioner.settings import Settings

    if not args.config:
        loaded = load_captioner("demo", Settings(home=Path.cwd(), device=args.device, dtype="float32"))
        return loaded.model, loaded.processor
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipProcessor

    import torch

    torch.manual_seed(0)
    model = BlipForConditionalGeneration(BlipConfig.from_pretrained(args.config)).to(args.device)
    return model, BlipProcessor.from_pretrained(args.config)


def run_way(args) -> dict:
    import torch

    from finetune.config import FinetuneConfig
    from finetune.data import Example

    rows = json.loads((args.data / "rows.json").read_text())
    examples = [Example(Path(r["path"]), r["caption"], r["sha256"], r["kind"], "star" if r["kind"] == "correction" else "") for r in rows]
    model, processor = load_model(args)
    cfg = FinetuneConfig(epochs=args.epochs, batch_size=args.batch_size)
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    trained_rows, prepared = {"seed": seed_way, "plain": plain_way, "project": project_way}[args.way](model, processor, examples, cfg, args)
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() if args.device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"rows_per_s": trained_rows / seconds, "seconds": seconds, "prepare_s": prepared, "peak_bytes": peak,
            "threads": torch.get_num_threads()}  # fmt: skip


def project_way(model, processor, examples, cfg, args):
    import torch

    from finetune.tensors import to_tensors
    from finetune.trainer import train, with_lora

    started = time.perf_counter()
    device = torch.device(args.device)
    tensors, _ = to_tensors(examples, processor, device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    prepared = time.perf_counter() - started
    stats = train(with_lora(model, processor.tokenizer, tensors, cfg), tensors, cfg, None, bf16=device.type == "cuda")
    return stats["steps"] * cfg.batch_size, prepared


def plain_way(model, processor, examples, cfg, args):
    """Rows preprocessed once, on the device; bf16 weights on a GPU; model(labels=...).loss; no host sync."""
    import torch
    from PIL import Image

    from finetune.tensors import caption_tokens
    from finetune.trainer import with_lora

    started = time.perf_counter()
    device = torch.device(args.device)
    pictures = [Image.open(e.image_path).convert("RGB") for e in examples]
    pixels = processor.image_processor(images=pictures, return_tensors="pt")["pixel_values"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    input_ids, attention, labels = (t.to(device) for t in caption_tokens(processor.tokenizer, [e.caption for e in examples]))
    pixels = pixels.to(device, dtype)
    prepared = time.perf_counter() - started
    from finetune.tensors import RowTensors

    no, yes = (torch.full((len(examples),), value, dtype=torch.bool, device=device) for value in (False, True))
    stats = [torch.tensor(getattr(processor.image_processor, name), device=device).view(3, 1, 1) for name in ("image_mean", "image_std")]
    rows = RowTensors(pixels, input_ids, attention, labels, old=no, flippable=yes, taught=labels, recolourable=no,
                      pixel_mean=stats[0], pixel_std=stats[1], examples=examples)  # fmt: skip: only with_lora reads it
    model = with_lora(model.to(dtype), processor.tokenizer, rows, cfg)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=cfg.lr)
    generator = torch.Generator().manual_seed(0)
    steps = 0
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(examples), generator=generator).to(device)
        for start in range(0, len(examples), cfg.batch_size):
            index = order[start : start + cfg.batch_size]
            loss = model(pixel_values=pixels[index], input_ids=input_ids[index], attention_mask=attention[index], labels=labels[index]).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
    return steps * cfg.batch_size, prepared


def seed_way(model, processor, examples, cfg, args):
    """The first shipped loop (finetune/trainer.py at 92101d5): decode + preprocess per row per epoch in a
    DataLoader, LoRA on the vision attention too and every caption word's token row, a sync every step."""
    import random

    import torch
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model
    from PIL import ImageOps
    from torch.utils.data import DataLoader

    from captioner import images
    from finetune.tensors import caption_tokens

    class Pictures:
        def __init__(self):
            self.rng = random.Random(0)

        def __len__(self):
            return len(examples)

        def __getitem__(self, index):
            picture = images.decode(images.read_file(examples[index].image_path), max_side=768).image
            if self.rng.random() < 0.5:
                picture = ImageOps.mirror(picture)
            return processor.image_processor(images=picture, return_tensors="pt")["pixel_values"][0], examples[index].caption

    def collate(batch):
        return (torch.stack([p for p, _ in batch]), *caption_tokens(processor.tokenizer, [c for _, c in batch]))

    words = {i for e in examples for i in processor.tokenizer(e.caption, add_special_tokens=False).input_ids}
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.alpha, target_modules=["qkv", "projection", "query", "key", "value", "dense"],
                        trainable_token_indices={"word_embeddings": sorted(words)})  # fmt: skip
    model = get_peft_model(model, config)
    cuda = args.device == "cuda"
    accelerator = Accelerator(mixed_precision="bf16" if cuda else "no", cpu=not cuda)
    workers = 0 if len(examples) < 512 else 2
    loader = DataLoader(Pictures(), batch_size=cfg.batch_size, shuffle=True, collate_fn=collate, num_workers=workers)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=0.0)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    model.train()
    steps, losses = 0, []
    for _ in range(cfg.epochs):
        for pixels, input_ids, attention, labels in loader:
            loss = model(pixel_values=pixels, input_ids=input_ids, attention_mask=attention, labels=labels).loss
            if not torch.isfinite(loss):
                raise RuntimeError("the loss became non-finite")
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            steps += 1
    return steps * cfg.batch_size, 0.0


def child(args, way: str, folder: str, threading: str) -> dict:
    # -m from the checkout's root: the child imports this checkout's code (run as a file, it imported whatever
    # installed copy came first on sys.path, or nothing at all where the project is not installed)
    command = [sys.executable, "-m", "bench.finetune_speed", "--way", way, "--data", folder, "--device", args.device,
               "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--threading", threading]  # fmt: skip
    if args.config:
        command += ["--config", str(args.config)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_"))} if threading == "default" else dict(os.environ)
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode != 0:
        sys.exit(f"{way} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


BUSY_APP = """
import torch, time
x = torch.randn(384, 384)
end = time.time() + float(__import__("sys").argv[1])
while time.time() < end:
    for _ in range(20):
        x = torch.tanh(x @ x)  # the app captioning for other people: matrix work on every core it has
    time.sleep(0.002)
"""


def busy(args, folder: str) -> dict:
    """The project's training beside a busy process, both with default threading, then both with the policy."""
    timings = {}
    for threading in ("default", "policy"):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_"))}
        if threading == "policy":
            from captioner import runtime

            env.update(runtime.policy("app", env))
        load = subprocess.Popen([sys.executable, "-c", BUSY_APP, "900"], env=env)
        try:
            timings[threading] = child(args, "project", folder, threading)
        finally:
            load.terminate()
            load.wait()
    return timings


def main():
    args = parse_args()
    if args.way:
        if args.threading == "policy":
            from captioner import runtime

            runtime.configure("finetune")
        print(json.dumps(run_way(args)))
        return
    from captioner import runtime

    runtime.configure("cli")
    model = args.config or "demo captioner"
    print(f"{model} on {args.device}; {args.rows} rows x {args.epochs} epochs, batch {args.batch_size}; "
          f"peak memory is {'allocated CUDA memory' if args.device == 'cuda' else 'process RSS'}")  # fmt: skip
    print(f"{'way':<46}{'rows/s':>9}{'seconds':>9}{'of which prep':>15}{'peak MiB':>10}")
    names = {"seed": "seed's loop (decode every epoch, sync per step)", "plain": "plain LoRA loop (rows on the device)",
             "project": "this project (finetune.trainer)"}  # fmt: skip
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        write_rows(Path(folder), args.rows)
        # each way's row as soon as it is timed, this project's first: a run cut short by a time limit keeps them
        for way in ("project", "plain", "seed"):
            results[way] = r = child(args, way, folder, "policy")
            print(f"{names[way]:<46}{r['rows_per_s']:>9.1f}{r['seconds']:>9.2f}{r['prepare_s']:>15.2f}{r['peak_bytes'] / 2**20:>10.0f}")
        crowded = busy(args, folder) if args.busy else None
    print(f"this project: {results['project']['rows_per_s'] / results['seed']['rows_per_s']:.2f}x the seed's rows/s, "
          f"{results['project']['rows_per_s'] / results['plain']['rows_per_s']:.2f}x the plain loop's "
          f"(which skips the distillation's second forward pass and the augmentation)")  # fmt: skip
    if crowded:
        default, policy = crowded["default"], crowded["policy"]
        print(f"beside a busy process on {os.cpu_count()} cores: default threading {default['seconds']:.1f}s "
              f"({default['threads']} threads, OpenMP's own wait policy), the runtime policy {policy['seconds']:.1f}s "
              f"({policy['threads']} threads, OMP_WAIT_POLICY=PASSIVE): {default['seconds'] / policy['seconds']:.1f}x faster")  # fmt: skip


if __name__ == "__main__":
    main()
